"""`DecoderLM`: SlimServe's own torch decoder for gpt2, llama, mistral and qwen2, with a preallocated KV cache.

Plain nn.Linear / nn.Embedding modules named like Llama's in `transformers` (`layers.N.self_attn.q_proj`,
`layers.N.mlp.down_proj`, `lm_head`; gpt2's fused, transposed Conv1D weights are split and transposed into
the same names at load), so quantizers and pruners replace or shrink ordinary modules. Attention is
`scaled_dot_product_attention` with grouped-query heads (`enable_gqa`) and, for mistral, the sliding window
as a mask; a decode step's single-token queries attend over the cache with two batched matrix products.

Entry points: `forward` (a whole batch of sequences, no cache: training and perplexity) and `step`, the
continuous-batching step: one token for each running sequence in any slot at any position, and chunks of
newcomers' prompts, in one forward (their tokens share every Linear; attention is per part). `prefill` (one
prompt into its slot) and `decode` (the running sequences alone) are its two halves. Decoding attends over a
view of the cache's first slots, never a copy of them: a caller that keeps its running sequences in slots
0..B-1 (`KVCache.move`) reads only those.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimserve.models.decoder.config import DecoderConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # normalized in fp32 whatever the model's dtype, then scaled in its dtype, as transformers does
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def _activation(name: str):
    if name == "silu":
        return F.silu
    if name == "gelu":
        return F.gelu
    return lambda x: F.gelu(x, approximate="tanh")  # gelu_new, gelu_pytorch_tanh


class MLP(nn.Module):
    """Gated (llama: down(act(gate(x)) * up(x))) or plain (gpt2: down(act(up(x))))."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = None if config.learned_positions else nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)
        self.act = _activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            return self.down_proj(self.act(self.up_proj(x)))
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """RoPE: x * cos + rotate_half(x) * sin, with rotate_half's negation folded into `signed_sin`."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


class Attention(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=config.o_bias)

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        """For x [..., hidden]: q [..., H, D], k and v [..., KV, D], RoPE applied when given (cos and signed
        sin [..., 1, D]); q and k rotated together."""
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        qk = torch.cat((self.q_proj(x), self.k_proj(x)), dim=-1).unflatten(-1, (heads + kv_heads, dim))
        v = self.v_proj(x).unflatten(-1, (kv_heads, dim))
        if rope is not None:
            qk = _rotate(qk, *rope)
        return qk[..., :heads, :], qk[..., heads:, :], v

    def output(self, heads: torch.Tensor) -> torch.Tensor:
        """The heads' outputs [..., H, D] projected: [..., hidden]."""
        return self.o_proj(heads.flatten(-2))

    def heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Each head's output [B, H, T, D] for q [B, H, T, D], k and v [B, KV, T', D]."""
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and q.shape[2] > 1,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        norm = (lambda: nn.LayerNorm(config.hidden_size, eps=config.norm_eps)) if config.learned_positions else (lambda: RMSNorm(config.hidden_size, config.norm_eps))
        self.input_layernorm = norm()
        self.self_attn = Attention(config)
        self.post_attention_layernorm = norm()
        self.mlp = MLP(config)


@dataclass(frozen=True)
class PromptChunk:
    """Prompt tokens [T] of the sequence in cache slot `slot`, at positions start..start+T-1: those before
    `start` are in the cache already (a prompt prefilled over several steps)."""

    tokens: torch.Tensor
    slot: int
    start: int = 0

    @property
    def end(self) -> int:
        return self.start + self.tokens.shape[0]


class KVCache:
    """Preallocated keys and values, [max_slots, kv_heads, max_len, head_dim] per layer.

    A sequence owns one slot from its prefill to its end (or until `move`d); `acquire` hands out the lowest
    free slot and `release` takes it back (a released slot's stale keys are never read: attention masks
    everything past a position). A decode step reads the slots up to the highest one it runs, so a caller
    keeps them compact by moving its highest sequence into a slot freed below it: one copy per exit, none
    per step.
    """

    def __init__(self, config: DecoderConfig, max_slots: int, max_len: int, dtype: torch.dtype, device: torch.device):
        if max_slots < 1 or max_len < 1:
            raise ValueError(f"KVCache: max_slots and max_len must be >= 1, got {max_slots} and {max_len}")
        shape = (max_slots, config.num_kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.max_slots, self.max_len = max_slots, max_len
        self._free = list(range(max_slots - 1, -1, -1))

    def bytes_per_token(self) -> int:
        return sum(2 * k[0, :, 0].numel() * k.element_size() for k in self.keys)

    @property
    def capacity_tokens(self) -> int:
        return self.max_slots * self.max_len

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def acquire(self) -> int | None:
        """The lowest free slot, or None when every slot is taken."""
        if not self._free:
            return None
        slot = min(self._free)
        self._free.remove(slot)
        return slot

    def release(self, slot: int) -> None:
        if not 0 <= slot < self.max_slots or slot in self._free:
            raise ValueError(f"KVCache.release: slot {slot} is not in use")
        self._free.append(slot)

    def move(self, source: int, target: int, length: int) -> None:
        """The first `length` tokens of the sequence in slot `source` to the free slot `target`; `source` is
        free afterwards."""
        if target not in self._free or source in self._free or not 0 <= source < self.max_slots:
            raise ValueError(f"KVCache.move: slot {source} must be in use and slot {target} free")
        for tensors in (self.keys, self.values):
            for layer in tensors:
                layer[target, :, :length] = layer[source, :, :length]
        self._free.remove(target)
        self._free.append(source)


class DecoderLM(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size) if config.learned_positions else None
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps) if config.learned_positions else RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.cache: KVCache | None = None

    # -- pieces shared by the three entry points -------------------------------------------------------

    def _embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            hidden = hidden + self.embed_positions(positions)
        return hidden

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos and sin for positions [...] as [..., 1, D], for queries and keys [..., heads, D]; sin's first
        half negated (see `_rotate`). None for learned positions."""
        if self.embed_positions is not None:
            return None
        # computed here in fp32, not kept as a buffer: casting the model to fp16 would round a buffer too
        dim = self.config.head_dim
        inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
        freqs = positions.float()[..., None, None] * inv_freq
        sin = freqs.sin()
        return torch.cat((freqs, freqs), dim=-1).cos().to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)

    def _window_mask(self, query_positions: torch.Tensor, key_length: int) -> torch.Tensor:
        """[B, 1, Tq, key_length]: a query sees keys at or before its position (and within the window)."""
        keys = torch.arange(key_length, device=query_positions.device)
        distance = query_positions[..., None] - keys
        allowed = distance >= 0
        if self.config.sliding_window is not None:
            allowed &= distance < self.config.sliding_window
        return allowed[:, None]

    def _block(self, layer: DecoderLayer, hidden: torch.Tensor, attention) -> torch.Tensor:
        hidden = hidden + attention(layer.self_attn, layer.input_layernorm(hidden))
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))

    # -- entry points ---------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for token ids [B, T], each sequence from position 0, no cache."""
        batch, length = input_ids.shape
        self._check_length(length)
        positions = torch.arange(length, device=input_ids.device).expand(batch, length)
        hidden = self._embed(input_ids, positions)
        rope = self._rope(positions[:1], hidden.dtype)
        windowed = self.config.sliding_window is not None and length > self.config.sliding_window
        mask = self._window_mask(positions[:1], length) if windowed else None

        def attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
            q, k, v = (t.transpose(1, 2) for t in attn.project(x, rope))  # [B, heads, T, D]
            return attn.output(attn.heads(q, k, v, mask).transpose(1, 2))

        for layer in self.layers:
            hidden = self._block(layer, hidden, attention)
        return self._logits(hidden)

    def new_cache(self, max_slots: int, max_len: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> KVCache:
        """A cache of `max_slots` sequences of up to `max_len` tokens, attached to the model for prefill/decode."""
        self._check_length(max_len)
        weight = self.norm.weight  # in the activations' dtype and on their device, even when the embedding table is quantized
        self.cache = KVCache(self.config, max_slots, max_len, dtype or weight.dtype, torch.device(device or weight.device))
        return self.cache

    def prefill(self, input_ids: torch.Tensor, slot: int, cache: KVCache | None = None) -> torch.Tensor:
        """Run one sequence [T] into cache slot `slot` from position 0; the logits [V] after its last token."""
        none = input_ids.new_empty(0)
        return self.step(none, none, none, [PromptChunk(input_ids, slot)], cache)[0]

    def decode(self, tokens: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """One step: token `tokens[i]` at position `positions[i]` of the sequence in `slots[i]`; logits [B, V]."""
        return self.step(tokens, slots, positions, (), cache)

    def step(self, tokens: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
             chunks: Sequence[PromptChunk] = (), cache: KVCache | None = None) -> torch.Tensor:
        """One forward: token `tokens[i]` at position `positions[i]` of the sequence in `slots[i]` (decoding),
        and each prompt chunk into its slot; logits [B + len(chunks), V]: the decoded tokens', then each
        chunk's last token's.

        All the step's tokens go through every Linear as one batch [N, hidden]. Decoding attends over the
        view `cache[:span, :, :key_length]` (span: the highest slot + 1) with a mask per slot; slots 0..B-1 in
        order are the case without waste (a slot not stepped gets a dummy query). A chunk from position 0
        attends over its own keys, a later one over its slot's cached keys too."""
        cache = self._cache(cache)
        for chunk in chunks:
            if chunk.tokens.shape[0] < 1 or chunk.start < 0 or chunk.end > cache.max_len:
                raise ValueError(f"prefill: {chunk.tokens.shape[0]} tokens from position {chunk.start} do not fit a cache "
                                 f"of {cache.max_len} per sequence")
        device = self.norm.weight.device
        chunk_positions = [torch.arange(chunk.start, chunk.end, device=device) for chunk in chunks]
        all_positions = torch.cat([positions, *chunk_positions])
        hidden = self._embed(torch.cat([tokens, *(chunk.tokens for chunk in chunks)]), all_positions)
        rope = self._rope(all_positions, hidden.dtype)
        decoding = _Decoding(self, cache, slots, positions, hidden.dtype) if tokens.shape[0] else None
        prefills = [_Prefill(self, cache, chunk, at) for chunk, at in zip(chunks, chunk_positions)]
        for index, layer in enumerate(self.layers):

            def attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
                q, k, v = attn.project(x, rope)  # [N, heads, D]: a token per row
                parts, offset = [], tokens.shape[0]
                if decoding is not None:
                    parts.append(decoding.attend(attn, index, q[:offset], k[:offset], v[:offset]))
                for prefill in prefills:
                    rows = slice(offset, offset + prefill.length)
                    parts.append(prefill.attend(attn, index, q[rows], k[rows], v[rows]))
                    offset += prefill.length
                return attn.output(torch.cat(parts) if len(parts) > 1 else parts[0])

            hidden = self._block(layer, hidden, attention)
        if chunks:  # the decoded tokens' rows and each chunk's last
            ends = itertools.accumulate((chunk.tokens.shape[0] for chunk in chunks), initial=tokens.shape[0])
            last = [*range(tokens.shape[0]), *(end - 1 for end in itertools.islice(ends, 1, None))]
            hidden = hidden[torch.tensor(last, device=device)]
        return self._logits(hidden)

    def _cache(self, cache: KVCache | None) -> KVCache:
        cache = cache or self.cache
        if cache is None:
            raise RuntimeError("DecoderLM: call new_cache() before prefill() or decode()")
        return cache

    def _check_length(self, length: int) -> None:
        if length > self.config.max_position_embeddings:
            raise ValueError(f"{length} tokens exceed the model's context of {self.config.max_position_embeddings} (max_position_embeddings)")


class _Decoding:
    """A step's decoding part, made once for every layer: the additive mask, and where each new key and value
    goes in a layer's cache seen as rows of head_dim (index_copy_, not an index_put).

    A query is one token, so attention is two batched matrix products over the cache view, a (query heads of
    a key/value head) x head_dim by head_dim x keys product per sequence and key/value head, with the
    softmax between: a few operations where SDPA's CPU kernel, made for long queries, costs more per call
    than this work."""

    def __init__(self, model: DecoderLM, cache: KVCache, slots: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
        self.cache = cache
        self.key_length = int(positions.max()) + 1
        if self.key_length > cache.max_len:
            raise ValueError(f"decode: position {self.key_length - 1} is past the cache's {cache.max_len} tokens per sequence")
        self.span = int(slots.max()) + 1
        in_order = self.span == len(slots) and torch.equal(slots.cpu(), torch.arange(self.span))
        self.rows = None if in_order else slots
        slot_positions = positions
        if self.rows is not None:  # a slot without a query attends to its first key only, so no row is all masked
            slot_positions = positions.new_zeros(self.span)
            slot_positions[self.rows] = positions
        allowed = model._window_mask(slot_positions[:, None], self.key_length)  # [span, 1, 1, keys]
        kv_heads = cache.keys[0].shape[1]
        # one row per (slot, key/value head), as the products below batch them
        allowed = allowed.expand(self.span, kv_heads, 1, self.key_length).reshape(self.span * kv_heads, 1, self.key_length)
        self.mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
        heads = torch.arange(kv_heads, device=slots.device)
        self.cache_rows = ((slots[:, None] * kv_heads + heads) * cache.max_len + positions[:, None]).flatten()

    def attend(self, attn: Attention, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, H, D], k and v [B, KV, D]; the heads' outputs [B, H, D]."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        _, kv_heads, _, head_dim = keys.shape
        keys.view(-1, head_dim).index_copy_(0, self.cache_rows, k.reshape(-1, head_dim))
        values.view(-1, head_dim).index_copy_(0, self.cache_rows, v.reshape(-1, head_dim))
        span, length = self.span, self.key_length
        if self.rows is not None:  # spread the queries over the slots (queries are small, keys and values are not)
            spread = q.new_zeros(span, *q.shape[1:])
            spread[self.rows] = q
            q = spread
        # views: a slot's key/value heads are consecutive in the cache, so [span, KV] folds into one batch dim
        keys, values = keys[:span, :, :length].flatten(0, 1), values[:span, :, :length].flatten(0, 1)
        grouped = q.reshape(span * kv_heads, -1, head_dim)  # a key/value head's query heads are consecutive
        scores = torch.baddbmm(self.mask, grouped, keys.transpose(1, 2), alpha=head_dim ** -0.5)
        weights = scores.softmax(-1) if scores.dtype == torch.float32 else scores.softmax(-1, dtype=torch.float32).to(scores.dtype)
        out = torch.bmm(weights, values).view(span, -1, head_dim)
        return out if self.rows is None else out[self.rows]


class _Prefill:
    """A step's prompt chunk: its keys and values go to its slot; from position 0 it attends over them
    alone (causal), later over the slot's cached keys up to its end."""

    def __init__(self, model: DecoderLM, cache: KVCache, chunk: PromptChunk, positions: torch.Tensor):
        self.cache, self.chunk, self.length = cache, chunk, chunk.tokens.shape[0]
        window = model.config.sliding_window
        windowed = window is not None and chunk.end > window
        self.mask = model._window_mask(positions[None], chunk.end) if chunk.start or windowed else None

    def attend(self, attn: Attention, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v [T, heads, D] (a token per row); the heads' outputs in the same layout."""
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # [1, heads, T, D]
        slot, start, end = self.chunk.slot, self.chunk.start, self.chunk.end
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys[slot, :, start:end] = k[0]
        values[slot, :, start:end] = v[0]
        if start:
            k, v = keys[slot:slot + 1, :, :end], values[slot:slot + 1, :, :end]
        return attn.heads(q, k, v, self.mask)[0].transpose(0, 1)


def scaled_init_(model: DecoderLM, seed: int) -> DecoderLM:
    """Initialise for training: normal(0, 0.02), residual projections scaled down by depth (GPT-2's scheme)."""
    generator = torch.Generator().manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * model.config.num_layers)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() < 2:
                continue
            std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
    return model


def config_of(model: DecoderLM) -> DecoderConfig:
    """The config of a (pruned) model, read from its layers; the model's own record is updated to match."""
    from dataclasses import replace

    layers = list(model.layers)

    def one_value(name: str, values: list[int]) -> int:
        if len(set(values)) > 1:
            raise ValueError(f"{name} differs between layers ({values}); a decoder's layers share one value")
        return values[0] if values else getattr(model.config, name)

    model.config = replace(
        model.config,
        num_layers=len(layers),
        num_heads=one_value("num_heads", [layer.self_attn.num_heads for layer in layers]),
        num_kv_heads=one_value("num_kv_heads", [layer.self_attn.num_kv_heads for layer in layers]),
        intermediate_size=one_value("intermediate_size", [getattr(layer.mlp.down_proj, "in_features", model.config.intermediate_size) for layer in layers]),
    )
    return model.config
