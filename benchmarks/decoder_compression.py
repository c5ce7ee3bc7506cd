"""Decoder compression: perplexity, size and generation speed of fp32, int8 and int4 (GPTQ against round-to-nearest).

One run, one process: the model (builtin://tiny-lm by default) quantized each way with the compression engine's
own quantizers, every variant's perplexity on the same held-out windows (the `perplexity` task a CompressionJob
uses), its artifact size, and tokens per second of greedy generation at concurrency 1 (32 tokens after a
32-token prompt, prefill and decode steps with the KV cache), all variants measured side by side in
alternating rounds. Targets (issue "Large generative models"): int8 >= 1.4x and int4 >= 1.8x fp32 tokens/s;
perplexity at most 2% (int8) and 6% (int4) above fp32, GPTQ ahead of round-to-nearest.

    .venv/bin/python benchmarks/decoder_compression.py [--model builtin://tiny-lm] [--dataset URI] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from slimserve.api.compression_job import EvaluationSpec
from slimserve.api.steps import QuantizeConfig
from slimserve.compression.measure import serialized_size
from slimserve.compression.quantize import apply_quantization, needs_calibration
from slimserve.compression.task_data import build_task
from slimserve.models.families import eager_forward
from slimserve.models.loading import load_model
from slimserve.quant import quantization_state
from slimserve.quant.sharing import copy_sharing_weights

VARIANTS = {  # label -> quantize step (None: the fp32 model)
    "fp32": None,
    "int8-weight-only rtn": QuantizeConfig(method="int8-weight-only"),
    "int8-weight-only gptq": QuantizeConfig(method="int8-weight-only", algorithm="gptq"),
    "int8-dynamic": QuantizeConfig(method="int8-dynamic"),
    "int4-weight-only rtn": QuantizeConfig(method="int4-weight-only", group_size=128),
    "int4-weight-only gptq": QuantizeConfig(method="int4-weight-only", group_size=128, algorithm="gptq"),
}
TARGETS = {"int8": (0.02, 1.4), "int4": (0.06, 1.8)}  # (perplexity increase at most, tokens/s ratio at least)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin://tiny-lm")
    parser.add_argument("--dataset", help="a UTF-8 .txt file's URI (default: the built-in held-out text)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calibration", type=int, default=64, help="calibration windows for GPTQ")
    parser.add_argument("--budget-s", type=float, default=3.0, help="seconds of speed rounds per variant")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    dataset = {"dataset": {"uri": args.dataset}} if args.dataset else {}
    task = build_task(loaded, EvaluationSpec.model_validate({"metric": "perplexity", **dataset}))
    calibration = task.calibration(args.calibration)
    models, rows = {}, []
    for label, step in VARIANTS.items():
        start = time.perf_counter()
        if step is None:
            model, tensors = loaded.model, loaded.model.state_dict()
        else:
            model = apply_quantization(copy_sharing_weights(loaded.model), step,
                                       calibration=calibration if needs_calibration(step) else None)
            tensors = quantization_state(model)[0]
        models[label] = model
        rows.append({"variant": label, "seconds": round(time.perf_counter() - start, 1),
                     "perplexity": task.score(eager_forward(model)), "size_bytes": serialized_size(tensors)})
        print(f"{label}: perplexity {rows[-1]['perplexity']:.4f}", flush=True)
    speeds = task.tokens_per_second(list(models.values()), args.threads)
    base = rows[0]
    for row, speed in zip(rows, speeds):
        row["tokens_per_second"] = speed
        row["perplexity_increase"] = row["perplexity"] / base["perplexity"] - 1
        row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
        row["speed_ratio"] = speed / base["tokens_per_second"]

    print(f"\n{args.model}, {args.threads} thread(s), {task.split_size('eval')} held-out windows of {task.window} tokens\n")
    print("| variant | perplexity | vs fp32 | size MB | smaller | tokens/s | vs fp32 | target | quantize s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        bits = row["variant"][:4]
        target = TARGETS.get(bits)
        met = "" if target is None else (
            f"ppl +{target[0]:.0%} {'met' if row['perplexity_increase'] <= target[0] else 'MISSED'}, "
            f"{target[1]}x {'met' if row['speed_ratio'] >= target[1] else 'MISSED'}")
        print(f"| {row['variant']} | {row['perplexity']:.4f} | {row['perplexity_increase']:+.2%} | "
              f"{row['size_bytes'] / 1e6:.2f} | {row['size_ratio']:.2f}x | {row['tokens_per_second']:.1f} | "
              f"{row['speed_ratio']:.2f}x | {met} | {row['seconds']} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"model": args.model, "threads": args.threads, "rows": rows}, file, indent=2)


if __name__ == "__main__":
    main()
