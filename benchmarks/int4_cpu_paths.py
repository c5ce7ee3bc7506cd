"""int4 on the CPU above the int4 kernel's row threshold: the candidate paths side by side in one run.

torch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`) is a matrix-vector kernel; an encoder's call has
tokens x batch rows (64 for one 64-token sentence). An int4 Linear on the CPU therefore keeps a copy of its
weight for calls of more than `CPU_INT4_MAX_ROWS` rows (`int4_kernels.CPU_MANY_ROWS`). Compared here:

- int8: the int4 weight requantized to int8 per output channel, run as int8-dynamic runs (per-token int8
  activations, oneDNN's VNNI GEMM: SlimServe int8's kernel);
- bf16: the int4 weight expanded to bf16, oneDNN's bf16 GEMM;
- int4: no copy, the int4 kernel for every call.

(torchao 0.18 has no int4 CPU layout: its int4 tensors are CUDA / XPU / NPU ones; its CPU int8 path is the
same oneDNN int8 GEMM as the int8 row.)

Part 1, one Linear of each MiniLM shape, eager, microseconds per call (median of round-robin rounds).
Part 2, MiniLM-L6 int4-weight-only in groups of 32 (every Linear int4, the embedding tables as the method makes them),
saved, restored and compiled as the server does with each path, against SlimServe int8: batch-1 (one
64-token sentence) latency ratios measured round-robin in one run, and mean cosine against fp32.

    .venv/bin/python benchmarks/int4_cpu_paths.py [--threads 2] [--rounds 30]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/compression_minilm.py

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compression_minilm as minilm  # noqa: E402

from slimserve.api.steps import QuantizeConfig  # noqa: E402
from slimserve.models.minilm import load_minilm  # noqa: E402
from slimserve.quant import int4_kernels  # noqa: E402
from slimserve.quant.int4_weight_only import Int4WeightOnlyLinear  # noqa: E402

PATHS = ("int8", "bf16", "int4")
SHAPES = ((384, 1152), (384, 384), (384, 1536), (1536, 384))  # fused qkv, output, FFN up, FFN down
ROWS = (8, 64, 512)
GROUP_SIZE = 32


def round_robin(calls: dict[str, callable], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(rounds + 1):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            calls[name]()
            if round_:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return times


def layers(rounds: int) -> None:
    print(f"One Linear, eager, us per call (median of {rounds} round-robin rounds); int4 groups of {GROUP_SIZE}")
    print(f"{'in x out':>12} {'rows':>5} {'fp32':>8} " + " ".join(f"{p:>8}" for p in PATHS))
    for in_features, out_features in SHAPES:
        linear = torch.nn.Linear(in_features, out_features)
        modules = {}
        for path in PATHS:
            int4_kernels.CPU_MANY_ROWS = path
            modules[path] = Int4WeightOnlyLinear.from_float(linear, GROUP_SIZE)
        for rows in ROWS:
            x = torch.randn(rows, in_features)
            calls = {"fp32": lambda: linear(x), **{p: (lambda m=m: m(x)) for p, m in modules.items()}}
            with torch.inference_mode():
                times = round_robin(calls, rounds)
            cells = " ".join(f"{statistics.median(times[name]) * 1e6:8.0f}" for name in calls)
            print(f"{f'{in_features}x{out_features}':>12} {rows:5d} {cells}")


def models(rounds: int) -> None:
    model, _ = load_minilm()
    sentences = minilm.held_out_sentences()
    batch = minilm.fixed_batch(sentences)
    one = tuple(t[:1] for t in batch)
    config = QuantizeConfig(method="int4-weight-only", group_size=GROUP_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        variants = [minilm.fp32_variant(model, workdir), minilm.slimserve_variant(model, workdir, batch)]
        for path in PATHS:
            int4_kernels.CPU_MANY_ROWS = path  # read when the restored modules are packed for the CPU
            variants.append(minilm.saved_variant(f"int4, {path} above {int4_kernels.CPU_INT4_MAX_ROWS} rows", model, config, workdir, batch))
        reference = minilm.embed_all(variants[0].forward, sentences)
        cosines = {v.name: float((minilm.embed_all(v.forward, sentences) * reference).sum(axis=1).mean()) for v in variants}
        times = minilm.batch1_latency(variants, one, rounds // 3)
    int8 = times[minilm.SLIMSERVE]
    print(f"\nMiniLM-L6 compiled, batch 1 ({minilm.SEQUENCE} tokens), {len(int8)} round-robin rounds")
    print(f"{'variant':40} {'median ms':>9} {'vs int8':>8} {'cos mean':>9}")
    for v in variants:
        vs_int8 = statistics.median(i / o for i, o in zip(int8, times[v.name], strict=True))
        print(f"{v.name:40} {statistics.median(times[v.name]) * 1e3:9.2f} {vs_int8:7.2f}x {cosines[v.name]:9.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, {args.threads} threads\n")
    default = int4_kernels.CPU_MANY_ROWS
    try:
        layers(args.rounds)
        models(args.rounds)
    finally:
        int4_kernels.CPU_MANY_ROWS = default
    return 0


if __name__ == "__main__":
    sys.exit(main())
