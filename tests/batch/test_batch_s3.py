"""s3:// input and output against a real S3-compatible server (MinIO): a prefix of datasets scored into parts,
sidecars and a manifest that are objects, and a re-run that verifies the parts from the store and skips them."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from slimserve.api.workload import CACHE
from slimserve.batch.runner import Shard, run_shard
from tests.batch.conftest import MACHINE_CACHE, digits_spec


def test_a_prefix_in_s3_is_scored_into_parts_and_a_manifest_in_s3(s3_env, digits, monkeypatch):
    monkeypatch.setenv(CACHE.name, str(MACHINE_CACHE))  # the trained digits model, not a private cache's
    store = s3_env.client()
    halves = {"datasets/digits/a.jsonl": digits[:6], "datasets/digits/b.jsonl": digits[6:10]}
    for key, rows in halves.items():
        body = "".join(json.dumps({"input": row.tolist()}) + "\n" for row in rows)
        store.put_object(Bucket=s3_env.bucket, Key=key, Body=body.encode())
    spec = digits_spec(f"s3://{s3_env.bucket}/datasets/digits/", f"s3://{s3_env.bucket}/results/digits/",
                       output={"uri": f"s3://{s3_env.bucket}/results/digits/", "format": "parquet"},
                       s3={"endpoint": s3_env.endpoint})
    outcomes = [run_shard(Shard(spec, index, 2, "run-s3"), lambda event: None) for index in range(2)]
    assert [o.state for o in outcomes] == ["Succeeded", "Succeeded"]
    assert outcomes[0].manifest is None and outcomes[1].manifest.uri == f"s3://{s3_env.bucket}/results/digits/_manifest.json"

    listed = store.list_objects_v2(Bucket=s3_env.bucket, Prefix="results/digits/")["Contents"]
    assert sorted(item["Key"].rpartition("/")[2] for item in listed) == [
        "_manifest.json", "part-00000.json", "part-00000.parquet", "part-00001.json", "part-00001.parquet",
    ]
    manifest = json.loads(store.get_object(Bucket=s3_env.bucket, Key="results/digits/_manifest.json")["Body"].read())
    assert [part["records"] for part in manifest["parts"]] == [6, 4]
    part = store.get_object(Bucket=s3_env.bucket, Key="results/digits/part-00001.parquet")["Body"].read()
    assert pq.read_table(pa.BufferReader(part)).column("id").to_pylist() == ["b.jsonl:0", "b.jsonl:1", "b.jsonl:2", "b.jsonl:3"]

    events: list[dict] = []
    again = run_shard(Shard(spec, 0, 2, "run-s3"), events.append)
    assert again.state == "Skipped" and events[0]["event"] == "skipped"
    assert again.manifest.digest == outcomes[1].manifest.digest  # the same manifest, from another writer
