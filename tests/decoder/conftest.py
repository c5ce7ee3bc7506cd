"""Small randomly initialised Hugging Face decoders of each supported type, saved with `save_pretrained`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

VOCAB = 96
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _hf_config(kind: str):
    import transformers

    common = dict(vocab_size=VOCAB, initializer_range=0.3, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    rope = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, max_position_embeddings=64, **common)
    return {
        "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common),
        "llama-gqa": lambda: transformers.LlamaConfig(num_key_value_heads=2, **rope),
        "llama-tied": lambda: transformers.LlamaConfig(num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, **rope),
        "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=2, **rope),
        "mistral": lambda: transformers.MistralConfig(num_key_value_heads=2, sliding_window=4, **rope),
    }[kind]()


KINDS = ("gpt2", "llama-gqa", "llama-tied", "qwen2", "mistral")


def save_word_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over VOCAB tokens (w0 .. wN) with <pad>, <s>, </s>, and its config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer.add_special_tokens(["<pad>", "<s>", "</s>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": CHAT_TEMPLATE}))


@pytest.fixture(scope="session")
def hf_decoders(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """kind -> (directory, the transformers model in eval mode) for every kind in KINDS."""
    import torch
    import transformers

    made = {}
    for index, kind in enumerate(KINDS):
        torch.manual_seed(index)
        model = transformers.AutoModelForCausalLM.from_config(_hf_config(kind), attn_implementation="eager").eval()
        directory = tmp_path_factory.mktemp(kind)
        model.save_pretrained(directory)
        save_word_tokenizer(directory)
        made[kind] = (directory, model)
    return made


from tests.storage.conftest import s3_env, s3_server  # noqa: E402,F401  (MinIO for the s3:// loading test)
