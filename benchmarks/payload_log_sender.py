"""Payload log sender alone: CPU per event of the pipelined sender against one HTTP POST per event, side by side.

Both send the same events (KServe-format CloudEvents, binary mode, a 300-byte request and a 60-byte response per
request, as the digits MLP's binary REST bodies) to the same local sink (benchmarks/loadgen/sink.py, its own
process, its CPU measured too), in rounds that alternate between them:
- pipelined: `PayloadLogger` as the server runs it (`record` on the caller, the sender thread writing what has
  gathered as pipelined requests, replies parsed by httptools);
- one POST per event: http.client on one kept-alive connection, a request and its reply at a time, the headers
  from the same per-kind template (the sender before pipelining).
Two load shapes: bursts of 500 requests (what the sender does when it falls behind), and requests paced at
`--rate` per second (a server under load; the sender's batches are what gathers between its wake-ups).
Reported per event: CPU of this process (caller + sender thread; a row without a sender gives the driver's own
share, its pacing sleeps), CPU of the sink, and `record`'s own cost.

    .venv/bin/python benchmarks/payload_log_sender.py [--requests 20000] [--rate 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from loadgen import measured
from serving import HOST, free_port

from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.observability import PayloadLogSettings
from slimserve.serving.payload_log import REQUEST_EVENT, PayloadLogger

REQUEST, RESPONSE = b"\x00" * 300, b"\x01" * 60
CONTENT_TYPE = "application/octet-stream"
BURST = 500


def drive(record, requests: int, rate: float | None, drained) -> None:
    """`record` `requests` requests, in bursts (rate None) or paced at `rate` per second, then wait for `drained`."""
    start = time.perf_counter()
    for n in range(requests):
        record(f"req-{n}", "digits-mlp", REQUEST, CONTENT_TYPE, RESPONSE, CONTENT_TYPE)
        if rate is not None:
            lag = start + (n + 1) / rate - time.perf_counter()
            if lag > 0:
                time.sleep(lag)
        elif n % BURST == BURST - 1:
            while not drained(2 * (n + 1)):
                time.sleep(0.002)
    while not drained(2 * requests):
        time.sleep(0.002)


def pipelined(url: str, requests: int, rate: float | None) -> dict:
    metrics = ServerMetrics()
    logger = PayloadLogger(PayloadLogSettings(url, sample_rate=1.0), metrics, max_queued=4 * BURST)

    def outcome(name: str) -> float:
        return metrics.registry.get_sample_value("slimserve_payload_log_events_total", {"outcome": name}) or 0

    try:
        figures = measure(logger.record, requests, rate, lambda n: outcome("sent") + outcome("failed") >= n)
    finally:
        logger.close()
    return {**figures, "sent": outcome("sent"), "failed": outcome("failed"), "dropped": outcome("dropped")}


class OnePostPerEvent:
    """A request and its reply at a time over http.client, on the caller's thread (it only adds the caller's
    own cost to the sender's: the process CPU measured is the same sum)."""

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.path = parts.path
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        self.template = {"ce-specversion": "1.0", "ce-source": "/slimserve", "content-type": CONTENT_TYPE,
                         "ce-inferenceservicename": "digits-mlp", "ce-namespace": "", "ce-component": "predictor",
                         "ce-endpoint": "default"}
        self.sent = 0

    def record(self, request_id, model, request, request_type, response, response_type) -> None:
        for event_type, body in ((REQUEST_EVENT, request), (REQUEST_EVENT.replace("request", "response"), response)):
            headers = dict(self.template, **{"ce-type": event_type, "ce-id": request_id,
                                             "ce-time": "2026-01-01T00:00:00.000000Z"})
            self.connection.request("POST", self.path, body, headers)
            reply = self.connection.getresponse()
            reply.read()
            self.sent += reply.status == 200


def one_post_per_event(url: str, requests: int, rate: float | None) -> dict:
    sender = OnePostPerEvent(url)
    figures = measure(sender.record, requests, rate, lambda n: sender.sent >= n)
    sender.connection.close()
    return {**figures, "sent": sender.sent, "failed": 2 * requests - sender.sent, "dropped": 0}


