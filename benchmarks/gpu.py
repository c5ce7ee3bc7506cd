"""GPU benchmark: SlimServe's precisions on CUDA against PyTorch's own, and the server against the bare forward.

Run where CUDA is (elsewhere it prints "no CUDA: skipped" and exits 0); `benchmarks/gpu_check.sh` runs it
after the `gpu` tests and keeps the output. Every figure of a table is measured in the same run, side by side:

1. Forward latency (ms, median of CUDA-event timed calls, sequence length 128) of MiniLM-L6 and of a
   BERT-base-sized encoder (random weights: speed does not depend on them) at batch 1, 32 and 256, in fp32,
   fp16, bf16, int8 (int8-weight-only, int8-dynamic) and int4 (int4-weight-only), each through the same
   entry point a CompressionJob uses (`apply_quantization`) and served as `load_servable` serves it
   (`optimize_for_inference` for quantized models); a method this build has no kernel or entry point for
   is a "not available" row with the reason. The references: PyTorch eager fp16 (`model.half()`, the
   ratio column's base) and torchao int4 weight-only + `torch.compile`.
2. The server on the GPU (`slimserve serve --device cuda`, MiniLM-L6, REST, one text per request,
   concurrency 32, dynamic batching) against the bare forward of the same servable at batch 32 in this
   process (rows/s; target >= 0.8), with CUDA graphs off and on.

    .venv/bin/python benchmarks/gpu.py                 # everything (compiling each precision takes most of it)
    .venv/bin/python benchmarks/gpu.py --skip-server   # the forward table only
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

BATCHES = (1, 32, 256)
SEQUENCE = 128
PRECISIONS = ("fp32", "fp16", "bf16", "int8-weight-only", "int8-dynamic", "int4-weight-only")
SERVER_TARGET = 0.8


def encoders() -> dict[str, torch.nn.Module]:
    from slimserve.models.loading import load_builtin
    from slimserve.models.minilm import MiniLMConfig, build_minilm

    torch.manual_seed(0)
    bert_base = MiniLMConfig(hidden_size=768, num_layers=12, head_dim=64, num_heads=[12] * 12,
                             intermediate_sizes=[3072] * 12)
    return {"minilm-l6": load_builtin("builtin://minilm-l6").model, "bert-base (random)": build_minilm(bert_base).eval()}


def token_batch(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    ids = torch.randint(1000, 30000, (batch, SEQUENCE), generator=generator)
    return ids.to(device), torch.ones_like(ids).to(device)


def cuda_ms(forward: Callable, inputs: tuple, *, calls: int = 20) -> float:
    """Median milliseconds of `calls` calls, each timed by CUDA events after three warm-up calls."""
    with torch.inference_mode():
        for _ in range(3):
            forward(*inputs)
        times = []
        for _ in range(calls):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward(*inputs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def slimserve_forward(model: torch.nn.Module, precision: str, device: torch.device) -> Callable:
    """The forward `load_servable` would serve for `model` compressed to `precision` on `device`."""
    from slimserve.models.families import eager_forward

    model = copy.deepcopy(model)
    if precision == "fp32":
        return eager_forward(model.to(device))
    from slimserve.api.steps import QuantizeConfig
    from slimserve.compression.quantize import apply_quantization
    from slimserve.quant import optimize_for_inference

    quantized = apply_quantization(model.to(device), QuantizeConfig(method=precision), calibration=None)
    return optimize_for_inference(quantized, token_batch(32, device))


def torchao_int4(model: torch.nn.Module, device: torch.device) -> Callable:
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    model = copy.deepcopy(model).to(device=device, dtype=torch.bfloat16)
    quantize_(model, Int4WeightOnlyConfig(group_size=128))
    return torch.compile(model)


def forward_table(device: torch.device) -> Iterator[str]:
    """The table's lines, each as soon as it is measured: a run stopped part way keeps the rows it finished."""
    yield "| model | precision | " + " | ".join(f"batch {b} ms (vs eager fp16)" for b in BATCHES) + " |"
    yield "| --- | --- | " + " | ".join("---" for _ in BATCHES) + " |"
    for name, model in encoders().items():
        rows: dict[str, Callable | str] = {}
        rows["PyTorch eager fp16"] = copy.deepcopy(model).to(device).half()
        for precision in PRECISIONS:
            rows[f"SlimServe {precision}"] = _built(lambda p=precision: slimserve_forward(model, p, device))
        rows["torchao int4 + torch.compile"] = _built(lambda: torchao_int4(model, device))
        base = {batch: cuda_ms(rows["PyTorch eager fp16"], token_batch(batch, device)) for batch in BATCHES}
        for label, forward in rows.items():
            if isinstance(forward, str):
                yield f"| {name} | {label} | not available: {forward} |" + " |" * (len(BATCHES) - 1)
                continue
            cells = []
            for batch in BATCHES:
                try:
                    ms = base[batch] if label == "PyTorch eager fp16" else cuda_ms(forward, token_batch(batch, device))
                except Exception as exc:  # noqa: BLE001 - a kernel missing for one shape is that cell's figure
                    cells.append(f"failed: {type(exc).__name__}: {str(exc)[:80]}")
                    continue
                cells.append(f"{ms:.3f} ({base[batch] / ms:.2f}x)")
            yield f"| {name} | {label} | " + " | ".join(cells) + " |"
            torch.cuda.empty_cache()


