"""Compression at scale: wall time and peak memory of `slimserve compress` against model size.

Random-weight BERT encoders saved as Hugging Face directories (config.json, model.safetensors, MiniLM's
tokenizer.json) of about 11M (4 layers, hidden 256), 22M (MiniLM-L6's shape), 110M (BERT-base) and 335M
(BERT-large) parameters, each quantized int8-dynamic and int4-weight-only (where this machine runs it), one
compression per process. Peak memory is the process's peak resident set (VmHWM, which counts the
memory-mapped weights it touched) above its resident set just before the compression started, taken after a
warm-up compression, in the same process, of an encoder of the same width with one layer: the interpreter,
torch, the tokenizer, oneDNN's and the allocator's working memory for activations of that width, and
inductor's compiler are paid there (they do not grow with the number of weights), so the ratio to the fp32
weights is the weights' own. Target:
peak <= 1.5x the fp32 size; time roughly linear in parameters (seconds per million parameters in the table).

There is no decoder family yet, so the decoder row (about 1B parameters) is printed as not available.

    .venv/bin/python benchmarks/compression_scale.py [--sizes 11M,22M,110M,335M] [--methods int8-dynamic,int4-weight-only]
        [--work DIR] [--json FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/compression_minilm.py

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

# (layers, hidden, heads, intermediate) of each size's encoder
BERT_SHAPES = {
    "11M": (4, 256, 4, 1024),
    "22M": (6, 384, 12, 1536),
    "110M": (12, 768, 12, 3072),
    "335M": (24, 1024, 16, 4096),
}
METHODS = ("int8-dynamic", "int4-weight-only")
PEAK_TARGET = 1.5
VOCAB = 30522  # MiniLM's tokenizer's


def write_random_bert(directory: Path, layers: int, hidden: int, heads: int, intermediate: int, vocab: int = VOCAB) -> Path:
    """A randomly initialised BERT encoder saved as Hugging Face does (BertModel keys), one tensor at a time."""
    import torch
    from safetensors.torch import save_file

    from slimserve.models.minilm import MiniLMConfig, _hf_key, build_minilm, minilm_files_dir

    if (directory / "model.safetensors").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = MiniLMConfig(
        vocab_size=vocab, hidden_size=hidden, num_layers=layers, head_dim=hidden // heads, num_heads=[heads] * layers,
        intermediate_sizes=[intermediate] * layers,
    )
    model = build_minilm(config)
    staging = directory / "model.safetensors.partial"
    save_file({_hf_key(name): tensor.contiguous() for name, tensor in model.state_dict().items()}, str(staging))
    del model
    (directory / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": intermediate,
        "max_position_embeddings": config.max_positions, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
    }))
    shutil.copy(minilm_files_dir() / "tokenizer.json", directory / "tokenizer.json")
    staging.rename(directory / "model.safetensors")
    return directory


def warm_up_shape(size: str) -> tuple[int, int, int, int]:
    """The encoder a measurement of `size` warms up with: the same width, one layer."""
    _, hidden, heads, intermediate = BERT_SHAPES[size]
    return 1, hidden, heads, intermediate


def write_models(work: Path, size: str) -> tuple[Path, Path]:
    """(the encoder of `size`, its warm-up encoder) under `work`, written once."""
    return (write_random_bert(work / f"bert-{size}", *BERT_SHAPES[size]),
            write_random_bert(work / f"bert-{size}-warm-up", *warm_up_shape(size)))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Start VmHWM over at the current resident set (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _spec(model: Path, method: str, output: Path, dataset: Path | None = None) -> dict:
    evaluation = {"maxDrop": 1.0, "threads": 1, **({"dataset": {"uri": f"file://{dataset}"}} if dataset else {})}
    return {
        "model": {"uri": f"file://{model}"}, "steps": [{"quantize": {"method": method}}], "evaluation": evaluation,
        "output": {"uri": f"file://{output}"},
    }


def child(models: list[Path], method: str, work: Path, warm_up: Path | None, dataset: Path | None = None) -> list[dict]:
    """Compressions one after the other in this process, each measured on its own: its peak resident memory
    above the resident set before it. `dataset`: evaluation sentences (default: the builtin ones)."""
    from slimserve.api.compression_job import CompressionJobSpec
    from slimserve.compression import compress

    if warm_up is not None:
        compress(CompressionJobSpec.model_validate(_spec(warm_up, method, work / f"{warm_up.name}-{method}", dataset)), [])
    results = []
    for model in models:
        gc.collect()
        baseline = _status_kib("VmRSS")
        _reset_peak()
        start = time.perf_counter()
        outcome = compress(CompressionJobSpec.model_validate(_spec(model, method, work / f"{model.name}-{method}", dataset)), [])
        seconds = time.perf_counter() - start
        peak = _status_kib("VmHWM")
        fp32 = (model / "model.safetensors").stat().st_size
        results.append({
            "fp32Bytes": fp32, "baselineBytes": baseline, "peakBytes": peak,
            "peakRatio": round((peak - baseline) / fp32, 3), "seconds": round(seconds, 1),
            "parameters": outcome.metrics.baseline.parameters, "compressedBytes": outcome.metrics.compressed.size_bytes,
        })
        del outcome
    return results


def measure(models: list[Path], method: str, work: Path, warm_up: Path | None, *, dataset: Path | None = None,
            timeout: float | None = None, env: dict[str, str] | None = None) -> list[dict]:
    """`child` in a fresh interpreter (one per call: no other run's memory mixes in); raises on failure."""
    command = [sys.executable, __file__, "--child", method, str(work), str(warm_up or ""), str(dataset or ""), *map(str, models)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"compressing {', '.join(m.name for m in models)} ({method}) failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="11M,22M,110M,335M")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "slimserve-compression-scale")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    models = {size: write_models(args.work, size) for size in args.sizes.split(",")}
    rows = []
    for method in args.methods.split(","):
        for size in args.sizes.split(","):
            try:
                model, warm_up = models[size]
                (row,) = measure([model], method, args.work, warm_up)
            except RuntimeError as exc:
                row = {"error": str(exc).splitlines()[-1][:200]}
            rows.append({"model": f"bert-{size}", "method": method, **row})
            print(json.dumps(rows[-1]), flush=True)
        rows.append({"model": "decoder-1B", "method": method, "error": "not available: no decoder family"})
    print()
    print(f"| model | method | parameters | fp32 MB | peak above baseline MB | peak / fp32 (target <= {PEAK_TARGET}) | seconds | s per M params |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print(f"| {row['model']} | {row['method']} | {row['error']} | | | | | |")
            continue
        print(
            f"| {row['model']} | {row['method']} | {row['parameters'] / 1e6:.1f}M | {row['fp32Bytes'] / 1e6:.0f} | "
            f"{(row['peakBytes'] - row['baselineBytes']) / 1e6:.0f} | {row['peakRatio']:.2f} | {row['seconds']:.0f} | "
            f"{row['seconds'] / (row['parameters'] / 1e6):.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        from slimserve.cli.malloc import limit_arenas

        limit_arenas()  # as slimserve compress does
        method, work, warm_up, dataset, *models = sys.argv[2:]
        print(json.dumps(child([Path(m) for m in models], method, Path(work), Path(warm_up) if warm_up else None,
                               Path(dataset) if dataset else None)))
        sys.exit(0)
    sys.exit(main())