def no_sender(url: str, requests: int, rate: float | None) -> dict:
    """The driver alone (its pacing sleeps cost CPU too): the floor the senders' figures stand on."""
    figures = measure(lambda *event: None, requests, rate, lambda n: True)
    return {**figures, "sent": 0, "failed": 0, "dropped": 0}


SINK_PID = 0


def measure(record, requests: int, rate: float | None, drained) -> dict:
    sink_before, cpu_before, wall_before = measured.process_cpu_s(SINK_PID), time.process_time(), time.perf_counter()
    drive(record, requests, rate, drained)
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    sink_cpu = measured.process_cpu_s(SINK_PID) - sink_before
    events = 2 * requests
    return {"events": events, "wall_s": wall, "events_per_s": events / wall, "us_per_event": cpu / events * 1e6,
            "sink_us_per_event": sink_cpu / events * 1e6, "sink_cpu_share": sink_cpu / (wall * measured.cpu_count())}


def record_cost_us(url: str, calls: int = 20000) -> float:
    """`record`'s own cost on the caller: a burst of calls into a queue large enough to take them all."""
    logger = PayloadLogger(PayloadLogSettings(url, sample_rate=1.0), ServerMetrics(), max_queued=2 * calls)
    start = time.perf_counter()
    for n in range(calls):
        logger.record(f"req-{n}", "digits-mlp", REQUEST, CONTENT_TYPE, RESPONSE, CONTENT_TYPE)
    elapsed = time.perf_counter() - start
    logger.close(30)
    return elapsed / calls * 1e6


def main() -> int:
    global SINK_PID
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests (two events each) per run")
    parser.add_argument("--rate", type=float, default=3000, help="requests per second of the paced runs")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--json", dest="out", type=Path, default=None)
    args = parser.parse_args()
    port = free_port()
    sink = subprocess.Popen([sys.executable, str(Path(__file__).parent / "loadgen" / "sink.py"), "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    SINK_PID = sink.pid
    url = f"http://{HOST}:{port}/events"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    senders = {"pipelined": pipelined, "one POST per event": one_post_per_event, "none (the driver alone)": no_sender}
    runs: dict[tuple[str, str], list[dict]] = {}
    try:
        for _ in range(args.rounds):
            for shape, rate in (("bursts", None), (f"paced {args.rate:.0f} req/s", args.rate)):
                for name, send in senders.items():
                    runs.setdefault((shape, name), []).append(send(url, args.requests, rate))
        record_us = statistics.median(record_cost_us(url) for _ in range(args.rounds))
    finally:
        sink.terminate()
        received = json.loads(sink.communicate(timeout=10)[0].strip().splitlines()[-1])["requests"]
    print("| load | sender | events/s | CPU us/event (caller + sender) | sink CPU us/event | sink CPU share "
          "| sent | failed | dropped |")
    print("|---|---|---|---|---|---|---|---|---|")
    medians = {}
    for (shape, name), results in runs.items():
        row = medians[shape, name] = sorted(results, key=lambda r: r["us_per_event"])[len(results) // 2]
        print(f"| {shape} | {name} | {row['events_per_s']:.0f} | {row['us_per_event']:.1f} | "
              f"{row['sink_us_per_event']:.1f} | {row['sink_cpu_share']:.0%} | {row['sent']:.0f} | "
              f"{row['failed']:.0f} | {row['dropped']:.0f} |")
    print(f"record() on the caller: {record_us:.2f} us per request (two events); the sink answered {received} requests")
    for shape in dict.fromkeys(shape for shape, _ in runs):
        ratio = medians[shape, "one POST per event"]["us_per_event"] / medians[shape, "pipelined"]["us_per_event"]
        print(f"{shape}: CPU per event, one POST per event / pipelined = {ratio:.1f}x")
    if args.out:
        args.out.write_text(json.dumps({"runs": {f"{s} | {n}": r for (s, n), r in runs.items()},
                                        "record_us": record_us, **measured.machine()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
