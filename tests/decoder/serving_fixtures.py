"""A tiny random Llama decoder directory for the serving tests: a long context (so a sequence can hold its
slot for seconds) and no end-of-sequence token (so only max_tokens, a stop sequence or the client ends it)."""

from __future__ import annotations

import json
from pathlib import Path

VOCAB = 64
CONTEXT = 4096
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def save_random_llama(directory: Path, seed: int = 0) -> Path:
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=CONTEXT, initializer_range=0.3,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    vocab = {"<pad>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}  # words w1..w63, joined by spaces
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return directory
