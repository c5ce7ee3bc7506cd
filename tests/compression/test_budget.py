"""The accuracy budget: gentler candidates are searched, the most compressed one within budget is kept, and a
job whose every candidate breaks the budget fails with the candidates named and no artifact written."""

from __future__ import annotations

import json

import pytest

from slimserve.compression import compress
from slimserve.compression.errors import BudgetExceeded


def test_search_keeps_the_most_compressed_candidate_within_budget(tmp_path, sink, make_spec):
    spec = make_spec(
        tmp_path / "out", steps=[{"prune": {"method": "unstructured", "amount": 0.95}}], evaluation={"maxDrop": 0.005}
    )
    outcome = compress(spec, [sink])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    tried = [(c["label"], c["accepted"]) for c in report["candidates"] if c["step"] == "prune/unstructured"]
    assert tried[0] == ("amount 0.95", False)
    assert tried[-1][1] is True and all(not accepted for _, accepted in tried[:-1])
    note = outcome.metrics.steps[0].note
    assert note.startswith(tried[-1][0]) and "budget search; asked: amount 0.95" in note
    assert outcome.metrics.accuracy_delta >= -0.005
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_candidate_within_budget_fails_with_the_candidates_and_writes_nothing(tmp_path, sink, make_spec):
    spec = make_spec(tmp_path / "out", steps=[{"prune": {"amount": 0.95}}], evaluation={"maxDrop": 0.0})
    with pytest.raises(BudgetExceeded) as info:
        compress(spec, [sink])
    message = str(info.value)
    assert message.startswith("spec.steps[0].prune: no candidate keeps accuracy within evaluation.maxDrop 0")
    for amount in ("0.95", "0.7125", "0.475", "0.2375"):
        assert f"amount {amount} ->" in message
    assert sink.errors == [("AccuracyBudgetExceeded", message)] and not sink.results
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # no partial artifact either
