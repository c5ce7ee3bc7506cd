"""MiniLM-L6 int8 benchmark: SlimServe against the int8 paths a user could pick instead, side by side in one run.

Variants (all from the same fp32 all-MiniLM-L6-v2 weights):
- fp32: the plain-torch encoder, eager;
- SlimServe int8: `apply_quantization(int8-dynamic)`, saved as safetensors + JSON recipe, loaded back onto a
  fresh skeleton with `restore_quantization` and compiled with `optimize_for_inference` (as the server does);
- ONNX Runtime `quantize_dynamic` (int8 weights, MatMul + Gather), on a `torch.onnx.export` of the encoder;
- torchao `Int8DynamicActivationInt8WeightConfig` + `torch.compile`;
- torch's eager `torch.ao.quantization.quantize_dynamic` (when this torch still has it);
- SlimServe int4 gptq (CPU): int4-weight-only GPTQ (calibrated on the train split) in groups of 32 on torch's
  packed-int4 kernel (an int8 copy for calls of more than 4 rows), int4 embedding tables, the layers (Linears
  and tables) int4 hurts most in int8 (ranked as the budget search ranks them: each alone, by output cosine
  with round-to-nearest; the chosen ones are printed); and
  SlimServe fp16 / bf16 (served in bf16 where the CPU has AVX512-BF16 or AMX, else cast up).
  Their batch-1 latency (one sentence) is measured side by side with SlimServe int8's.

Throughput: batch 32 x 64 tokens, the same torch / ORT thread count for all, round-robin (one call of each
variant per round) so that load from other processes hits all alike; medians. Accuracy: mean (and min)
cosine of each variant's embeddings against fp32's on the held-out sentences. Size: the bytes a variant
stores (SlimServe: safetensors + recipe; ORT: the .onnx file; torch variants: their serialized state).

Targets: SlimServe int8 >= 3.9x smaller than fp32, >= 2.1x fp32 throughput, >= 1.15x ONNX Runtime int8's,
mean cosine >= 0.995. SlimServe int4: >= 6x smaller than fp32, mean cosine >= 0.99, batch 1 at least as fast
as SlimServe int8.

    .venv/bin/python benchmarks/compression_minilm.py --variants slimserve int4 half   # int4, fp16, bf16 rows

    .venv/bin/python benchmarks/compression_minilm.py [--threads 2] [--rounds 15] [--json FILE]
"""

from __future__ import annotations

import os

# OpenMP threads that sleep at a barrier instead of spinning: on a shared or CPU-quota'd machine a spinning
# thread burns the time slice its sibling needs (measured here: fp32 eager and SlimServe int8 both lose up
# to 2-4x under load with the default spin). Read by libgomp when torch is imported, so set before that;
# an explicit OMP_WAIT_POLICY in the environment wins. Servers want the same setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Compile times are reported cold (a fresh inductor cache, as in a new server pod), unless a cache is given.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import tempfile as _tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _tempfile.mkdtemp(prefix="inductor-cold-")

import argparse  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from slimserve.api.steps import QuantizeConfig  # noqa: E402
from slimserve.compression.quantize import apply_quantization  # noqa: E402
from slimserve.quant import optimize_for_inference, quantization_state, restore_quantization  # noqa: E402
from slimserve.models.minilm import MiniLMConfig, build_minilm, load_minilm, load_tokenizer  # noqa: E402

BATCH, SEQUENCE = 32, 64
SLIMSERVE = "SlimServe int8"
INT4 = "SlimServe int4 gptq (CPU)"
ORT = "ONNX Runtime quantize_dynamic"
TARGETS = {"size_x": 3.9, "speed_x": 2.1, "vs_ort_x": 1.15, "cosine": 0.995}

Forward = Callable[[torch.Tensor, torch.Tensor], np.ndarray]


@dataclass
class Variant:
    name: str
    forward: Forward
    size_bytes: int | None
    compile_seconds: float | None = None
    times: list[float] = field(default_factory=list)
    cosine_mean: float = float("nan")
    cosine_min: float = float("nan")


def held_out_sentences() -> list[str]:
    from slimserve.data import builtin_sentences

    return list(builtin_sentences("eval"))


def fixed_batch(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """BATCH sentences, truncated / padded to exactly SEQUENCE tokens."""
    tokenizer = load_tokenizer(max_tokens=SEQUENCE)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=SEQUENCE)
    long_first = sorted(sentences, key=len, reverse=True)
    encodings = tokenizer.encode_batch([long_first[i % len(long_first)] for i in range(BATCH)])
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
    return ids, mask


