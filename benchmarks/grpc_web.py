"""gRPC-Web overhead: the same ModelInfer over native gRPC, gRPC-Web (binary and text) and REST, side by side.

One `slimserve serve --grpc-web` process (127.0.0.1 only) serves the model. For each concurrency every
protocol runs for the same bounded time, interleaved round-robin so drift on a busy machine hits them all
alike, from two kinds of client:
- the native load generators (benchmarks/loadgen, built or installed by benchmarks/tools.sh): ghz for gRPC,
  h2load POSTing the framed gRPC-Web bodies and the REST JSON over HTTP/1.1; their figures come first;
- this process's Python clients (grpcio, http.client with keep-alive, one connection per thread), an extra
  column; they also check each protocol's answer (grpc-status included) before anything is measured.
It prints req/s, p50 and p99, each protocol's throughput as a ratio of native gRPC's, and each client's share
of the machine's CPU, marking a row client-bound as benchmarks/serving.py does (loadgen.measured).

    .venv/bin/python benchmarks/grpc_web.py                       # digits-mlp, concurrency 1 and 8
    .venv/bin/python benchmarks/grpc_web.py --model minilm-l6 --duration-s 4 --json /tmp/grpc-web.json
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from loadgen import ghz, h2load, measured, window

from slimserve.serving.proto import open_inference_v2_pb2 as pb

HOST = "127.0.0.1"
MODELS = {"digits-mlp": ("input", "FP32"), "digits-cnn": ("input", "FP32"), "minilm-l6": ("text", "BYTES")}
SENTENCE = "the quick brown fox jumps over the lazy dog while the server batches requests"
PATH = "/inference.GRPCInferenceService/ModelInfer"
SLICE_S = 0.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(model: str, http_port: int, grpc_port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "slimserve.cli.main", "serve", "--artifact", f"builtin://{model}",
               "--host", HOST, "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--grpc-web",
               "--torch-threads", "1"]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()}")
        try:
            connection = http.client.HTTPConnection(HOST, http_port, timeout=2)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("server not ready after 120 s")


def infer_request(model: str) -> tuple[pb.ModelInferRequest, dict]:
    """The one-row request as protobuf, and the same as a REST JSON document."""
    name, datatype = MODELS[model]
    message = pb.ModelInferRequest(model_name=model)
    tensor = message.inputs.add(name=name, datatype=datatype)
    if datatype == "BYTES":
        tensor.shape.append(1)
        tensor.contents.bytes_contents.append(SENTENCE.encode())
        data: list = [SENTENCE]
    else:
        from slimserve.models.digits import digits_data

        pixels = digits_data().x_test[0].tolist()
        tensor.shape.extend([1, 64])
        tensor.contents.fp32_contents.extend(pixels)
        data = pixels
    document = {"inputs": [{"name": name, "datatype": datatype, "shape": list(tensor.shape), "data": data}]}
    return message, document


class Clients:
    """One call function per protocol; each thread gets its own connections."""

    def __init__(self, model: str, http_port: int, grpc_port: int) -> None:
        message, document = infer_request(model)
        framed = struct.pack(">BI", 0, message.ByteSize()) + message.SerializeToString()
        self.bodies = {
            "grpc-web": (framed, "application/grpc-web+proto"),
            "grpc-web-text": (base64.b64encode(framed), "application/grpc-web-text"),
            "rest": (json.dumps(document).encode(), "application/json"),
        }
        self.rest_path = f"/v2/models/{model}/infer"
        self.http_port, self.grpc_port = http_port, grpc_port
        self.channel = grpc.insecure_channel(f"{HOST}:{grpc_port}")
        self.grpc_call = self.channel.unary_unary(PATH, request_serializer=pb.ModelInferRequest.SerializeToString,
                                                  response_deserializer=pb.ModelInferResponse.FromString)
        self.message = message
        self.local = threading.local()

    def call(self, protocol: str) -> None:
        if protocol == "grpc":
            self.grpc_call(self.message, timeout=30)
            return
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection(HOST, self.http_port, timeout=30)
        body, content_type = self.bodies[protocol]
        connection.request("POST", self.rest_path if protocol == "rest" else PATH, body, {"content-type": content_type})
        response = connection.getresponse()
        payload = response.read()
        ok = response.status == 200 and (protocol == "rest" or response.getheader("grpc-status") is None)
        if not ok or not payload:
            raise RuntimeError(f"{protocol}: HTTP {response.status} {response.getheader('grpc-message')}")


def run_slice(clients: Clients, protocol: str, concurrency: int, seconds: float) -> list[tuple[float, float]]:
    """`concurrency` threads calling for `seconds`: each answer's (time answered, latency)."""
    answers: list[tuple[float, float]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        mine = []
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            clients.call(protocol)
            answered = time.perf_counter()
            mine.append((answered, answered - start))
        with lock:
            answers.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def run_native(clients: Clients, protocol: str, concurrency: int, seconds: float) -> dict:
    """One run of the native generator of `protocol`: ghz for gRPC, h2load for the HTTP/1.1 ones."""
    if protocol == "grpc":
        return ghz.run(f"{HOST}:{clients.grpc_port}", clients.message.SerializeToString(), concurrency, seconds,
                       warmup_s=0.3)
    body, content_type = clients.bodies[protocol]
    path = clients.rest_path if protocol == "rest" else PATH
    return h2load.run(f"http://{HOST}:{clients.http_port}{path}", body, {"content-type": content_type},
                      concurrency, seconds, warmup_s=0.3)


def run_python(clients: Clients, protocol: str, concurrency: int, seconds: float) -> dict:
    """The Python clients of `protocol` in this process, sliced and interleaved like the native runs, counted
    over the same window (loadgen.window)."""
    cpu_started, started = time.process_time(), time.perf_counter()
    answers = run_slice(clients, protocol, concurrency, seconds)
    cpu_s, wall_s = time.process_time() - cpu_started, time.perf_counter() - started
    ends, latencies = zip(*answers)
    return {"requests": len(answers), "errors": 0, "seconds": wall_s,
            **window.steady(window.Answered.of(ends, latencies), concurrency),
            **measured.client_columns("python", cpu_s, wall_s)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="digits-mlp")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--duration-s", type=float, default=3.0, help="measured time per protocol and concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median one is reported")
    parser.add_argument("--clients", default="native,python", help="native (ghz, h2load) and/or python")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runners = {"native": run_native, "python": run_python}
    kinds = args.clients.split(",")

    http_port, grpc_port = free_port(), free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-grpc-web-{http_port}.log"
    server = start_server(args.model, http_port, grpc_port, log)
    protocols = ("grpc", "grpc-web", "grpc-web-text", "rest")
    results = []
    try:
        clients = Clients(args.model, http_port, grpc_port)
        for protocol in protocols:  # warm up connections and code paths, and check every answer
            run_slice(clients, protocol, max(args.concurrency), 0.3)
        seconds = max(1.0, args.duration_s / args.rounds)
        print(f"model {args.model}, one row per request, {args.rounds} x {seconds:g} s per protocol and concurrency")
        print(f"{'concurrency':>11} {'protocol':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs gRPC':>8}  client")
        for concurrency in args.concurrency:
            rounds = {(kind, protocol): [] for kind in kinds for protocol in protocols}
            for _ in range(args.rounds):
                for protocol in protocols:
                    for kind in kinds:
                        rounds[kind, protocol].append(measured.against_server(
                            server.pid, lambda: runners[kind](clients, protocol, concurrency, seconds)))
            for kind in kinds:
                baseline = measured.median_round(rounds[kind, "grpc"]).get("rps")
                for protocol in protocols:
                    cell = measured.median_round(rounds[kind, protocol])
                    cell.update(model=args.model, protocol=protocol, concurrency=concurrency,
                                vs_grpc=cell.get("rps", 0) / baseline if baseline else None)
                    results.append(cell)
                    print(f"{concurrency:>11} {protocol:<14} {cell.get('rps', 0):>8.0f} "
                          f"{cell.get('p50_ms', float('nan')):>8.2f} {cell.get('p99_ms', float('nan')):>8.2f} "
                          f"{cell['vs_grpc'] or float('nan'):>8.2f}  {measured.describe(cell)}"
                          + (f"  FAILED: {cell['failure']}" if "failure" in cell else ""), flush=True)
        clients.channel.close()
    finally:
        server.terminate()
        server.wait(60)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "clients": kinds, **measured.machine()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
