"""SLIMSERVE_LOG_FORMAT=json (what the operator sets on server pods): every line `slimserve serve` writes is one
JSON object with time, level, logger and message."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime

import pytest
from serving_helpers import ServerProcess, post_json

from slimserve.cli import serve

ROW = [0.0] * 64


def test_server_logs_json_lines(tmp_path):
    server = ServerProcess("builtin://digits-mlp", tmp_path, env={"SLIMSERVE_LOG_FORMAT": "json"}).start()
    try:
        status, _ = post_json(server.http_url, "/v2/models/digits-mlp/infer", {
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]})
    finally:
        assert server.stop() == 0
    assert status == 200
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert lines
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert datetime.fromisoformat(record["time"]).tzinfo is not None
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    assert any(r["logger"].startswith("slimserve.serving") for r in records)  # the server's own records, and
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's, through the same handler
    assert not any("color_message" in r for r in records)


@pytest.mark.parametrize("value", ["xml", "JSON lines"])
def test_a_bad_log_format_names_its_variable(value):
    parser = argparse.ArgumentParser(prog="slimserve")
    with pytest.raises(SystemExit, match="SLIMSERVE_LOG_FORMAT"):
        serve.register(parser.add_subparsers(dest="command"), environ={"SLIMSERVE_LOG_FORMAT": value})


def test_compress_refuses_a_bad_log_format_naming_its_variable(tmp_path):
    out = subprocess.run([sys.executable, "-m", "slimserve.cli.main", "compress", "--spec", str(tmp_path / "none")],
                         env={**os.environ, "SLIMSERVE_LOG_FORMAT": "xml"}, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "SLIMSERVE_LOG_FORMAT" in out.stderr and "xml" in out.stderr, out.stderr