def torch_forward(model: Callable) -> Forward:
    def forward(ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return model(ids, mask).float().numpy()

    return forward


def torch_serialized_size(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)  # writing only, to measure; nothing is loaded back with pickle
    return buffer.tell()


def fp32_variant(model: torch.nn.Module, workdir: Path) -> Variant:
    from safetensors.torch import save_file

    path = workdir / "fp32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Variant("fp32 (eager)", torch_forward(model), path.stat().st_size)


def slimserve_variant(model: torch.nn.Module, workdir: Path, example: tuple) -> Variant:
    return saved_variant(SLIMSERVE, model, QuantizeConfig(method="int8-dynamic"), workdir, example)


INT4_TARGETS = {"size_x": 6.0, "cosine": 0.99, "batch1_vs_int8_x": 1.0}
INT4_GROUP_SIZE = 32
INT4_COSINE = 0.99  # int8 layers are added (1, 2, 4, ...) until the held-out cosine reaches this


def saved_variant(
    name: str, model: torch.nn.Module, config: QuantizeConfig, workdir: Path, example: tuple, calibration: list[tuple] | None = None
) -> Variant:
    """A SlimServe quantize config, saved, restored onto a fresh skeleton and optimized as the server does."""
    from safetensors.torch import load_file, save_file

    quantized = apply_quantization(copy.deepcopy(model), config, calibration=calibration)
    tensors, recipe = quantization_state(quantized)
    stem = name.replace(" ", "-").replace("/", "-")
    weights, recipe_path = workdir / f"{stem}.safetensors", workdir / f"{stem}.recipe.json"
    save_file(tensors, str(weights))
    recipe_path.write_text(json.dumps(recipe))
    config_json = json.dumps(model.config.__dict__)
    restored = restore_quantization(
        build_minilm(MiniLMConfig.from_json(config_json)), json.loads(recipe_path.read_text()), load_file(str(weights))
    )
    optimized = optimize_for_inference(restored, example)
    size = weights.stat().st_size + recipe_path.stat().st_size + len(config_json)
    return Variant(name, torch_forward(optimized), size, optimized.compile_seconds)


def calibration_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The MiniLM task's calibration sentences (the train split, not the held-out one), in batches of BATCH."""
    from slimserve.data import builtin_sentences

    tokenizer = load_tokenizer(max_tokens=SEQUENCE)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    train = list(builtin_sentences("train"))
    encoded = [tokenizer.encode_batch(train[i : i + BATCH]) for i in range(0, len(train), BATCH)]
    return [(torch.tensor([e.ids for e in batch]), torch.tensor([e.attention_mask for e in batch])) for batch in encoded]


def int4_config(model: torch.nn.Module, sentences: list[str], calibration: list[tuple]) -> QuantizeConfig:
    """int4 GPTQ in groups of INT4_GROUP_SIZE with the fewest most-sensitive layers in int8 reaching INT4_COSINE.
    Layers are ranked by round-to-nearest's damage (each alone: cheap), the counts tried with GPTQ."""
    from slimserve.compression.quantize import quantizable_layers

    reference = embed_all(torch_forward(model), sentences)

    def cosine_of(config: QuantizeConfig) -> float:
        quantized = apply_quantization(copy.deepcopy(model), config, calibration=calibration)
        return float((embed_all(torch_forward(quantized), sentences) * reference).sum(axis=1).mean())

    layers = quantizable_layers(model, "int4-weight-only")  # the Linears and the embedding tables
    base = QuantizeConfig(method="int4-weight-only", group_size=INT4_GROUP_SIZE)
    damage = {n: 1 - cosine_of(base.model_copy(update={"keep_float": [o for o in layers if o != n]})) for n in layers}
    ranked = sorted(layers, key=damage.__getitem__, reverse=True)
    gptq = base.model_copy(update={"algorithm": "gptq"})
    count = 0
    while cosine_of(config := gptq.model_copy(update={"int8_layers": ranked[:count]})) < INT4_COSINE and count < len(ranked):
        count = max(1, count * 2)
    tables = [n for n in layers if isinstance(model.get_submodule(n), torch.nn.Embedding)]
    print(f"int4 gptq: groups of {INT4_GROUP_SIZE}, int8 layers {config.int8_layers}; tables: "
          + ", ".join(f"{n} {'int8' if n in config.int8_layers else 'int4'}" for n in tables))
    return config


def int4_variant(model: torch.nn.Module, sentences: list[str], workdir: Path, example: tuple) -> Variant:
    calibration = calibration_batches()
    return saved_variant(INT4, model, int4_config(model, sentences, calibration), workdir, example, calibration)


def torchao_variant(model: torch.nn.Module, example: tuple) -> Variant:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    size = torch_serialized_size(quantized)
    compiled = torch.compile(quantized)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(*example)
    return Variant("torchao int8 + compile", torch_forward(compiled), size, time.perf_counter() - start)


def eager_dynamic_variant(model: torch.nn.Module) -> Variant | None:
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    return Variant("torch eager quantize_dynamic", torch_forward(quantized), torch_serialized_size(quantized))


def onnxruntime_variants(model: torch.nn.Module, workdir: Path, example: tuple, threads: int) -> list[Variant]:
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        print("onnxruntime not installed (pip install -e '.[bench]'): skipping the ONNX Runtime baseline", file=sys.stderr)
        return []
    fp32_path, int8_path = workdir / "minilm.onnx", workdir / "minilm.int8.onnx"
    batch, tokens = torch.export.Dim("batch", min=1), torch.export.Dim("tokens", min=2, max=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(fp32_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}),
            external_data=False,
        )
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    variants = []
    for spinning in ("1", "0"):  # ORT's own thread pool spins by default; measured both ways, best one counts
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])

        def forward(ids: torch.Tensor, mask: torch.Tensor, session=session) -> np.ndarray:
            return session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]

        name = f"{ORT} ({'spin' if spinning == '1' else 'no spin'})"
        variants.append(Variant(name, forward, int8_path.stat().st_size))
    return variants


