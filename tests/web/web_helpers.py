"""Helpers of the browser-facing tests: the Node test project, REST calls, where artifacts go."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.serving.serving_helpers import ServerProcess, request

WEB_TESTS = Path(__file__).resolve().parent
NODE_PROJECT = WEB_TESTS / "node"
ARTIFACTS = WEB_TESTS / "artifacts"  # screenshots, kept after the run (gitignored)
PROTO = WEB_TESTS.parents[1] / "operator/slimserve/serving/proto/open_inference_v2.proto"
ALLOWED_ORIGIN = "http://app.allowed.test:3000"
NODE_TIMEOUT_S = 120


def run_node(script: str, spec: dict, timeout_s: float = NODE_TIMEOUT_S, env: dict[str, str] | None = None) -> dict:
    """Run a script of the Node test project with its JSON argument (and `env` added to the environment); its
    one-line JSON output, parsed."""
    done = subprocess.run(
        ["node", script, json.dumps(spec)], cwd=NODE_PROJECT, capture_output=True, text=True, timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"node {script} failed ({done.returncode}):\n{done.stderr}\n{done.stdout}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def rest_json(server: ServerProcess, method: str, path: str, document: dict | None = None) -> tuple[int, dict]:
    body = None if document is None else json.dumps(document).encode()
    status, _headers, payload = request(server.http_url, method, path, body, {"content-type": "application/json"})
    return status, json.loads(payload)
