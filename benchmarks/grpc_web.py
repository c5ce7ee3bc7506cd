"""gRPC-Web overhead: the same ModelInfer over native gRPC, gRPC-Web (binary and text) and REST, side by side.

One `slimserve serve --grpc-web` process (127.0.0.1 only) serves the model; this process is the client,
with keep-alive connections, one per client thread. For each concurrency it runs every protocol for the
same bounded time, interleaved round-robin in short slices so drift on a busy machine hits them all alike,
and prints req/s, p50 and p99 latency, and each protocol's throughput as a ratio of native gRPC's.

    .venv/bin/python benchmarks/grpc_web.py                       # digits-mlp, concurrency 1 and 8
    .venv/bin/python benchmarks/grpc_web.py --model minilm-l6 --duration-s 4
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

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
        self.http_port = http_port
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


def run_slice(clients: Clients, protocol: str, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        mine = []
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            clients.call(protocol)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="digits-mlp")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--duration-s", type=float, default=3.0, help="measured time per protocol and concurrency")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    http_port, grpc_port = free_port(), free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-grpc-web-{http_port}.log"
    server = start_server(args.model, http_port, grpc_port, log)
    protocols = ("grpc", "grpc-web", "grpc-web-text", "rest")
    try:
        clients = Clients(args.model, http_port, grpc_port)
        for protocol in protocols:  # warm up connections and code paths
            run_slice(clients, protocol, max(args.concurrency), 0.3)
        print(f"model {args.model}, one row per request, {args.duration_s:g} s per protocol and concurrency")
        print(f"{'concurrency':>11} {'protocol':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs gRPC':>8}")
        for concurrency in args.concurrency:
            measured = {protocol: [] for protocol in protocols}
            elapsed = {protocol: 0.0 for protocol in protocols}
            slices = max(1, round(args.duration_s / SLICE_S))
            for _ in range(slices):
                for protocol in protocols:
                    start = time.perf_counter()
                    measured[protocol] += run_slice(clients, protocol, concurrency, args.duration_s / slices)
                    elapsed[protocol] += time.perf_counter() - start
            baseline = len(measured["grpc"]) / elapsed["grpc"]
            for protocol in protocols:
                latencies = np.asarray(measured[protocol]) * 1000
                rate = len(latencies) / elapsed[protocol]
                print(f"{concurrency:>11} {protocol:<14} {rate:>8.0f} {statistics.median(latencies):>8.2f} "
                      f"{np.percentile(latencies, 99):>8.2f} {rate / baseline:>8.2f}")
        clients.channel.close()
    finally:
        server.terminate()
        server.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