def embed_all(forward: Forward, sentences: list[str]) -> np.ndarray:
    tokenizer = load_tokenizer()
    chunks = []
    for start in range(0, len(sentences), BATCH):
        encodings = tokenizer.encode_batch(sentences[start : start + BATCH])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        chunks.append(forward(ids, mask))
    out = np.concatenate(chunks)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def measure(variants: list[Variant], batch: tuple, rounds: int) -> None:
    for variant in variants:  # warm-up
        variant.forward(*batch)
    for round_ in range(rounds):
        # One call of each variant per round, the order rotating so that none always follows the same one.
        for variant in variants[round_ % len(variants) :] + variants[: round_ % len(variants)]:
            start = time.perf_counter()
            variant.forward(*batch)
            variant.times.append(time.perf_counter() - start)


def batch1_latency(variants: list[Variant], one: tuple, rounds: int) -> dict[str, list[float]]:
    """Per-variant times of one sentence, round-robin as `measure` does (3x the rounds: they are short)."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for round_ in range(3 * rounds + 1):
        for variant in variants[round_ % len(variants) :] + variants[: round_ % len(variants)]:
            start = time.perf_counter()
            variant.forward(*one)
            if round_:  # the first round warms up
                times[variant.name].append(time.perf_counter() - start)
    return times


def report_batch1(times: dict[str, list[float]], results: dict) -> dict:
    print(f"\nBatch 1 ({SEQUENCE} tokens), median ms, and int8 / variant per round (> 1: faster than SlimServe int8):")
    int8 = times.get(SLIMSERVE)
    rows = {}
    for name, own in times.items():
        vs_int8 = statistics.median(i / o for i, o in zip(int8, own, strict=True)) if int8 else None
        rows[name] = {"median_ms": statistics.median(own) * 1e3, "vs_int8_x": vs_int8}
        print(f"  {name:40} {rows[name]['median_ms']:8.2f} ms  vs int8 {'-' if vs_int8 is None else f'{vs_int8:.2f}x'}")
    if INT4 in rows:
        int4 = results["variants"][INT4]
        checks = {"size_x": int4["size_x"], "cosine": int4["cosine_mean"], "batch1_vs_int8_x": rows[INT4]["vs_int8_x"]}
        print("\nint4 targets:")
        for key, target in INT4_TARGETS.items():
            value = checks[key]
            verdict = "n/a" if value is None else ("met" if value >= target else "MISSED")
            print(f"  {key:17} {'-' if value is None else f'{value:.3f}':>7} (target >= {target}) {verdict}")
        rows["int4_checks"] = checks
    return rows


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def paired_speedup(slower: Variant, faster: Variant) -> float:
    """Median over rounds of slower's time / faster's time in the same round: robust to load that drifts
    between rounds, since both ran back to back under the same load."""
    return statistics.median(s / f for s, f in zip(slower.times, faster.times, strict=True))


def report(variants: list[Variant], threads: int) -> dict:
    base = variants[0]
    ours = next((v for v in variants if v.name == SLIMSERVE), None)
    print(
        f"\nMiniLM-L6, batch {BATCH} x {SEQUENCE} tokens, {threads} threads, {len(base.times)} rounds,"
        f" OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; speed ratios are medians of per-round ratios\n"
    )
    header = (
        f"{'variant':40} {'size MB':>8} {'smaller':>8} {'median ms':>10} {'min ms':>8} {'sent/s':>8} {'vs fp32':>8}"
        f" {'cos mean':>9} {'cos min':>8} {'compile s':>9}"
    )
    print(header)
    print("-" * len(header))
    rows = {}
    for v in variants:
        median = statistics.median(v.times)
        rows[v.name] = {
            "size_bytes": v.size_bytes,
            "size_x": base.size_bytes / v.size_bytes if v.size_bytes else None,
            "median_ms": median * 1e3,
            "min_ms": min(v.times) * 1e3,
            "throughput": BATCH / median,
            "speed_x": paired_speedup(base, v),
            "cosine_mean": v.cosine_mean,
            "cosine_min": v.cosine_min,
            "compile_seconds": v.compile_seconds,
        }
        r = rows[v.name]
        size = f"{v.size_bytes / 1e6:8.2f}" if v.size_bytes else f"{'-':>8}"
        compile_s = f"{v.compile_seconds:9.1f}" if v.compile_seconds is not None else f"{'-':>9}"
        print(
            f"{v.name:40} {size} {ratio(base.size_bytes, v.size_bytes):>8} {r['median_ms']:10.1f} {r['min_ms']:8.1f}"
            f" {r['throughput']:8.1f} {r['speed_x']:7.2f}x {v.cosine_mean:9.4f} {v.cosine_min:8.4f} {compile_s}"
        )
    if ours is None:
        return {"threads": threads, "batch": BATCH, "sequence": SEQUENCE, "variants": rows}
    ours_row = rows[ours.name]
    print("\nSlimServe int8 against each, both ways (ours/theirs > 1: SlimServe better):")
    for v in variants:
        if v is ours:
            continue
        speed = paired_speedup(v, ours)
        rows[v.name]["slimserve_speedup"] = speed
        print(
            f"  vs {v.name:40} speed {speed:.2f}x (theirs/ours {1 / speed:.2f}),"
            f" min-time ratio {min(v.times) / min(ours.times):.2f}x,"
            f" size {ratio(v.size_bytes, ours.size_bytes)} (their bytes / ours),"
            f" cosine {ours_row['cosine_mean']:.4f} vs {rows[v.name]['cosine_mean']:.4f}"
        )
    ort_speedups = [rows[v.name]["slimserve_speedup"] for v in variants if v.name.startswith(ORT)]
    checks = {
        "size_x": ours_row["size_x"],
        "speed_x": ours_row["speed_x"],
        "vs_ort_x": min(ort_speedups) if ort_speedups else None,  # against ORT's faster setting
        "cosine": ours_row["cosine_mean"],
    }
    print("\nTargets:")
    for key, target in TARGETS.items():
        value = checks[key]
        verdict = "n/a" if value is None else ("met" if value >= target else "MISSED")
        shown = "-" if value is None else f"{value:.3f}"
        print(f"  {key:9} {shown:>7} (target >= {target}) {verdict}")
    return {"threads": threads, "batch": BATCH, "sequence": SEQUENCE, "variants": rows, "targets": TARGETS, "checks": checks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["slimserve", "onnxruntime", "torchao", "eager"],
        choices=["slimserve", "onnxruntime", "torchao", "eager", "int4", "half"],
        help="which to run besides fp32 (default: all)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, _ = load_minilm()
    sentences = held_out_sentences()
    batch = fixed_batch(sentences)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        variants = [fp32_variant(model, workdir)]
        builders = {
            "slimserve": lambda: slimserve_variant(model, workdir, batch),
            "onnxruntime": lambda: onnxruntime_variants(model, workdir, batch, args.threads),
            "torchao": lambda: torchao_variant(model, batch),
            "eager": lambda: eager_dynamic_variant(model),
            "int4": lambda: int4_variant(model, sentences, workdir, batch),
            "half": lambda: [saved_variant(f"SlimServe {m}", model, QuantizeConfig(method=m), workdir, batch) for m in ("bf16", "fp16")],
        }
        for name in args.variants:
            start = time.perf_counter()
            built = builders[name]()
            for variant in built if isinstance(built, list) else [built] if built else []:
                print(f"prepared {variant.name} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
                variants.append(variant)
        reference = embed_all(variants[0].forward, sentences)
        for variant in variants:
            cosines = (embed_all(variant.forward, sentences) * reference).sum(axis=1)
            variant.cosine_mean, variant.cosine_min = float(cosines.mean()), float(cosines.min())
        measure(variants, batch, args.rounds)
        batch1 = batch1_latency(variants, tuple(t[:1] for t in batch), args.rounds)
    results = report(variants, args.threads)
    results["batch1"] = report_batch1(batch1, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
