"""perf_analyzer as the load generator of OpenAI streaming: NVIDIA's C++ client (the engine under genai-perf),
`--service-kind openai`, each request's body one payload of its input data, sent once.

It keeps `concurrency` requests in flight over libcurl and writes a profile: for every request the time it was
sent and the time and bytes of every piece of its answer as it arrived. A streamed answer is server-sent events;
a piece holds one or more of them (what one read returned). From the profile, per request: the time to its first
text, and its completion tokens from the usage event (`stream_options.include_usage`), as the Python client
counts them. Installed by benchmarks/tools.sh (x86-64 only).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from . import measured

TOOLS_SCRIPT = Path(__file__).resolve().parents[1] / "tools.sh"


def binary() -> str | None:
    """perf_analyzer's path, None when tools.sh has not installed it (or cannot, on this architecture)."""
    path = subprocess.run([str(TOOLS_SCRIPT), "--print-perf-analyzer"], check=True, capture_output=True,
                          text=True).stdout.strip()
    return path if os.access(path, os.X_OK) else None


def command(executable: str, target: str, endpoint: str, model: str, data: Path, concurrency: int, count: int,
            profile: Path) -> list[str]:
    """`count` requests from `data` (each payload once, in order), `concurrency` at a time, to
    http://`target`/`endpoint`; the profile written to `profile`."""
    return [executable, "-m", model, "--service-kind", "openai", "--endpoint", endpoint.lstrip("/"), "-i", "http",
            "-u", target, "--async", "--input-data", str(data), "--concurrency-range", str(concurrency),
            "--request-count", str(count), "--profile-export-file", str(profile)]


def input_data(bodies: list[dict]) -> dict:
    """perf_analyzer's input data for the OpenAI service kind: one step per request body."""
    return {"data": [{"payload": [body]} for body in bodies]}


def parse(profile: dict) -> tuple[list[tuple[int, float]], float]:
    """(per request: completion tokens and seconds to its first text; the seconds from the first request sent
    to the last answer's end) of a profile's one experiment. ValueError for an answer that is not an SSE stream
    with a usage event (an error status, say)."""
    (experiment,) = profile["experiments"]
    results, first_sent, last_received = [], None, None
    for request in experiment["requests"]:
        sent = request["timestamp"]
        first_text, tokens = None, None
        for at, piece in zip(request["response_timestamps"], request["response_outputs"]):
            for event in piece["response"].split("\n\n"):
                if not event.startswith("data: {"):
                    continue
                document = json.loads(event[len("data: "):])
                if first_text is None and document.get("choices") and document["choices"][0].get("text"):
                    first_text = at
                if document.get("usage"):
                    tokens = document["usage"]["completion_tokens"]
        if tokens is None:
            answer = "".join(piece["response"] for piece in request["response_outputs"])
            raise ValueError(f"an answer without a usage event: {answer[:300]!r}")
        end = request["response_timestamps"][-1]
        results.append((tokens, ((first_text or end) - sent) / 1e9))
        first_sent = sent if first_sent is None else min(first_sent, sent)
        last_received = end if last_received is None else max(last_received, end)
    return results, (last_received - first_sent) / 1e9


def run(target: str, endpoint: str, model: str, bodies: list[dict], concurrency: int,
        timeout_s: float = 600) -> tuple[list[tuple[int, float]], float, measured.Finished]:
    """Send every body once, `concurrency` at a time: (per request: tokens and time to first text; the seconds
    of the run; the finished process, with its CPU time). RuntimeError when perf_analyzer fails (it stops at an
    answer with an error status, naming it)."""
    executable = binary()
    if executable is None:
        raise RuntimeError("perf_analyzer is not installed: run benchmarks/tools.sh")
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as scratch:
        data, profile = Path(scratch) / "input.json", Path(scratch) / "profile.json"
        data.write_text(json.dumps(input_data(bodies)))
        finished = measured.run(command(executable, target, endpoint, model, data, concurrency, len(bodies), profile),
                                timeout_s)
        if finished.returncode != 0 or not profile.is_file():
            raise RuntimeError(f"perf_analyzer failed ({finished.returncode}): {(finished.stderr or finished.stdout)[-800:]}")
        results, seconds = parse(json.loads(profile.read_text()))
    return results, seconds, finished
