"""A tiny random Llama decoder directory for the serving tests, in Hugging Face's layout (config.json,
model.safetensors, tokenizer.json): a long context (so a sequence can hold its slot for seconds) and no
end-of-sequence token (so only max_tokens, a stop sequence or the client ends it)."""

from __future__ import annotations

import json
from pathlib import Path

VOCAB = 64
CONTEXT = 4096
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def save_random_llama(directory: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from slimserve.models.decoder import DecoderConfig, DecoderLM

    hf_config = {
        "model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
        "max_position_embeddings": CONTEXT, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
    }
    torch.manual_seed(seed)
    model = DecoderLM(DecoderConfig.from_hf(hf_config))  # its parameter names are Llama's, less the "model." prefix
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config))
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, directory / "model.safetensors")
    vocab = {"<pad>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}  # words w1..w63, joined by spaces
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return directory
