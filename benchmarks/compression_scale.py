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

The decoder family is measured the same way on a random-weight Llama of about 1.1B parameters (TinyLlama's
shape: 22 layers, hidden 2048, grouped-query attention, vocabulary 32000; `--sizes decoder-1B`), with
tiny-lm's tokenizer and the first part of its held-out text as the evaluation set (a 1B-parameter forward
pass per window on one thread), after a one-layer warm-up of the same width.

    .venv/bin/python benchmarks/compression_scale.py [--sizes 11M,22M,110M,335M,decoder-1B] [--methods int8-dynamic,int4-weight-only]
        [--work DIR] [--json FILE] [--timeout SECONDS]
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
# (layers, hidden, heads, kv heads, intermediate, vocabulary) of each decoder: Llama's architecture
DECODER_SHAPES = {
    "decoder-tiny": (2, 256, 4, 2, 688, 32000),
    "decoder-1B": (22, 2048, 32, 4, 5632, 32000),
}
DECODER_TEXT_CHARS = 12000  # of tiny-lm's held-out text: a few 128-token windows, one in five held out
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


def write_random_decoder(directory: Path, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int,
                         vocab: int) -> Path:
    """A random-weight Llama saved as Hugging Face does (config.json, model.safetensors), with tiny-lm's
    tokenizer (its ids lie within any vocabulary of 2048 or more)."""
    import torch
    from safetensors.torch import save_file

    from slimserve.models.decoder.directory import tiny_lm_dir

    if (directory / "model.safetensors").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 0,
    }
    head_dim, kv = hidden // heads, kv_heads * (hidden // heads)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        layer = f"model.layers.{i}"
        shapes |= {
            f"{layer}.self_attn.q_proj.weight": (heads * head_dim, hidden), f"{layer}.self_attn.k_proj.weight": (kv, hidden),
            f"{layer}.self_attn.v_proj.weight": (kv, hidden), f"{layer}.self_attn.o_proj.weight": (hidden, heads * head_dim),
            f"{layer}.mlp.gate_proj.weight": (intermediate, hidden), f"{layer}.mlp.up_proj.weight": (intermediate, hidden),
            f"{layer}.mlp.down_proj.weight": (hidden, intermediate),
            f"{layer}.input_layernorm.weight": (hidden,), f"{layer}.post_attention_layernorm.weight": (hidden,),
        }
    generator = torch.Generator().manual_seed(0)
    tensors = {name: torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=generator) * 0.02
               for name, shape in shapes.items()}
    staging = directory / "model.safetensors.partial"
    save_file(tensors, str(staging))
    del tensors
    (directory / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_lm_dir() / name, directory / name)
    staging.rename(directory / "model.safetensors")
    return directory


def decoder_text(work: Path) -> Path:
    """The decoders' evaluation text: the first DECODER_TEXT_CHARS characters of tiny-lm's held-out text."""
    from slimserve.models.decoder.directory import builtin_text

    path = work / "decoder-text.txt"
    path.write_text(builtin_text("heldout")[:DECODER_TEXT_CHARS], encoding="utf-8")
    return path


def warm_up_shape(size: str) -> tuple[int, ...]:
    """The model a measurement of `size` warms up with: the same width, one layer."""
    shape = DECODER_SHAPES.get(size) or BERT_SHAPES[size]
    return (1, *shape[1:])


def model_name(size: str) -> str:
    return size if size in DECODER_SHAPES else f"bert-{size}"


def write_models(work: Path, size: str) -> tuple[Path, Path]:
    """(the model of `size`, its warm-up model) under `work`, written once."""
    if size in DECODER_SHAPES:
        return (write_random_decoder(work / size, *DECODER_SHAPES[size]),
                write_random_decoder(work / f"{size}-warm-up", *warm_up_shape(size)))
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


class ProgressLog:
    """Each progress event of a measured compression as a line of `path`: the wall and CPU seconds since it
    began, so a run that does not finish still says how far it got and at what cost, and the peak, anonymous,
    file-backed and shared-memory (tmpfs) resident bytes then, so a run says where its memory went."""

    def __init__(self, path: Path):
        self.path, self.wall, self.cpu = path, time.perf_counter(), time.process_time()
        path.write_text("")

    def progress(self, event) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({
                "wallSeconds": round(time.perf_counter() - self.wall, 1), "cpuSeconds": round(time.process_time() - self.cpu, 1),
                "step": event.step, "fraction": round(event.fraction, 3), "message": event.message,
                "peakBytes": _status_kib("VmHWM"), "anonymousBytes": _status_kib("RssAnon"), "fileBytes": _status_kib("RssFile"),
                "sharedMemoryBytes": _status_kib("RssShmem"),
            }) + "\n")

    def result(self, result) -> None:
        pass

    def error(self, reason: str, message: str) -> None:
        pass


def progress_events(work: Path, model: Path, method: str) -> list[dict]:
    """The progress events the last measurement of `model` with `method` logged, in order."""
    path = work / f"{model.name}-{method}.progress"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def last_progress(work: Path, model: Path, method: str) -> dict | None:
    events = progress_events(work, model, method)
    return events[-1] if events else None


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
        progress = ProgressLog(work / f"{model.name}-{method}.progress")
        outcome = compress(CompressionJobSpec.model_validate(_spec(model, method, work / f"{model.name}-{method}", dataset)), [progress])
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
    parser.add_argument("--sizes", default="11M,22M,110M,335M,decoder-1B")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "slimserve-compression-scale")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timeout", type=float, help="seconds one measurement may take before its row says it ran out")
    args = parser.parse_args()
    models = {size: write_models(args.work, size) for size in args.sizes.split(",")}
    rows = []
    for method in args.methods.split(","):
        for size in args.sizes.split(","):
            try:
                model, warm_up = models[size]
                dataset = decoder_text(args.work) if size in DECODER_SHAPES else None
                (row,) = measure([model], method, args.work, warm_up, dataset=dataset, timeout=args.timeout)
            except RuntimeError as exc:
                row = {"error": str(exc).splitlines()[-1][:200]}
            except subprocess.TimeoutExpired:
                reached = last_progress(args.work, model, method)
                row = {"error": f"did not finish in {args.timeout:.0f} s" + (
                    f"; reached {reached['step']} ({reached['fraction']:.0%} of the run) after {reached['wallSeconds']:.0f} s, "
                    f"{reached['cpuSeconds']:.0f} CPU s" if reached else "")}
            rows.append({"model": model_name(size), "method": method, **row})
            print(json.dumps(rows[-1]), flush=True)
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
