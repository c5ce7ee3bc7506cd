"""Serving benchmark: SlimServe against KServe's Python model server, side by side in one run.

For each model (the tiny digits MLP, the digits CNN, MiniLM-L6), each protocol (REST, gRPC) and each
concurrency (1, 8, 32) it measures throughput, p50 and p99 of:
- SlimServe with dynamic batching, and with `--no-batching`;
- KServe's model server (PyPI `kserve`, one worker) wrapping the same `load_servable` model;
- the bare model forward in process at the same batch size (rows/s), for the server/bare ratio, and beside it
  SlimServe's own count of its model calls over each run (/metrics): rows per call, and rows per second of model
  time, which tell a model that ran slower in the server from one that waited between calls;
- when asked (`--servers ...,slimserve-auth-apikeys,slimserve-auth-kubernetes`), SlimServe with API keys, and
  with Kubernetes tokens against the test control plane (tests/cluster; every request but the first answered
  from the server's cache), against plain SlimServe.
- when asked (`--servers ...,slimserve-payload-log,slimserve-tracing`), SlimServe logging every request and
  response to a CloudEvents sink on loopback (benchmarks/loadgen/sink.py; its share of the CPU is in the
  rows), and tracing every request to the tests' OpenTelemetry Collector, against plain SlimServe (the payload
  log's sent, dropped and failed events are printed beside them).
- when asked (`--servers ...,slimserve-tls`), SlimServe over TLS (certificates from tests/serving/tls_certs.py;
  h2load and ghz do not verify them, tritonclient does), against plain SlimServe.
- when asked (`--servers ...,slimserve-h2`), SlimServe whose gRPC port runs HTTP/2 on the pure-Python h2
  (`--grpc-http2 h2`, the fallback where libnghttp2 is missing), against plain SlimServe (libnghttp2 where installed).
Same weights, same torch threads, same clients for every server, each a separate process: the native load
generators (benchmarks/loadgen: h2load over HTTP/1.1 with the binary tensor extension, ghz over gRPC; built or
installed by benchmarks/tools.sh) give the figures, and tritonclient (the same request bytes) an extra
column. Each client's share of the machine's CPU is reported, and a row whose client took
loadgen.measured.CLIENT_BOUND_SHARE of it, or as much CPU as the server, is marked client-bound: there the
client, not the server, set the pace. Every request loop is bounded in time (the Python one in count too).

KServe is installed, the first time, into its own venv (its pins differ from ours):
~/.cache/slimserve/bench-venv-kserve-<version>, which sees this venv's packages (torch, slimserve) only
after its own. Servers listen on 127.0.0.1 only.

    .venv/bin/python benchmarks/serving.py                      # everything (~25 min on 2 cores)
    .venv/bin/python benchmarks/serving.py --models digits-mlp --duration-s 2 --skip-kserve --clients native
    .venv/bin/python benchmarks/serving.py --models digits-mlp --protocols rest,grpc --concurrency 32 \
        --servers slimserve,slimserve-auth-apikeys,slimserve-auth-kubernetes      # the auth rows
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import ssl
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from loadgen import measured, window  # benchmarks/loadgen: the native load generators (imported where they run)

HOST = "127.0.0.1"
MAX_ANSWER_BYTES = 16 * 2**20  # the most read of a server's answer to the benchmark's own GETs (/metrics, ready)
KSERVE_VERSION = "0.21.0"
MODELS = {
    "digits-mlp": "builtin://digits-mlp",
    "digits-cnn": "builtin://digits-cnn",
    "minilm-l6": "builtin://minilm-l6",
}
SENTENCE = "the quick brown fox jumps over the lazy dog while the server batches requests"
AUTH_APIKEYS, AUTH_KUBERNETES = "slimserve-auth-apikeys", "slimserve-auth-kubernetes"
AUTHORIZATION_ENV = "BENCH_AUTHORIZATION"  # the load generator's Authorization header, when set
TLS = "slimserve-tls"
PURE_PYTHON_HTTP2 = "slimserve-h2"
TLS_ENV = "BENCH_TLS_CA"  # set: the Python load generator speaks TLS to a server this CA file signed


# --- requests -------------------------------------------------------------------------------------
def example_input(model: str) -> tuple[str, str, np.ndarray, str]:
    """(input name, datatype, one-row array, output name) of a model."""
    if model == "minilm-l6":
        return "text", "BYTES", np.array([SENTENCE.encode()], dtype=object), "embedding"
    rng = np.random.default_rng(0)
    return "input", "FP32", rng.random((1, 64), dtype=np.float32) * 16, "logits"


# --- load generator (runs in its own process) -----------------------------------------------------
def loadgen(protocol: str, url: str, model: str, concurrency: int, duration_s: float, max_requests: int) -> dict:
    name, datatype, array, output = example_input(model)
    headers = {"authorization": os.environ[AUTHORIZATION_ENV]} if AUTHORIZATION_ENV in os.environ else None
    warmup_s = min(0.5, duration_s / 3)
    started, cpu_started = time.perf_counter(), time.process_time()  # the client's CPU, imports left out
    if protocol == "rest":
        answers, errors, elapsed = _loadgen_http(url, model, name, datatype, array, output, concurrency, warmup_s, duration_s, max_requests, headers)
    else:
        answers, errors, elapsed = _loadgen_grpc(url, model, name, datatype, array, output, concurrency, warmup_s, duration_s, max_requests, headers)
    cpu_s, wall_s = time.process_time() - cpu_started, time.perf_counter() - started
    result = {"requests": len(answers), "errors": errors, "seconds": elapsed,
              **measured.client_columns("python", cpu_s, wall_s)}
    if answers:  # (answered at, latency) pairs, counted over the same window as the native clients' logs
        ends, seconds = zip(*answers)
        result.update(window.steady(window.Answered.of(ends, seconds), concurrency))
    return result


def _loadgen_http(url, model, name, datatype, array, output, concurrency, warmup_s, duration_s, max_requests, headers):
    import gevent
    import tritonclient.http as httpclient

    tls = {"ssl": True, "ssl_options": {"ca_certs": os.environ[TLS_ENV]}} if TLS_ENV in os.environ else {}
    client = httpclient.InferenceServerClient(url, concurrency=concurrency, connection_timeout=120, network_timeout=120,
                                              **tls)
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(output, binary_data=True)]
    answers: list[tuple[float, float]] = []
    errors = [0]

    def worker(until: float, record: bool) -> None:
        while time.perf_counter() < until and len(answers) < max_requests:
            start = time.perf_counter()
            try:
                client.infer(model, [tensor], outputs=outputs, headers=headers).as_numpy(output)
            except Exception:  # noqa: BLE001 - counted and reported
                errors[0] += 1
                continue
            if record:
                answered = time.perf_counter()
                answers.append((answered, answered - start))

    for record, seconds in ((False, warmup_s), (True, duration_s)):
        start = time.perf_counter()
        gevent.joinall([gevent.spawn(worker, start + seconds, record) for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    client.close()
    return answers, errors[0], elapsed


def _loadgen_grpc(url, model, name, datatype, array, output, concurrency, warmup_s, duration_s, max_requests, headers):
    import asyncio

    import tritonclient.grpc.aio as grpcclient

    async def run():
        # grpc always verifies: against the test CA (the server's certificate names 127.0.0.1).
        tls = {"ssl": True, "root_certificates": os.environ[TLS_ENV]} if TLS_ENV in os.environ else {}
        client = grpcclient.InferenceServerClient(url, **tls)
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        outputs = [grpcclient.InferRequestedOutput(output)]
        answers: list[tuple[float, float]] = []
        errors = 0

        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until and len(answers) < max_requests:
                start = time.perf_counter()
                try:
                    (await client.infer(model, [tensor], outputs=outputs, headers=headers)).as_numpy(output)
                except Exception:  # noqa: BLE001 - counted and reported
                    errors += 1
                    continue
                if record:
                    answered = time.perf_counter()
                    answers.append((answered, answered - start))

        for record, seconds in ((False, warmup_s), (True, duration_s)):
            start = time.perf_counter()
            await asyncio.gather(*(worker(start + seconds, record) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        await client.close()
        return answers, errors, elapsed

    return asyncio.run(run())


# --- the KServe reference server (runs in the KServe venv) ----------------------------------------
def kserve_server(uri: str, model_name: str, http_port: int, grpc_port: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from kserve import Model, ModelServer
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    from slimserve.models import load_servable

    class ServableModel(Model):
        """The plainest KServe v2 model: decode inputs, call the same predict, encode outputs."""

        def __init__(self) -> None:
            super().__init__(model_name)
            self.servable = load_servable(uri)
            self.ready = True

        def predict(self, payload: InferRequest, headers=None) -> InferResponse:
            inputs = {}
            for tensor in payload.inputs:
                array = tensor.as_numpy()
                if tensor.datatype == "BYTES":
                    array = np.array([v.encode() if isinstance(v, str) else v for v in array.reshape(-1)], dtype=object)
                inputs[tensor.name] = array
            results = self.servable.predict(inputs)
            outputs = []
            for spec in self.servable.info.outputs:
                output = InferOutput(name=spec.name, shape=list(results[spec.name].shape), datatype=spec.datatype)
                output.set_data_from_numpy(results[spec.name], binary_data=True)  # raw; REST re-encodes if asked JSON
                outputs.append(output)
            # KServe encodes outputs as the request asked (binary or JSON, selected outputs), like SlimServe.
            return InferResponse(
                response_id=payload.id, model_name=self.name, infer_outputs=outputs,
                use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs,
            )

    ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1, enable_docs_url=False).start([ServableModel()])


def kserve_venv(version: str = KSERVE_VERSION) -> Path:
    """The KServe venv, created on first use; it sees this venv's site-packages after its own."""
    venv = Path.home() / ".cache" / "slimserve" / f"bench-venv-kserve-{version}"
    python = venv / "bin" / "python"
    if python.exists() and (venv / ".complete").exists():
        return python
    partial = venv.with_name(venv.name + ".partial")
    print(f"installing kserve=={version} into {venv} (first run only)...", flush=True)
    if not (partial / "bin" / "python").exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(partial)], check=True)
    subprocess.run([str(partial / "bin" / "pip"), "install", "-q", f"kserve=={version}"], check=True, timeout=1800)
    ours = sysconfig.get_paths()["purelib"]
    theirs = subprocess.run(
        [str(partial / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # addsitedir (not a bare path) so our editable install's finder is processed too; appended = lower priority.
    Path(theirs, "zz_slimserve_venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    (partial / ".complete").write_text(version)
    if venv.exists():
        raise SystemExit(f"{venv} exists but is incomplete: remove it and rerun")
    partial.rename(venv)
    # venv scripts hard-code their folder; python itself does not, so only `bin/python` is used.
    return venv / "bin" / "python"


PAYLOAD_LOG, TRACING = "slimserve-payload-log", "slimserve-tracing"
SERVER_ENV: dict[str, dict[str, str]] = {}  # server kind -> extra environment (filled by ObservabilitySinks)
SINK_PIDS: dict[str, int] = {}  # server kind -> the sink it sends to, whose CPU share its rows report


# --- payload log sink and trace collector -----------------------------------------------------------
class ObservabilitySinks:
    """What the payload log and tracing rows send to: loadgen/sink.py (sample rate 1, every request and response)
    and the tests' OpenTelemetry Collector (tests/otelcol, built when missing; `--tracing-sample-rate`), both on loopback."""

    def __init__(self, kinds: list[str], log_dir: Path, tracing_sample_rate: float = 1.0) -> None:
        self.sink = self.collector = None
        if PAYLOAD_LOG in kinds:
            port = free_port()
            self.sink = subprocess.Popen([sys.executable, str(Path(__file__).parent / "loadgen" / "sink.py"),
                                          "--port", str(port)], stdout=subprocess.DEVNULL)
            SINK_PIDS[PAYLOAD_LOG] = self.sink.pid
            SERVER_ENV[PAYLOAD_LOG] = {"SLIMSERVE_PAYLOAD_LOG_URL": f"http://{HOST}:{port}/events",
                                       "SLIMSERVE_PAYLOAD_LOG_SAMPLE_RATE": "1"}
        if TRACING in kinds:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.otelcol.collector import BUILD_SCRIPT, Collector

            subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, timeout=3600)
            binary = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-bin"], check=True, capture_output=True,
                                    text=True).stdout.strip()
            work = log_dir / "otelcol"
            work.mkdir(exist_ok=True)
            self.collector = Collector(Path(binary), work)
            self.collector.wait_ready()
            SERVER_ENV[TRACING] = {"SLIMSERVE_TRACING_ENDPOINT": self.collector.endpoint,
                                   "SLIMSERVE_TRACING_SAMPLE_RATE": str(tracing_sample_rate)}

    @staticmethod
    def print_outcomes(running: dict[str, "Server"]) -> None:
        """The payload log's sent, dropped and failed events: a ratio bought by dropping would show here."""
        server = running.get(PAYLOAD_LOG)
        if server is None:
            return
        lines = server.get("/metrics", timeout_s=10)[1].decode().splitlines()
        counts = [line for line in lines if line.startswith("slimserve_payload_log_events_total")]
        print(f"payload log events of {server.model}: " + ", ".join(counts), flush=True)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.terminate()
            self.sink.wait(10)
        if self.collector is not None:
            self.collector.stop()


# --- servers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    label: str
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    model: str
    log: Path
    authorization: str | None = None  # what the load generator sends in Authorization
    tls_ca: Path | None = None  # serving over TLS with a certificate this CA signed

    @property
    def scheme(self) -> str:
        return "https" if self.tls_ca else "http"

    def url(self, protocol: str) -> str:
        return f"{HOST}:{self.http_port if protocol == 'rest' else self.grpc_port}"

    def get(self, path: str, timeout_s: float) -> tuple[int, bytes]:
        """GET `path` from the HTTP port, as the load generators call it (its Authorization, its TLS CA): the
        status and at most MAX_ANSWER_BYTES of the body."""
        request = urllib.request.Request(f"{self.scheme}://{HOST}:{self.http_port}{path}",
                                         headers={"Authorization": self.authorization} if self.authorization else {})
        context = ssl.create_default_context(cafile=self.tls_ca) if self.tls_ca else None
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:
            return answer.status, answer.read(MAX_ANSWER_BYTES)

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if self.get(f"/v2/models/{self.model}/ready", timeout_s=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.label} not ready after {timeout_s}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class AuthSetup:
    """What the auth servers need: an API key directory, and for the kubernetes mode the test control plane
    with a ServiceAccount for the server (its review rights) and one for the client (get on the ModelService)."""

    SERVICE = "bench"

    def __init__(self, kinds: list[str], log_dir: Path) -> None:
        import hashlib

        self.key = "bench-" + os.urandom(16).hex()
        self.keys_dir = log_dir / "api-keys"
        self.keys_dir.mkdir(exist_ok=True)
        (self.keys_dir / "bench").write_text("sha256:" + hashlib.sha256(self.key.encode()).hexdigest())
        self.control_plane = None
        if AUTH_KUBERNETES in kinds:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.cluster.controlplane import ControlPlane
            from tests.serving.kube_auth_helpers import allow_get, grant_reviews, service_account_token

            self.control_plane = cp = ControlPlane.start()
            self.namespace = cp.create_namespace("bench-auth")
            service_account_token(cp, self.namespace, "server")
            grant_reviews(cp, self.namespace, "server")
            self.kubeconfig = cp.service_account_kubeconfig(self.namespace, "server")
            self.token = service_account_token(cp, self.namespace, "client")
            allow_get(cp, self.namespace, "client", self.SERVICE)

    def server(self, kind: str) -> tuple[list[str], dict[str, str], str | None]:
        """(flags, environment, Authorization header) of a server of this kind."""
        if kind == AUTH_APIKEYS:
            return ["--auth-mode", "apiKeys", "--auth-api-keys-dir", str(self.keys_dir)], {}, f"Bearer {self.key}"
        if kind == AUTH_KUBERNETES:
            flags = ["--auth-mode", "kubernetes", "--auth-namespace", self.namespace, "--auth-resource-name", self.SERVICE]
            return flags, {"KUBECONFIG": str(self.kubeconfig)}, f"Bearer {self.token}"
        return [], {}, None

    def close(self) -> None:
        if self.control_plane is not None:
            self.control_plane.stop()


def tls_environment(log_dir: Path) -> dict[str, str]:
    """The TLS server's variables: a Secret-like directory of a server certificate for 127.0.0.1 and its CA."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.serving.tls_certs import SecretDir, make_pki

    folder = Path(tempfile.mkdtemp(prefix="tls-", dir=log_dir))
    pki = make_pki(folder)
    secret = SecretDir(folder / "secret")
    secret.write(pki.server)
    return {"SLIMSERVE_TLS_DIR": str(secret.path), TLS_ENV: str(pki.ca_file)}


def start_server(kind: str, model: str, threads: int, log_dir: Path, kserve_python: Path | None,
                 auth: AuthSetup | None = None) -> Server:
    http_port, grpc_port = free_port(), free_port()
    log = log_dir / f"{kind}-{model}.log"
    auth_flags, auth_env, authorization = auth.server(kind) if auth else ([], {}, None)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", **auth_env, **SERVER_ENV.get(kind, {})}
    if kind == "kserve":
        command = [str(kserve_python), __file__, "--role", "kserve", "--model", model,
                   "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--threads", str(threads)]
    else:
        command = [sys.executable, "-m", "slimserve.cli.main", "serve", "--artifact", MODELS[model], "--model-name", model,
                   "--host", HOST, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                   "--torch-threads", str(threads), "--log-level", "WARNING"]
        if kind == "slimserve-nobatch":
            command.append("--no-batching")
        if kind == PURE_PYTHON_HTTP2:
            command += ["--grpc-http2", "h2"]
        command += auth_flags
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(kind, process, http_port, grpc_port, model, log, authorization,
                    Path(SERVER_ENV[TLS][TLS_ENV]) if kind == TLS else None)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def run_loadgen(server: Server, protocol: str, concurrency: int, args: argparse.Namespace, client: str = "native") -> dict:
    """One measured run of a client ("native": h2load or ghz; "python": tritonclient) against `server`, with
    the server's CPU seconds over it, whether the client was the limit (loadgen.measured), the pace of a
    SlimServe server's model calls over it (`model_pace`), the share of the machine's CPU the hypervisor took
    meanwhile (`steal_share`), and the share its payload log sink took, where it has one (the sink shares the
    cores too)."""
    sink = SINK_PIDS.get(server.label)
    calls_before = model_calls(server)
    sink_cpu_s, start = (measured.process_cpu_s(sink) if sink else 0.0), time.perf_counter()
    loadgen = run_native_loadgen if client == "native" else run_python_loadgen
    row = measured.against_server(server.process.pid, lambda: loadgen(server, protocol, concurrency, args))
    if calls_before is not None:
        row.update(model_pace(calls_before, model_calls(server)))
    if sink:
        row["sink_cpu_share"] = round((measured.process_cpu_s(sink) - sink_cpu_s)
                                      / ((time.perf_counter() - start) * measured.cpu_count()), 3)
    return row


# The model calls a SlimServe server counts on /metrics (serving/metrics.py): how long they took, how many, their rows.
MODEL_CALL_SAMPLES = ("slimserve_model_forward_seconds_sum", "slimserve_batch_size_count", "slimserve_batch_size_sum")


def model_calls(server: Server) -> dict[str, float] | None:
    """A SlimServe server's model calls so far, from its /metrics (MODEL_CALL_SAMPLES, summed over labels);
    None for KServe, which counts none of them."""
    from prometheus_client.parser import text_string_to_metric_families

    if server.label == "kserve":
        return None
    text = server.get("/metrics", timeout_s=10)[1].decode()
    totals = dict.fromkeys(MODEL_CALL_SAMPLES, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def model_pace(before: dict[str, float], after: dict[str, float]) -> dict:
    """How the server's model ran between two `model_calls`: rows per call, and rows per second of model time
    (`model_rows_per_s`, the server's own counterpart of the bare forward at that batch size)."""
    seconds, calls, rows = (after[name] - before[name] for name in MODEL_CALL_SAMPLES)
    if calls <= 0 or seconds <= 0:
        return {}
    return {"rows_per_call": round(rows / calls, 2), "model_rows_per_s": round(rows / seconds, 1)}


def run_native_loadgen(server: Server, protocol: str, concurrency: int, args: argparse.Namespace) -> dict:
    """h2load (REST, the binary tensor extension) or ghz (gRPC), sending the Python client's request bytes."""
    from loadgen import bodies, ghz, h2load

    name, datatype, array, output = example_input(server.model)
    authorization = {"authorization": server.authorization} if server.authorization else {}
    warmup_s = min(0.5, args.duration_s / 3)
    if protocol == "rest":
        body, headers = bodies.rest_binary(name, datatype, array, output)
        url = f"{server.scheme}://{server.url(protocol)}/v2/models/{server.model}/infer"
        return h2load.run(url, body, {**headers, **authorization}, concurrency, args.duration_s, warmup_s)
    request = bodies.grpc_request(server.model, name, datatype, array, output).SerializeToString()
    return ghz.run(server.url(protocol), request, concurrency, args.duration_s, warmup_s, authorization,
                   tls=server.tls_ca is not None)


def run_python_loadgen(server: Server, protocol: str, concurrency: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--role", "loadgen", "--protocol", protocol, "--url", server.url(protocol),
               "--model", server.model, "--concurrency", str(concurrency), "--duration-s", str(args.duration_s),
               "--max-requests", str(args.max_requests)]
    env = {**os.environ, **({AUTHORIZATION_ENV: server.authorization} if server.authorization else {}),
           **({TLS_ENV: str(server.tls_ca)} if server.tls_ca else {})}
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration_s * 4 + 120, env=env)
    if done.returncode != 0:
        return {"requests": 0, "errors": -1, "failure": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- bare forward ---------------------------------------------------------------------------------
def cell_seconds(duration_s: float, concurrency: int, bare_rows_per_s: float, answers_per_client: int) -> float:
    """Measured seconds of one cell: `duration_s`, or longer where at the bare forward's pace a batch of
    `concurrency` rows would give each client fewer than `answers_per_client` answers: the steady window
    (loadgen.window) leaves a run's first and last rounds out, and over a handful of batches they are most of it."""
    return max(duration_s, answers_per_client * concurrency / bare_rows_per_s)


class BareForward:
    """`predict` alone, in this process, at a given batch size: rows per second, measured when asked.

    A measurement is a throughput, as a server's req/s is: rows over the wall time of back-to-back calls, a
    slow call included. It is measured for a second before every cell (its pace sets the cell's length,
    `cell_seconds`) and for as long as a server's round after each of the cell's rounds (the servers idle
    meanwhile), so it sees the same machine, for as long, as the servers it is compared with; the figure used
    is the median of these.
    """

    def __init__(self, servable, name: str, row: np.ndarray) -> None:
        self.servable, self.name, self.row = servable, name, row
        self.rates: dict[int, list[float]] = {}

    @classmethod
    def of(cls, model: str, threads: int) -> BareForward:
        import torch

        torch.set_num_threads(threads)
        from slimserve.models import load_servable

        name, _datatype, row, _output = example_input(model)
        return cls(load_servable(MODELS[model]), name, row)

    def measure(self, batch: int, seconds: float) -> float:
        inputs = {self.name: np.repeat(self.row, batch, axis=0)}
        self.servable.predict(inputs)  # this batch size's first call (allocations) is not counted
        calls, start = 0, time.perf_counter()
        while ((elapsed := time.perf_counter() - start) < seconds or calls < 5) and calls < 20000:
            self.servable.predict(inputs)
            calls += 1
        rate = batch * calls / elapsed
        self.rates.setdefault(batch, []).append(rate)
        return rate

    def median_rates(self) -> dict[int, float]:
        return {batch: statistics.median(rates) for batch, rates in self.rates.items()}


# --- report ---------------------------------------------------------------------------------------
def report(results: list[dict], bare: dict[str, dict[int, float]]) -> str:
    by_key = {(r["server"], r["model"], r["protocol"], r["concurrency"]): r for r in results}
    lines = [
        "| model | protocol | conc | server | req/s | p50 ms | p99 ms | / bare forward | / kserve | batching on/off "
        "| client | python client req/s | python client |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        key = (r["model"], r["protocol"], r["concurrency"])
        rps = r.get("rps", 0.0)
        bare_rate = bare.get(r["model"], {}).get(r["concurrency"])
        kserve = by_key.get(("kserve", *key), {}).get("rps")
        nobatch = by_key.get(("slimserve-nobatch", *key), {}).get("rps")
        lines.append(
            f"| {r['model']} | {r['protocol']} | {r['concurrency']} | {r['server']} | {rps:.0f} | "
            f"{r.get('p50_ms', float('nan')):.2f} | {r.get('p99_ms', float('nan')):.2f} | "
            f"{_ratio(rps, bare_rate)} | {_ratio(rps, kserve) if r['server'] != 'kserve' else ''} | "
            f"{_ratio(rps, nobatch) if r['server'] == 'slimserve' else ''} | {described(r)} | "
            f"{r.get('python', {}).get('rps', 0):.0f} | {measured.describe(r.get('python', {}))} |"
            + (f" errors {r['errors']}" if r.get("errors") else "")
        )
    return "\n".join(lines)


def client_summary(cell: dict, clients: list[str]) -> str:
    """The clients of a cell: the first's CPU share, each other one's throughput and CPU share."""
    extras = [f"{c} {cell[c].get('rps', 0):.0f} req/s ({measured.describe(cell[c])})" for c in clients[1:] if c in cell]
    return "; ".join([described(cell), *extras])


def described(row: dict) -> str:
    """The client column (loadgen.measured), with the payload log sink's CPU share where there is one."""
    sink = f", sink {row['sink_cpu_share']:.0%} CPU" if "sink_cpu_share" in row else ""
    return measured.describe(row) + sink


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def targets(results: list[dict], bare: dict[str, dict[int, float]]) -> list[str]:
    by_key = {(r["server"], r["model"], r["protocol"], r["concurrency"]): r for r in results}

    def get(server, model, protocol, conc, field="rps"):
        return by_key.get((server, model, protocol, conc), {}).get(field)

    lines = []
    for protocol in ("rest", "grpc"):
        ours, ref = get("slimserve", "digits-mlp", protocol, 32), get("kserve", "digits-mlp", protocol, 32)
        if ours and ref:
            bound = [s for s in ("slimserve", "kserve") if get(s, "digits-mlp", protocol, 32, "client_bound")]
            lines.append(f"tiny MLP, {protocol}, c32: SlimServe / KServe throughput = {ours / ref:.2f}x (target >= 3x)"
                         + (f"; client-bound: {', '.join(bound)}" if bound else ""))
    p50 = get("slimserve", "digits-mlp", "rest", 1, "p50_ms")
    if p50 is not None:
        lines.append(f"tiny MLP, REST, c1: SlimServe p50 = {p50:.2f} ms (target <= 1.0 ms)"
                     + (f"; KServe p50 = {get('kserve', 'digits-mlp', 'rest', 1, 'p50_ms'):.2f} ms" if get('kserve', 'digits-mlp', 'rest', 1, 'p50_ms') else ""))
    for protocol in ("rest", "grpc"):
        rps, rate = get("slimserve", "minilm-l6", protocol, 32), bare.get("minilm-l6", {}).get(32)
        if rps and rate:
            pace, rows = get("slimserve", "minilm-l6", protocol, 32, "model_rows_per_s"), \
                get("slimserve", "minilm-l6", protocol, 32, "rows_per_call")
            lines.append(f"MiniLM, {protocol}, c32: SlimServe / bare forward at batch 32 = {rps / rate:.2f} (target >= 0.95)"
                         + (f"; in the server the model ran {rows:.1f} rows a call at {pace / rate:.2f} of the bare "
                            f"forward's pace, busy {rps / pace:.2f} of the time (the rest: the loop's turnaround)"
                            if pace and rows else ""))
    for model in MODELS:
        rps, plain = get(PURE_PYTHON_HTTP2, model, "grpc", 32), get("slimserve", model, "grpc", 32)
        if rps and plain:
            lines.append(f"gRPC's HTTP/2 on libnghttp2 / on h2, {model}, c32 = {plain / rps:.2f}x")
    for kind, label in ((AUTH_APIKEYS, "auth apiKeys"), (AUTH_KUBERNETES, "auth kubernetes (cached)"), (TLS, "TLS on"),
                        (PAYLOAD_LOG, "payload logging on (sample rate 1)"), (TRACING, "tracing on")):
        for model in MODELS:
            for protocol in ("rest", "grpc"):
                rps, plain = get(kind, model, protocol, 32), get("slimserve", model, protocol, 32)
                if rps and plain:
                    lines.append(f"{label}, {model}, {protocol}, c32: / plain SlimServe = {rps / plain:.2f} (target >= 0.9)")
    return lines


# --- main -----------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("bench", "loadgen", "kserve"), default="bench")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--protocols", default="rest,grpc")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--servers", default="slimserve,slimserve-nobatch,kserve")
    parser.add_argument("--skip-kserve", action="store_true")
    parser.add_argument("--duration-s", type=float, default=1.5, help="measured seconds per cell and round (after warm-up)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per cell; the median one is reported")
    parser.add_argument("--answers-per-client", type=int, default=15,
                        help="a slow model's cells run longer than --duration-s, so that at the bare forward's pace "
                             "each client gets at least this many answers")
    parser.add_argument("--max-requests", type=int, default=20000, help="most measured requests per cell (Python client)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every server and the bare forward")
    parser.add_argument("--tracing-sample-rate", type=float, default=1.0,
                        help="sample rate of the slimserve-tracing server (the payload log one logs all)")
    parser.add_argument("--clients", default="native,python",
                        help="load generators: native (h2load, ghz; the figures) and python (tritonclient, an extra column)")
    parser.add_argument("--json", "--out", dest="out", type=Path, default=None, help="also write the results as JSON here")
    # role arguments
    parser.add_argument("--protocol"), parser.add_argument("--url"), parser.add_argument("--model")
    parser.add_argument("--http-port", type=int), parser.add_argument("--grpc-port", type=int)
    args = parser.parse_args()

    if args.role == "loadgen":
        print(json.dumps(loadgen(args.protocol, args.url, args.model, int(args.concurrency), args.duration_s, args.max_requests)))
        return 0
    if args.role == "kserve":
        kserve_server(MODELS[args.model], args.model, args.http_port, args.grpc_port, args.threads)
        return 0

    # A plain `kill` still stops the servers this run started (through the `finally` blocks below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    models = args.models.split(",")
    protocols = args.protocols.split(",")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    clients = args.clients.split(",")
    servers = [s for s in args.servers.split(",") if not (args.skip_kserve and s == "kserve")]
    kserve_python = kserve_venv() if "kserve" in servers else None
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "slimserve-bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    sinks = (ObservabilitySinks(servers, log_dir, args.tracing_sample_rate)
             if {PAYLOAD_LOG, TRACING} & set(servers) else None)
    if sinks is not None:
        atexit.register(sinks.close)
    auth = AuthSetup(servers, log_dir) if {AUTH_APIKEYS, AUTH_KUBERNETES} & set(servers) else None
    if TLS in servers:
        SERVER_ENV[TLS] = tls_environment(log_dir)
    if auth is not None:
        atexit.register(auth.close)  # the control plane stops however the run ends

    bare = {}
    results = []
    for model in models:
        forward = BareForward.of(model, args.threads)
        # All servers of a model run at once and take turns cell by cell (order rotating each round), so
        # a burst of load from elsewhere on the machine hits them alike; a cell's figure is its median round.
        running = {kind: start_server(kind, model, args.threads, log_dir, kserve_python, auth) for kind in servers}
        try:
            for protocol in protocols:
                for concurrency in concurrencies:
                    pace = forward.measure(concurrency, seconds=min(1.0, args.duration_s))
                    seconds = cell_seconds(args.duration_s, concurrency, pace, args.answers_per_client)
                    cell_args = argparse.Namespace(**{**vars(args), "duration_s": seconds})
                    # The first client's median round is the cell; the others' ride along under their name.
                    rounds: dict[tuple[str, str], list[dict]] = {(k, c): [] for k in servers for c in clients}
                    for round_index in range(args.rounds):
                        order = servers[round_index % len(servers):] + servers[:round_index % len(servers)]
                        for kind in order:
                            for client in clients:
                                rounds[kind, client].append(run_loadgen(running[kind], protocol, concurrency, cell_args, client))
                        forward.measure(concurrency, seconds=seconds)
                    for kind in servers:
                        cell = measured.median_round(rounds[kind, clients[0]])
                        cell.update({extra: measured.median_round(rounds[kind, extra]) for extra in clients[1:]})
                        cell.update(server=kind, model=model, protocol=protocol, concurrency=concurrency,
                                    cell_seconds=round(seconds, 2))
                        results.append(cell)
                        print(f"{kind:18} {model:11} {protocol:5} c{concurrency:<3} {seconds:4.1f} s "
                              f"{cell.get('rps', 0):8.0f} req/s  p50 {cell.get('p50_ms', float('nan')):7.2f} ms  "
                              f"p99 {cell.get('p99_ms', float('nan')):7.2f} ms  errors {cell.get('errors')}  "
                              + client_summary(cell, clients), flush=True)
        finally:
            if sinks is not None:
                sinks.print_outcomes(running)
            for server in running.values():
                server.stop()
        bare[model] = forward.median_rates()
        print(f"bare forward {model}: " + ", ".join(f"batch {b}: {r:.0f} rows/s" for b, r in bare[model].items()), flush=True)

    print()
    print(report(results, bare))
    print()
    for line in targets(results, bare):
        print(line)
    if args.out:
        args.out.write_text(json.dumps({"results": results, "bare": bare, "clients": clients, **measured.machine()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
