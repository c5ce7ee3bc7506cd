"""Data shipped with SlimServe: the sentences the MiniLM demo is evaluated and calibrated on.

`sentences.txt` is the held-out evaluation set; `sentences_train.txt` is the separate split used for
calibration, recovery fine-tuning and distillation. Both are plain text, one sentence a line.

`tiny_lm/` holds the built-in decoder `builtin://tiny-lm` (weights, tokenizer, recipe and its held-out and
training text samples); `slimserve.models.decoder` reads it.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

SPLITS = {"eval": "sentences.txt", "train": "sentences_train.txt"}


@lru_cache(maxsize=None)
def builtin_sentences(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {sorted(SPLITS)}, got {split!r}")
    text = resources.files(__package__).joinpath(SPLITS[split]).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())
