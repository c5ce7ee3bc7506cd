"""The output prefix: another run's results are refused unless overwrite, a part that no longer matches its
sidecar is scored again, and a malformed record fails its shard without touching what was written."""

from __future__ import annotations

import json

import pytest

from slimserve.batch.errors import DatasetError, OutputConflict, RecordError
from slimserve.batch.runner import Shard, run_shard
from tests.batch.conftest import digits_spec, write_jsonl


def score(spec, run_id: str, index: int = 0, shards: int = 1) -> list[dict]:
    events: list[dict] = []
    outcome = run_shard(Shard(spec, index, shards, run_id), events.append)
    return [*events, {"event": "outcome", "state": outcome.state, "manifest": outcome.manifest}]


@pytest.fixture
def dataset(tmp_path, digits):
    return write_jsonl(tmp_path / "in" / "a.jsonl", [{"input": row.tolist()} for row in digits[:20]])


def test_another_runs_results_are_refused_unless_overwrite(tmp_path, dataset):
    out = tmp_path / "out"
    spec = digits_spec(f"file://{dataset}", f"file://{out}/")
    assert score(spec, "team-a/scores/uid-1/1")[-1]["manifest"] is not None
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(OutputConflict, match=r"holds results of another run .*run team-a/scores/uid-1/1.*spec.output.overwrite: true"):
        score(spec, "team-a/scores/uid-2/1")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # refused: nothing touched

    replacing = digits_spec(f"file://{dataset}", f"file://{out}/", output={"uri": f"file://{out}/", "overwrite": True})
    events = score(replacing, "team-a/scores/uid-2/1")
    assert events[0]["event"] == "started" and events[-1]["state"] == "Succeeded"
    assert json.loads((out / "_manifest.json").read_text())["runId"] == "team-a/scores/uid-2/1"


def test_a_part_that_no_longer_matches_its_sidecar_is_scored_again(tmp_path, dataset):
    out = tmp_path / "out"
    spec = digits_spec(f"file://{dataset}", f"file://{out}/")
    score(spec, "run-1")
    assert score(spec, "run-1")[0]["event"] == "skipped"
    part = out / "part-00000.jsonl"
    part.write_text(part.read_text()[:-50])  # a part cut short
    events = score(spec, "run-1")
    assert events[0]["event"] == "started" and events[-1]["state"] == "Succeeded"
    assert len(part.read_text().splitlines()) == 20


def test_a_malformed_record_fails_its_shard_and_keeps_what_was_written(tmp_path, digits):
    rows = [{"input": row.tolist()} for row in digits[:8]]
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    write_jsonl(tmp_path / "in" / "b.jsonl", [*rows[:2], {"input": [0.0] * 63}, *rows[2:]])
    out = tmp_path / "out"
    spec = digits_spec(f"file://{tmp_path}/in/", f"file://{out}/", batchSize=2)
    score(spec, "run-1", index=0, shards=2)
    written = (out / "part-00000.jsonl").read_bytes()
    with pytest.raises(RecordError, match=r"b.jsonl line 3: column 'input' .*expected shape \[64\] per record, got \[63\]"):
        score(spec, "run-1", index=1, shards=2)
    assert sorted(path.name for path in out.iterdir()) == ["part-00000.json", "part-00000.jsonl"]
    assert (out / "part-00000.jsonl").read_bytes() == written


def test_ids_of_mixed_types_are_refused_for_parquet_naming_the_id_field(tmp_path, digits):
    rows = [{"input": row.tolist(), "key": key} for row, key in zip(digits[:4], ["a", 3, "c", "d"])]
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    spec = digits_spec(f"file://{tmp_path}/in/a.jsonl", f"file://{tmp_path}/out/", batchSize=2,
                       input={"uri": f"file://{tmp_path}/in/a.jsonl", "idField": "key"},
                       output={"uri": f"file://{tmp_path}/out/", "format": "parquet"})
    with pytest.raises(DatasetError, match=r"spec.input.idField: its values cannot make one Parquet column"):
        score(spec, "run-1")
    assert not list((tmp_path / "out").iterdir())  # nothing published, no staging file left
