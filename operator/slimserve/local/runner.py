"""`slimserve run`: the whole job on one machine — compress, report, score the datasets, serve, self-check.

The manifests are the ones a cluster takes. `pvc://CLAIM/path` maps to `<workdir>/pvc/CLAIM/path`, so the
same file works here and with the operator.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from slimserve.api.model_service import BatchingSpec
from slimserve.api.workload import PVC_ROOT
from slimserve.artifacts.storage import resolve_uri
from slimserve.batch.local import run_batch_locally
from slimserve.compression import compress
from slimserve.compression.progress import CompressionOutcome, RichProgressSink
from slimserve.local.plan import LocalPlan
from slimserve.local.selfcheck import SelfCheck, self_check
from slimserve.local.server_process import ServerProcess, ensure_port_free
from slimserve.local.summary import metrics_table
from slimserve.serving.web.options import WebOptions


@dataclass(frozen=True)
class RunOptions:
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 9000
    workdir: Path = Path(".slimserve")
    once: bool = False


class StepLines:
    """Progress for logs and pipes: one line when a step starts (the bar is for terminals)."""

    def __init__(self, console: Console):
        self._console, self._step = console, None

    def progress(self, event) -> None:
        if event.step != self._step:
            self._step = event.step
            self._console.print(f"[{event.step_index + 1}/{event.steps_total}] {event.message}")

    def result(self, result: CompressionOutcome) -> None:
        self._console.print(f"artifact {result.artifact.uri} ({result.artifact.digest})")

    def error(self, reason: str, message: str) -> None:
        pass  # the caller prints the one-line error


def run_plan(plan: LocalPlan, options: RunOptions, console: Console) -> int:
    with PVC_ROOT.defaulted((options.workdir / "pvc").resolve()):
        return _run_plan(plan, options, console)


def _run_plan(plan: LocalPlan, options: RunOptions, console: Console) -> int:
    if plan.service is not None:  # fail before minutes of compression, not after
        ensure_port_free(options.host, options.http_port, "--http-port")
        ensure_port_free(options.host, options.grpc_port, "--grpc-port")

    for job in plan.jobs:
        name = job.metadata["name"]
        console.rule(f"CompressionJob {name}: {job.spec.model.uri}")
        sink = RichProgressSink(console.file) if console.is_terminal else StepLines(console)
        outcome = compress(job.spec, [sink])
        artifact_dir = resolve_uri(outcome.artifact.uri)
        report = json.loads((artifact_dir / "report.json").read_text(encoding="utf-8"))
        console.print(metrics_table(f"{name}: baseline vs compressed", outcome.metrics, report))
        console.print(f"report: {artifact_dir / 'report.json'}  picture: {artifact_dir / 'report.png'}")

    for name, spec in plan.batches:
        console.rule(f"BatchInference {name}: {spec.input.uri}")
        result = run_batch_locally(spec)
        console.print(f"{result.records} records in {result.shards} shards, {result.seconds:.1f} s "
                      f"({result.records_per_second:.1f} records/s)")
        console.print(f"manifest: {result.manifest_uri} ({result.manifest_digest})", soft_wrap=True)

    if plan.service is None:
        return 0
    return _serve(plan, options, console)


def _serve(plan: LocalPlan, options: RunOptions, console: Console) -> int:
    service = plan.service
    console.rule(f"ModelService {service.metadata['name']}: {plan.serve_uri}")
    server = ServerProcess(
        artifact=plan.serve_uri,
        model_name=plan.model_name,
        host=options.host,
        http_port=options.http_port,
        grpc_port=options.grpc_port,
        batching=service.spec.batching or BatchingSpec(),
        log_path=options.workdir / "server.log",
        web=WebOptions.of(service.spec.protocols),
    )
    server.start()
    try:
        check = self_check(server.http, server.grpc_address, plan.model_name)
        _print_endpoints(console, server, plan.model_name, check)
        if not check.agree:
            answers = "/v1/completions and OIP generate" if check.completion else "REST and gRPC"
            console.print(f"[red]self-check failed[/]: {answers} answers differ")
            return 1
        if options.once:
            return 0
        console.print("serving until Ctrl-C")
        try:
            code = server.wait()
        except KeyboardInterrupt:
            console.print("stopping: draining in-flight requests")
            code = server.stop() or 0
        return code
    finally:
        server.stop()


def _print_endpoints(console: Console, server: ServerProcess, model: str, check: SelfCheck) -> None:
    if check.completion:
        _print_generation(console, server, model, check)
        return
    console.print(f"REST  {server.http}/v2/models/{model}/infer")
    console.print(f"gRPC  {server.grpc_address}  (inference.GRPCInferenceService/ModelInfer)")
    console.print(f"metrics {server.http}/metrics   server log {server.log_path}")
    if server.web.playground:
        console.print(f"playground {server.http}/  (gRPC-Web on the REST port)")
    console.print(f"self-check: sent {check.request}")
    console.print(f"  REST answer: {check.rest_answer}")
    console.print(f"  gRPC answer: {check.grpc_answer}")


def _print_generation(console: Console, server: ServerProcess, model: str, check: SelfCheck) -> None:
    console.print(f"OpenAI  {server.http}/v1/completions  {server.http}/v1/chat/completions  (stream: true for SSE)")
    console.print(f"OIP     {server.http}/v2/models/{model}/generate  and /generate_stream")
    console.print(f"metrics {server.http}/metrics   server log {server.log_path}")
    console.print(f"self-check: {check.request}")
    console.print(check.rest_answer, markup=False, highlight=False)


def stdout_console() -> Console:
    # Logs and pipes get a wide table instead of rich's 80-column default.
    return Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 132)


def quiet_library_warnings() -> None:
    """Compiler and deprecation chatter of torch's stack is noise for someone running the demo."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torch").setLevel(logging.ERROR)
