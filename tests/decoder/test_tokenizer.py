"""The decoder tokenizer: streaming detokenization that never splits a UTF-8 character, chat templates in
the sandbox, and the eos ids a generation stops at."""

from __future__ import annotations

import pytest

from slimserve.models.decoder import ChatTemplateError, Tokenizer, load_decoder


def byte_level_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer as Backend, decoders, models, pre_tokenizers, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(["plain ascii words only"] * 4, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return Tokenizer(backend)


def test_incremental_decoding_holds_back_partial_characters():
    tokenizer = byte_level_tokenizer()
    text = "ascii 日本 ok 🙂!"
    ids = tokenizer.encode(text)
    stream = tokenizer.incremental()
    pieces = [stream.step(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert "" in pieces  # some multi-byte characters span tokens: their first bytes produce no text yet


def test_chat_template_renders_and_stays_in_the_sandbox(hf_decoders):
    loaded = load_decoder(hf_decoders["llama-gqa"][0])
    prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "w5 w6"}])
    assert prompt == "<s>user: w5 w6</s>\nassistant:"
    assert loaded.eos_token_ids == [2]  # config, generation_config and the tokenizer agree on </s>
    hostile = Tokenizer(loaded.tokenizer.backend, chat_template="{{ messages.append(1) }}{{ ''.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        hostile.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="no chat template"):
        Tokenizer(loaded.tokenizer.backend).apply_chat_template([])
    refusing = Tokenizer(loaded.tokenizer.backend, chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        refusing.apply_chat_template([])
