"""`slimserve operator --log-format=json`: Kopf's JSON lines, one per record, the resource named in each of its own."""

from __future__ import annotations

import json

import pytest

from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, apply, wait_for

pytestmark = pytest.mark.cluster

JOB = {"apiVersion": "slimserve.io/v1alpha1", "kind": "CompressionJob", "metadata": {"name": "logged"},
       "spec": {"model": {"uri": "builtin://digits-cnn"}, "steps": [{"quantize": {"method": "int8-dynamic"}}],
                "output": {"uri": "pvc://models/logged"}}}


def _records(text: str) -> list[dict]:
    """Every line of the log as a JSON object; a line that is not one fails the test, naming it."""
    records = []
    for line in text.splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}")
    return records


def test_operator_logs_json_lines(control_plane, operator_factory):
    namespace = control_plane.create_namespace(f"{SOLO_NAMESPACE_PREFIX}json-logs")  # only this operator acts here
    try:
        operator = operator_factory(extra_args=("--namespace", namespace, "--log-format=json"))
        apply(control_plane, namespace, JOB)
        about_the_job = wait_for(
            "a log record about the CompressionJob",
            lambda: [r for r in _records(operator.logs()) if (r.get("object") or {}).get("name") == "logged"],
        )
    finally:
        control_plane.delete_namespace(namespace)
    assert about_the_job[0]["object"]["namespace"] == namespace
    records = _records(operator.logs())
    assert len(records) > len(about_the_job)  # the start-up records too
    for record in records:
        assert isinstance(record["message"], str) and record["severity"] in ("debug", "info", "warn", "error", "fatal")
        assert record["timestamp"]
