"""Decoder language models (gpt2, llama, mistral, qwen2): SlimServe's own torch implementation with a KV
cache, loaded from Hugging Face directories, decoder artifacts and the built-in `builtin://tiny-lm`; see
docs/decoders.md."""

from slimserve.models.decoder.config import MODEL_TYPES, DecoderConfig
from slimserve.models.decoder.directory import TINY_LM, TINY_LM_URI, LoadedDecoder, builtin_text, tiny_lm_dir
from slimserve.models.decoder.loading import load_decoder
from slimserve.models.decoder.model import DecoderLM, KVCache
from slimserve.models.decoder.perplexity import perplexity
from slimserve.models.decoder.tokenizer import ChatTemplateError, IncrementalDecoder, Tokenizer

__all__ = [
    "MODEL_TYPES", "TINY_LM", "TINY_LM_URI", "ChatTemplateError", "DecoderConfig", "DecoderLM", "IncrementalDecoder",
    "KVCache", "LoadedDecoder", "Tokenizer", "builtin_text", "load_decoder", "perplexity", "tiny_lm_dir",
]