def _built(build: Callable[[], Callable]) -> Callable | str:
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - reported as the row's reason
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def bare_rows_per_s(device: str, cuda_graphs: bool, seconds: float) -> float:
    from serving import SENTENCE

    from slimserve.models import load_servable

    servable = load_servable("builtin://minilm-l6", device=device, cuda_graphs=cuda_graphs)
    inputs = {"text": np.array([SENTENCE.encode()] * 32, dtype=object)}
    servable.predict(inputs)
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        servable.predict(inputs)
        times.append(time.perf_counter() - start)
    return 32 / statistics.median(times)


def server_rows_per_s(cuda_graphs: bool, seconds: float, log_dir: Path) -> dict:
    from loadgen.measured import median_round
    from serving import HOST, Server, free_port, run_loadgen

    http_port, grpc_port = free_port(), free_port()
    log = log_dir / f"serve-graphs-{cuda_graphs}.log"
    command = [sys.executable, "-m", "slimserve.cli.main", "serve", "--artifact", "builtin://minilm-l6",
               "--model-name", "minilm-l6", "--host", HOST, "--http-port", str(http_port), "--grpc-port",
               str(grpc_port), "--device", "cuda", "--log-level", "WARNING", "--no-access-log",
               "--cuda-graphs" if cuda_graphs else "--no-cuda-graphs"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = Server("slimserve-gpu", process, http_port, grpc_port, "minilm-l6", log)
    try:
        server.wait_ready()
        options = SimpleNamespace(duration_s=seconds, max_requests=200_000)
        return median_round([run_loadgen(server, "rest", 32, options) for _ in range(3)])
    finally:
        server.stop()


def server_table(seconds: float) -> Iterator[str]:
    yield "| CUDA graphs | server rows/s (c=32) | bare forward rows/s (batch 32) | ratio | target |"
    yield "| --- | --- | --- | --- | --- |"
    with tempfile.TemporaryDirectory() as logs:
        for graphs in (False, True):
            served = server_rows_per_s(graphs, seconds, Path(logs))
            bare = bare_rows_per_s("cuda", graphs, seconds)
            rps = served.get("rps")
            ratio = f"{rps / bare:.2f}" if rps else f"failed ({served.get('failure', 'no answers')[:80]})"
            ok = "met" if rps and rps / bare >= SERVER_TARGET else "missed"
            yield f"| {'on' if graphs else 'off'} | {rps or 0:.0f} | {bare:.0f} | {ratio} | >= {SERVER_TARGET} {ok} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-server", action="store_true", help="the forward table only")
    parser.add_argument("--duration-s", type=float, default=5.0, help="seconds per server round and bare figure")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA: skipped (this benchmark measures GPU kernels and the server on a GPU)")
        return 0
    device = torch.device("cuda", 0)
    print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}\n")
    for line in forward_table(device):
        print(line, flush=True)
    if not args.skip_server:
        print()
        for line in server_table(args.duration_s):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
