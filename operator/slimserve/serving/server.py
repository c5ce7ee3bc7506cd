"""One server process: REST (uvicorn) and gRPC (`grpc_server`) on one asyncio loop, one model, graceful exit.

Life cycle:
1. listen on both ports at once, live but not ready (so a liveness probe passes during a long load; gRPC
   health says NOT_SERVING);
2. load the artifact (digests verified by the loader) and warm it up on a worker thread; then ready
   (gRPC health: SERVING).
   A load failure exits with status 1 and the reason in the log; so does a device asked for (`--device
   cuda`) that the process cannot use: it never serves on the CPU instead;
3. on SIGTERM or SIGINT: report not ready (gRPC health: NOT_SERVING); keep serving for `shutdown_delay_s`
   (lets Kubernetes take the pod out of its endpoints first); stop accepting; let in-flight requests
   finish (at most `drain_timeout_s`); exit 0.

Worst-case time from SIGTERM to exit: shutdown_delay_s + drain_timeout_s + ~1 s, so set the pod's
terminationGracePeriodSeconds above that.

Why this stack (uvicorn + the lean ASGI app of `rest.py` + gRPC over HTTP/2 on the same loop, one process) and not
KServe's Python model server: `benchmarks/serving.py` runs both side by side on the same model, threads
and client, and ours serves more with less latency, mostly from batching (docs/performance.md has the
figures). One process keeps one batch queue for both protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import uvicorn

from slimserve.serving.access_log import AccessLog
from slimserve.serving.auth import AuthSetupError, build_auth
from slimserve.serving.batching import Batcher, DirectRunner, ModelCaller
from slimserve.serving.config import ServerConfig
from slimserve.serving.dataplane import DataPlane
from slimserve.serving.generation import add_generation_routes
from slimserve.serving.generation.decoder import decoder_loader, serves_decoder
from slimserve.serving.generation.service import Generation
from slimserve.serving.grpc_server import GrpcServer
from slimserve.serving.http2 import describe as http2_description
from slimserve.serving.grpc_service import SERVICE_NAME, add_inference_service
from slimserve.serving.health import ServerHealth
from slimserve.serving.http_timeouts import TimedHttpToolsProtocol
from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.model import ServedModel, artifact_loader
from slimserve.serving.probes import probes_only
from slimserve.serving.rest import ASGIApp, build_app
from slimserve.serving.tls import CertificateReloader, TlsError
from slimserve.serving.tracing import NO_TRACING
from slimserve.serving.web.app import wrap_http_app

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: this module owns SIGTERM and the exit status."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def build_dataplane(
    config: ServerConfig, model: ServedModel, call: ModelCaller, metrics: ServerMetrics, access_log: AccessLog
) -> DataPlane:
    if config.batching:
        runner = Batcher(call, metrics, config.max_batch_size, config.max_latency_ms / 1000)
    else:
        runner = DirectRunner(call, metrics)
    # The senders are imported only when on: tracing off must not load the OpenTelemetry SDK.
    tracing, payload_log = NO_TRACING, None
    if config.tracing is not None:
        from slimserve.serving.tracing_otel import OtelTracing

        tracing = OtelTracing(config.tracing)
    if config.payload_log is not None:
        from slimserve.serving.payload_log import PayloadLogger

        payload_log = PayloadLogger(config.payload_log, metrics)
    return DataPlane(model, runner, metrics, config.max_batch_size, access_log, tracing, payload_log)


async def serve(config: ServerConfig, model: ServedModel | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    generation = None  # a decoder's: the generation engine and its routes
    if model is None and serves_decoder(config.artifact):
        model = ServedModel(config.artifact, config.model_name, decoder_loader(
            config.device, config.artifact_digest, allow_outside_budget=config.allow_outside_budget
        ))
        generation = Generation(model)
    model = model or ServedModel(
        config.artifact, config.model_name, artifact_loader(
            config.artifact_digest, config.device, config.cuda_graphs, allow_outside_budget=config.allow_outside_budget
        )
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimserve-model")
    metrics = ServerMetrics()
    metrics.describe_model(config.model_version)
    call = ModelCaller(model.predict, executor, metrics)
    access_log = AccessLog(config.access_log)
    dataplane = build_dataplane(config, model, call, metrics, access_log)
    try:
        tls = CertificateReloader(config.tls, metrics.registry) if config.tls.enabled else None
    except TlsError as error:
        log.error("%s", error)
        return 1
    try:
        auth = build_auth(config.auth, metrics)
    except AuthSetupError as error:
        log.error("%s", error)
        return 1
    health = ServerHealth([SERVICE_NAME])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    rest_app = build_app(dataplane, config.max_body_bytes, auth)
    if generation is not None:
        add_generation_routes(rest_app, dataplane, generation)
    http = _http_server(config, wrap_http_app(rest_app, dataplane, config.web, config.max_body_bytes, auth),
                        tls.listening_context if tls else None)
    grpc_server = GrpcServer(config.max_body_bytes, config.header_timeout_s, config.body_timeout_s,
                             tls.grpc_listening_context if tls else None, http2=config.grpc_http2)
    http_socket = _listen(config.host, config.http_port)
    grpc_socket = _listen(config.host, config.grpc_port)
    add_inference_service(grpc_server, dataplane, auth)
    await health.starting()
    health.add_to(grpc_server)
    await grpc_server.start(grpc_socket)
    http_servers = [(http, http_socket)]
    if config.probe_port is not None:
        http_servers.append((_http_server(config, probes_only(rest_app), None), _listen(config.host, config.probe_port)))
    http_tasks = [loop.create_task(server.serve(sockets=[sock]), name="slimserve-http") for server, sock in http_servers]
    tls_watch = loop.create_task(tls.watch(), name="slimserve-tls-reload") if tls else None
    metrics_server = _start_metrics_port(config, dataplane)
    log.info("listening: REST on %s:%d, gRPC on %s:%d (HTTP/2 by %s)", config.host, config.http_port, config.host,
             config.grpc_port, http2_description(grpc_server.http2))

    def prepare() -> None:  # on the model thread
        if generation is not None:
            model.load((), mark_ready=False)
            generation.load(config.generation, metrics.add_generation())
        else:
            model.load(_warmup_sizes(config), mark_ready=False)
            if config.generation.configured and not model.generates_text:
                raise ValueError(f"the generation settings (--max-sequences, --kv-cache-bytes, --context-length, "
                                 f"--max-tokens, --max-waiting, --queue-timeout-s) are for decoders; model "
                                 f"{model.name!r} is not one")
            log.info("model call of one row: %.3f ms", 1000 * call.calibrate(model.example_inputs(1)))
        model.ready = True

    load = loop.run_in_executor(executor, prepare)
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({load, stopped}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if load.done() and load.exception() is not None:
        log.error("could not load %s: %s", config.artifact, load.exception())
        status = 1
    elif load.done():
        dataplane.metrics.model_ready.set(1)
        await health.ready()
        if model.info.device.startswith("cuda"):
            dataplane.metrics.watch_gpu_memory(model.info.device)
        log.info("ready: model %r on %s in %s", model.name, model.info.device, model.info.precision)
        await stopped
    log.info("shutting down: not ready; draining in-flight requests (at most %.1fs)", config.drain_timeout_s)
    dataplane.shutting_down = True
    dataplane.metrics.model_ready.set(0)
    await health.drain()
    if status == 0 and config.shutdown_delay_s > 0:
        await asyncio.sleep(config.shutdown_delay_s)
    for server, _sock in http_servers:
        server.should_exit = True
    if tls_watch is not None:
        tls_watch.cancel()
    await asyncio.gather(grpc_server.stop(config.drain_timeout_s), *http_tasks)
    await dataplane.runner.close()
    if generation is not None:
        generation.stop()
    if metrics_server is not None:
        metrics_server.shutdown()
    executor.shutdown(wait=False, cancel_futures=True)
    access_log.close()
    if dataplane.payload_log is not None:
        dataplane.payload_log.close()
    dataplane.tracing.close()
    log.info("stopped")
    return status


def _http_server(config: ServerConfig, app: ASGIApp, ssl_context) -> _Uvicorn:
    http_config = uvicorn.Config(
        app, host=config.host, port=config.http_port,
        lifespan="off", access_log=False, log_config=None, ws="none",
        http=functools.partial(
            TimedHttpToolsProtocol, header_timeout_s=config.header_timeout_s, body_timeout_s=config.body_timeout_s
        ),
        timeout_graceful_shutdown=config.drain_timeout_s,
    )
    http_config.load()
    http_config.ssl = ssl_context  # our own context (TLS reloads swap what it hands each handshake), or None
    return _Uvicorn(http_config)


def _warmup_sizes(config: ServerConfig) -> tuple[int, ...]:
    sizes = {1, config.max_batch_size} if config.batching else {1}
    return tuple(sorted(size for size in sizes | set(config.warmup_batch_sizes) if size <= config.max_batch_size))


def _listen(host: str, port: int) -> socket.socket:
    """Bind a port's socket here, so a busy port fails loudly before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _start_metrics_port(config: ServerConfig, dataplane: DataPlane):
    if config.metrics_port is None:
        return None
    from prometheus_client import start_http_server

    server, _thread = start_http_server(config.metrics_port, addr=config.host, registry=dataplane.metrics.registry)
    return server


def run(config: ServerConfig) -> int:
    """Blocking entry point (the CLI's): uvloop when available."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(config))
