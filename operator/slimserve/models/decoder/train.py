"""Train `builtin://tiny-lm`: a small Llama-architecture code model on the Python standard library's source.

    python -m slimserve.models.decoder.train [--out DIR] [--steps N]

The recipe is fixed here (`RECIPE`) and written beside the weights (`recipe.json`): the corpus is the
top-level `*.py` modules of the running interpreter's standard library, sorted by name; every tenth file
(by that order) is held out. A byte-level BPE tokenizer is trained on the training files, then the model,
from one seed, on random windows of the training tokens. The outputs are a Hugging Face style directory
(config.json, fp16 model.safetensors, tokenizer files) that `load_decoder` reads like any other, plus a
sample of held-out and training text and the held-out perplexity against a unigram model's.

Bit-for-bit equal weights need the same Python (its standard library is the corpus), the same torch and
the same number of threads (`RECIPE["threads"]`): float sums are ordered by thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RECIPE = {
    "seed": 20260101,
    "threads": 1,  # one: on a busy 2-core machine two torch threads spend most of their time waiting on each other
    "corpus": "top-level *.py of the standard library, sorted; files whose index % 10 == 0 held out",
    "vocab_size": 2048,
    "special_tokens": ["<|endoftext|>"],
    "model": {
        "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 384, "max_position_embeddings": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
    "sequence_length": 256,
    "batch_size": 8,
    "steps": 600,
    "lr": 5e-3,
    "min_lr": 5e-4,
    "warmup_steps": 50,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "eval_tokens": 16384,
}
EOT = "<|endoftext|>"
# Code-comment turns, so the chat endpoints have a template; tiny-lm is a completion model at heart.
CHAT_TEMPLATE = (
    "{% for message in messages %}# {{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}# assistant:{% endif %}"
)
SAMPLE_CHARS = 48_000  # of held-out and of training text, shipped for evaluation and calibration
HELDOUT_SAMPLE, TRAIN_SAMPLE, RECIPE_FILE = "heldout.txt", "train.txt", "recipe.json"
DIGESTED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json", HELDOUT_SAMPLE, TRAIN_SAMPLE)


def corpus_files() -> tuple[list[Path], list[Path]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"), key=lambda p: p.name)
    return [f for i, f in enumerate(files) if i % 10], [f for i, f in enumerate(files) if i % 10 == 0]


def read_texts(files: list[Path]) -> list[str]:
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=RECIPE["vocab_size"], special_tokens=RECIPE["special_tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def tokens_of(tokenizer, texts: list[str]) -> torch.Tensor:
    eot = tokenizer.token_to_id(EOT)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids += encoding.ids + [eot]
    return torch.tensor(ids, dtype=torch.long)


def unigram_perplexity(train: torch.Tensor, heldout: torch.Tensor, vocab: int) -> float:
    """A unigram model of the training tokens (add-one smoothed) on the held-out ones."""
    counts = torch.bincount(train, minlength=vocab).double() + 1
    log_probs = (counts / counts.sum()).log()
    return math.exp(-log_probs[heldout].mean().item())


def hf_config(tokenizer) -> dict:
    eot = tokenizer.token_to_id(EOT)
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": tokenizer.get_vocab_size(),
        "hidden_act": "silu", "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float16", **RECIPE["model"],
    }


def lr_at(step: int) -> float:
    if step < RECIPE["warmup_steps"]:
        return RECIPE["lr"] * (step + 1) / RECIPE["warmup_steps"]
    progress = (step - RECIPE["warmup_steps"]) / max(1, RECIPE["steps"] - RECIPE["warmup_steps"])
    return RECIPE["min_lr"] + 0.5 * (RECIPE["lr"] - RECIPE["min_lr"]) * (1 + math.cos(math.pi * progress))


def train(out: Path, log=print) -> dict:
    from safetensors.torch import save_file

    from slimserve.models.decoder.config import DecoderConfig
    from slimserve.models.decoder.model import DecoderLM, scaled_init_
    from slimserve.models.decoder.perplexity import perplexity

    torch.manual_seed(RECIPE["seed"])
    torch.set_num_threads(RECIPE["threads"])
    train_files, heldout_files = corpus_files()
    train_texts, heldout_texts = read_texts(train_files), read_texts(heldout_files)
    tokenizer = train_tokenizer(train_texts)
    train_ids, heldout_ids = tokens_of(tokenizer, train_texts), tokens_of(tokenizer, heldout_texts)
    log(f"corpus: {len(train_files)} training files ({len(train_ids)} tokens), {len(heldout_files)} held out ({len(heldout_ids)} tokens)")

    config = hf_config(tokenizer)
    model = scaled_init_(DecoderLM(DecoderConfig.from_hf(config)), RECIPE["seed"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": RECIPE["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}], lr=RECIPE["lr"], betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    length, batch = RECIPE["sequence_length"], RECIPE["batch_size"]
    started = time.monotonic()
    model.train()
    for step in range(RECIPE["steps"]):
        starts = torch.randint(0, len(train_ids) - length - 1, (batch,), generator=generator)
        window = torch.stack([train_ids[s:s + length + 1] for s in starts.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["grad_clip"])
        optimizer.step()
        if step % 50 == 0 or step == RECIPE["steps"] - 1:
            elapsed = time.monotonic() - started
            log(f"step {step} loss {loss.item():.3f} lr {lr_at(step):.2e} {batch * length * (step + 1) / elapsed:.0f} tokens/s")

    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {"bos_token": EOT, "eos_token": EOT, "model_max_length": config["max_position_embeddings"], "chat_template": CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}, indent=2) + "\n")
    (out / HELDOUT_SAMPLE).write_text("\n".join(heldout_texts)[:SAMPLE_CHARS], encoding="utf-8")
    (out / TRAIN_SAMPLE).write_text("\n".join(train_texts)[:SAMPLE_CHARS], encoding="utf-8")

    from slimserve.models.decoder.loading import load_decoder

    saved = load_decoder(out).model  # the fp16 weights as they ship
    evaluated = heldout_ids[: RECIPE["eval_tokens"]]
    result = {
        **RECIPE,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "train_files": [f.name for f in train_files],
        "heldout_files": [f.name for f in heldout_files],
        "train_tokens": len(train_ids),
        "training_seconds": round(time.monotonic() - started),
        "parameters": sum(p.numel() for p in saved.parameters()),
        "heldout_perplexity": round(perplexity(saved, evaluated, window=length), 3),
        "unigram_perplexity": round(unigram_perplexity(train_ids, evaluated, tokenizer.get_vocab_size()), 3),
        "unigram_counts": torch.bincount(train_ids, minlength=tokenizer.get_vocab_size()).tolist(),
        "sha256": {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in DIGESTED},
    }
    (out / RECIPE_FILE).write_text(json.dumps(result) + "\n")
    log(f"held-out perplexity {result['heldout_perplexity']} vs unigram {result['unigram_perplexity']}")
    return result


def main(argv: list[str] | None = None) -> None:
    from slimserve.models.decoder.directory import tiny_lm_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=tiny_lm_dir(), help="where to write the model (default: the package's tiny_lm)")
    parser.add_argument("--steps", type=int, default=RECIPE["steps"], help="training steps (the committed model: the recipe's)")
    args = parser.parse_args(argv)
    RECIPE["steps"] = args.steps
    train(args.out, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
