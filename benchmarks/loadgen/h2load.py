"""h2load (nghttp2) as the HTTP load generator: POSTs of one request body over HTTP/1.1.

Both servers compared (uvicorn under SlimServe and KServe) speak HTTP/1.1 only on their REST port, so h2load
runs with --h1; its h2c mode would measure nothing they serve.

Throughput, p50 and p99 come from h2load's per-request log (`--log-file`: start time in microseconds since the
epoch, status, microseconds to the end of the answer), counted over the steady window of loadgen.window as every
client's are; errors are the logged answers of status 300 and above and the requests its summary counts as
errored or timed out. h2load sees only the HTTP status, so a
protocol that reports errors in a 200 (gRPC-Web's grpc-status) needs one checked request before the run.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import measured, window

FINISHED = re.compile(r"finished in (?P<value>[\d.]+)(?P<unit>us|ms|s),")
UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
COUNTS = re.compile(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, \d+ failed, "
                    r"(?P<errored>\d+) errored, (?P<timeout>\d+) timeout")


def binary() -> str:
    found = shutil.which("h2load")
    if not found:
        raise SystemExit("h2load not found: run benchmarks/tools.sh (installs Debian's nghttp2-client)")
    return found


def command(url: str, body: Path, headers: dict[str, str], concurrency: int, log: Path, *,
            duration_s: float | None = None, requests: int | None = None) -> list[str]:
    """h2load's command line: `concurrency` connections, one request in flight on each, for `duration_s` or
    until `requests` are answered; every request POSTs the file `body` with `headers`. h2load appends a line
    per request to `log`, after whatever the file held."""
    args = [binary(), "--clients", str(concurrency), "--threads", "1", "--max-concurrent-streams", "1",
            f"--data={body}", f"--log-file={log}", "--h1"]
    args += [f"--duration={max(1, round(duration_s * 1000))}ms"] if duration_s else [f"--requests={requests}"]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    return [*args, url]


def parse(stdout: str, log: Path, concurrency: int) -> dict:
    """The result dict of a run from h2load's summary (its counts and time) and per-request log."""
    counts, finished = COUNTS.search(stdout), FINISHED.search(stdout)
    if not counts or not finished:
        raise ValueError(f"h2load printed no summary:\n{stdout[-2000:]}")
    rows = np.loadtxt(log, dtype=np.int64, ndmin=2) if log.stat().st_size else np.zeros((0, 3), dtype=np.int64)
    ok = rows[(rows[:, 1] >= 200) & (rows[:, 1] < 300)]
    # Status 0: a request still in flight when a timed run stopped, cut off, neither answered nor refused.
    errors = int((rows[:, 1] >= 300).sum()) + int(counts["errored"]) + int(counts["timeout"])
    seconds = float(finished["value"]) * UNIT_S[finished["unit"]]
    result = {"requests": len(ok), "errors": errors, "seconds": seconds}
    if len(ok):
        ends_us = ok[:, 0] + ok[:, 2]
        answered = window.Answered.of((ends_us - ends_us.min()) / 1e6, ok[:, 2] / 1e6)
        result.update(window.steady(answered, concurrency))
    return result


def run(url: str, body: bytes, headers: dict[str, str], concurrency: int, duration_s: float, warmup_s: float) -> dict:
    """A timed warm-up that also measures the rate, then the measured run of as many requests as that rate
    answers in `duration_s` (at least 4 per connection): the result dict with the client's CPU columns.

    A count, not a time, bounds the measured run so that no request is cut off at its end: with calls as slow
    as MiniLM's under load (hundreds of ms) a timed run would lose a batch's worth of them."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as scratch:
        body_path = Path(scratch) / "body"
        body_path.write_bytes(body)
        # One log per run: h2load appends to an existing log, and the probe's requests are not the run's.
        probe_log, log = Path(scratch) / "probe.log", Path(scratch) / "requests.log"
        warmup_s = max(warmup_s, 0.2)
        probe = measured.run(command(url, body_path, headers, concurrency, probe_log, duration_s=warmup_s),
                             warmup_s + 60)
        rate = parse(probe.stdout, probe_log, concurrency).get("rps", 0.0) if probe.returncode == 0 else 0.0
        requests = max(4 * concurrency, round(rate * duration_s))
        finished = measured.run(command(url, body_path, headers, concurrency, log, requests=requests),
                                timeout_s=10 * duration_s + 60)
        result = parse(finished.stdout, log, concurrency) if finished.returncode == 0 else {}
        if not result.get("requests") and not result.get("errors"):  # no server answered at all
            return {"requests": 0, "errors": -1, "failure": (finished.stderr + finished.stdout)[-500:]}
        return {**result, "requested": requests, **measured.client_fields("h2load", finished)}
