"""Peak memory of quantizing a model against the bound it holds today: at most 2x the fp32 weights. The target
is 1.5x (docs/compression-at-scale.md); measured here 1.35-1.67x from run to run, 1.76x at BERT-base's width,
so 2x is asserted: a copy of the weights that comes back (a deep copy, a loaded state dict) fails it.

The compression runs in a subprocess (benchmarks/compression_scale.py's measurement): after a warm-up
compression of a one-layer encoder of the same width, which pays what every run pays whatever its size (the
interpreter, torch, the tokenizer, oneDNN's and the allocator's working memory for activations of that
width), the peak resident set (VmHWM, which counts the memory-mapped weights the run touched) is taken above
the resident set just before the measured run, as a ratio to the fp32 weights' bytes. The model is large
enough (about 41M parameters, 164 MB) that what is left of those fixed costs is a small part of it.

Compiling for inference is switched off here (TORCHDYNAMO_DISABLE: the candidate is scored eagerly, with its
inference fusions): it takes minutes per model on a small machine, and its own memory (the compiler's work
and the frozen copies of the quantized weights, about 0.25x for int8) is what the benchmark measures.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "compression_scale.py"
BOUND = 2.0
SHAPE = (8, 512, 8, 2048)  # layers, hidden, heads, intermediate: about 41M parameters


def _benchmark():
    spec = importlib.util.spec_from_file_location("compression_scale", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quantizing_int8_dynamic_peaks_below_twice_the_fp32_weights(tmp_path_factory):
    scale = _benchmark()
    work = tmp_path_factory.mktemp("scale")
    model = scale.write_random_bert(work / "bert-41M", *SHAPE)
    warm_up = scale.write_random_bert(work / "bert-41M-warm-up", 1, *SHAPE[1:])
    sentences = work / "sentences.txt"  # ten (two held out): scoring and timing take seconds, not minutes
    sentences.write_text("\n".join(f"sentence number {i} about memory and models" for i in range(10)))
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    env.pop("MALLOC_ARENA_MAX", None)
    (result,) = scale.measure([model], "int8-dynamic", work, warm_up, dataset=sentences, timeout=600, env=env)
    assert result["parameters"] > 40e6 and result["compressedBytes"] < result["fp32Bytes"] / 3
    assert result["peakBytes"] - result["baselineBytes"] >= result["fp32Bytes"] * 0.9  # the weights were read
    assert result["peakRatio"] <= BOUND, result
