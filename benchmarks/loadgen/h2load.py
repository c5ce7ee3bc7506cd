"""h2load (nghttp2) as the HTTP load generator: POSTs of one request body over HTTP/1.1.

Both servers compared (uvicorn under SlimServe and KServe) speak HTTP/1.1 only on their REST port, so h2load
runs with --h1; its h2c mode would measure nothing they serve.

Throughput, p50 and p99 come from h2load's per-request log (`--log-file`: start time, status, microseconds),
which holds the measured requests only, not the warm-up; errors are the requests its summary counts as done that did not
end in a 2xx. h2load sees only the HTTP status, so a protocol that reports errors in a
200 (gRPC-Web's grpc-status) needs one checked request before the run.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import measured

# "done" leaves out the requests still in flight when the time was up: they are not errors.
COUNTS = re.compile(r"requests: \d+ total, \d+ started, (?P<done>\d+) done, \d+ succeeded")


def binary() -> str:
    found = shutil.which("h2load")
    if not found:
        raise SystemExit("h2load not found: run benchmarks/tools.sh (installs Debian's nghttp2-client)")
    return found


def command(url: str, body: Path, headers: dict[str, str], concurrency: int, duration_s: float, warmup_s: float,
            log: Path) -> list[str]:
    """h2load's command line: `concurrency` connections, one request in flight on each, for `duration_s`
    after `warmup_s`; every request POSTs the file `body` with `headers`."""
    args = [binary(), "--clients", str(concurrency), "--threads", "1", "--max-concurrent-streams", "1",
            f"--duration={_duration(duration_s)}", f"--warm-up-time={_duration(warmup_s)}",
            f"--data={body}", f"--log-file={log}", "--h1"]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    return [*args, url]


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"  # h2load takes integers with a unit, not "1.5"


def parse(stdout: str, log: Path, duration_s: float) -> dict:
    """The result dict of a run of `duration_s` measured seconds, from h2load's summary and per-request log."""
    counts = COUNTS.search(stdout)
    if not counts:
        raise ValueError(f"h2load printed no summary:\n{stdout[-2000:]}")
    rows = np.loadtxt(log, dtype=np.int64, ndmin=2) if log.stat().st_size else np.zeros((0, 3), dtype=np.int64)
    ok = rows[(rows[:, 1] >= 200) & (rows[:, 1] < 300)]
    result = {"requests": len(ok), "errors": int(counts["done"]) - len(ok), "seconds": duration_s}
    if len(ok):
        latency_ms = ok[:, 2] / 1000.0
        result.update(rps=len(ok) / duration_s, p50_ms=float(np.percentile(latency_ms, 50)),
                      p99_ms=float(np.percentile(latency_ms, 99)))
    return result


def run(url: str, body: bytes, headers: dict[str, str], concurrency: int, duration_s: float, warmup_s: float) -> dict:
    """One h2load run against `url`: the result dict with the client's CPU columns."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as scratch:
        body_path, log = Path(scratch) / "body", Path(scratch) / "requests.log"
        body_path.write_bytes(body)
        finished = measured.run(command(url, body_path, headers, concurrency, duration_s, warmup_s, log),
                                timeout_s=duration_s + warmup_s + 60)
        if finished.returncode != 0:
            return {"requests": 0, "errors": -1, "failure": (finished.stderr or finished.stdout)[-500:]}
        return {**parse(finished.stdout, log, duration_s), **measured.client_fields("h2load", finished)}
