"""The continuous-batching engine: one worker thread runs the model, one step at a time.

Each step: free the slots of finished or abandoned sequences, then one forward of the model for one token of
every decoding sequence and chunks of the prompts still to prefill, newcomers taking free KV cache slots (a
sequence's first token comes from its prompt's last chunk). Decoding goes first: the prompt tokens a step
takes are bounded by what is left of `step_tokens` (chunked prefill), so a burst of long prompts delays the
running sequences' next tokens by one bounded step, not by its whole prefill. Sequences thus join and leave
the running batch between steps; none waits for a whole batch to finish.

Running sequences keep the cache's slots 0..B-1 (sorted by slot, the decoding ones are the step's decode
batch in order, the prompts still prefilling above them), so a step attends over a view of the cache, not a
copy: when one ends, the sequence in the highest slot moves into its slot (one copy per exit). Only when that
one was still prefilling does the decode batch have a gap until it decodes too (a dummy query fills it).

The KV cache is allocated once (slots x max_len tokens, sized from a byte budget), and a request is
admitted only if its prompt plus `max_tokens` fit one slot, so memory never grows with the load: the
rest wait in a bounded queue (full: `Overloaded`, HTTP 429) for at most `queue_timeout_s`
(`Unavailable`, HTTP 503), both with a Retry-After hint.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from slimserve.models.decoder.model import PromptChunk
from slimserve.serving.errors import InferenceFailed, Overloaded, ServerNotReady, Unavailable
from slimserve.serving.generation.params import Completion, SamplingParams
from slimserve.serving.generation.sampling import new_generator, next_tokens
from slimserve.serving.generation.text import TextStream
from slimserve.serving.metrics import GenerationMetrics
from slimserve.serving.tracing import NO_TRACE, RequestTrace

log = logging.getLogger(__name__)

STEP_TOKENS = 512  # tokens a step runs at most, decoding first: what a burst of prompts may add to one step


@dataclass(frozen=True)
class CachePlan:
    """How the KV cache is cut: `slots` sequences of at most `max_len` tokens (prompt + output) each."""

    slots: int
    max_len: int
    bytes_per_token: int

    @property
    def bytes(self) -> int:
        return self.slots * self.max_len * self.bytes_per_token


def plan_cache(bytes_per_token: int, context_length: int, max_sequences: int, budget_bytes: int = 0) -> CachePlan:
    """`max_sequences` slots of the model's whole context, or fewer when `budget_bytes` (0: no budget)
    cannot hold that many; a budget below one full-context slot shortens the context instead."""
    slots = max_sequences
    max_len = context_length
    if budget_bytes:
        tokens = budget_bytes // bytes_per_token
        if tokens < context_length:
            slots, max_len = 1, tokens
        else:
            slots = min(max_sequences, tokens // context_length)
    if max_len < 2:
        raise ValueError(f"a KV cache budget of {budget_bytes} bytes holds no sequence ({bytes_per_token} bytes a token)")
    return CachePlan(slots, max_len, bytes_per_token)


@dataclass
class Chunk:
    """What a request's stream gets after a step: new text, and once it ended, why."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None  # "stop" or "length" on the last chunk
    error: BaseException | None = None


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    params: SamplingParams
    text: TextStream
    loop: asyncio.AbstractEventLoop  # the request's, where its chunks are put in `mailbox`
    mailbox: "Mailbox"
    arrived: float = field(default_factory=time.perf_counter)
    slot: int = -1
    prefilled: int = 0  # prompt tokens in the cache so far
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    last_token_at: float = 0.0
    cancelled: bool = False
    trace: RequestTrace = NO_TRACE  # its wait for a slot is the trace's queue_wait

    @property
    def decoding(self) -> bool:
        return self.prefilled == len(self.prompt)

    @property
    def position(self) -> int:
        """Where the last generated token goes in the cache (it has not been fed to the model yet)."""
        return len(self.prompt) + len(self.generated) - 1


class Mailbox:
    """Where the engine leaves a sequence's chunks, on the request's event loop: the reader takes all that
    came since it last looked, so one that is slower than the steps gets several at once (one write to its
    client), and a step wakes each reader once, not once per chunk."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: list[Chunk] = []
        self._waiter: asyncio.Future | None = None

    def put(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> list[Chunk]:
        """The chunks that came so far, in order (at least one: waits for it)."""
        while not self._chunks:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks, self._chunks = self._chunks, []
        return chunks


class Stream:
    """The chunks of one generation, in order; closing it early (the client left) cancels the sequence. What it
    handed out so far (`sent`, `finish_reason`, `error`) is what the request's payload log and trace report."""

    def __init__(self, engine: "GenerationEngine", sequence: Sequence) -> None:
        self._engine = engine
        self.sequence = sequence
        self.sent: list[str] = []  # the text of the chunks handed out
        self.finish_reason: str | None = None  # once the last chunk was handed out
        self.error: BaseException | None = None  # the generation's failure, once raised

    @property
    def prompt_tokens(self) -> int:
        return len(self.sequence.prompt)

    @property
    def completion_tokens(self) -> int:
        return len(self.sequence.generated)

    async def batches(self) -> AsyncIterator[list[Chunk]]:
        """The chunks in order, those that came together in one list; the generation's failure is raised
        after the chunks that came before it."""
        try:
            while True:
                chunks = await self.sequence.mailbox.take()
                last = chunks[-1]  # a failure or a finish reason is a sequence's last chunk: nothing follows it
                if last.error is not None:
                    if len(chunks) > 1:
                        yield self._handed_out(chunks[:-1])
                    self.error = last.error
                    raise last.error
                yield self._handed_out(chunks)
                if last.finish_reason is not None:
                    return
        finally:
            self._engine.cancel(self.sequence)

    def _handed_out(self, chunks: list[Chunk]) -> list[Chunk]:
        self.sent.extend(chunk.text for chunk in chunks)
        self.finish_reason = chunks[-1].finish_reason
        return chunks

    async def chunks(self) -> AsyncIterator[Chunk]:
        batches = self.batches()
        try:
            async for batch in batches:
                for chunk in batch:
                    yield chunk
        finally:
            await batches.aclose()

    async def complete(self) -> Completion:
        parts, chunk = [], None
        async for chunk in self.chunks():
            parts.append(chunk.text)
        assert chunk is not None
        return Completion("".join(parts), chunk.finish_reason or "stop", self.prompt_tokens, chunk.completion_tokens)


class GenerationEngine:
    """Runs `model` (a DecoderLM: prefill, decode, new_cache) on its own thread; `submit` from the event loop.
    `tokenizer` (models.decoder.Tokenizer) turns each sequence's tokens into text as they come."""

    def __init__(
        self, model, tokenizer, eos_token_ids: list[int], plan: CachePlan,
        metrics: GenerationMetrics, max_waiting: int, queue_timeout_s: float, device: torch.device,
        step_tokens: int = STEP_TOKENS,
    ) -> None:
        self.model = model
        self.plan = plan
        self.metrics = metrics
        self.max_waiting = max_waiting
        self.queue_timeout_s = queue_timeout_s
        self.step_tokens = max(step_tokens, 2 * plan.slots)  # a full batch's decoding leaves room for prompts
        self._tokenizer = tokenizer
        self._eos = frozenset(eos_token_ids)
        self._device = device
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._outbox: list[tuple[Sequence, Chunk]] = []  # chunks of the step under way (worker thread only)
        self.cache = model.new_cache(plan.slots, plan.max_len)  # allocated once: the memory bound
        self._slots = torch.arange(plan.slots, device=device)  # the decode batch's slots, in order
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="slimserve-generation", daemon=True)
        metrics.kv_cache_capacity.set(plan.slots * plan.max_len)

    # --- the event loop's side ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def submit(self, prompt: list[int], params: SamplingParams, trace: RequestTrace = NO_TRACE) -> Stream:
        """Queue a checked request (prompt + max_tokens within `plan.max_len`); raises Overloaded when the
        queue is full and ServerNotReady once stopping."""
        loop = asyncio.get_running_loop()
        sequence = Sequence(
            prompt, params, TextStream(self._tokenizer.incremental(prompt).step, params.stop), loop, Mailbox(loop),
            trace=trace,
        )
        with self._wake:
            if self._stopping:
                raise ServerNotReady("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise Overloaded(
                    f"{len(self._waiting)} requests are already waiting for a free sequence slot; retry later",
                    retry_after_s=self._retry_after(),
                )
            self._waiting.append(sequence)
            trace.enqueued()
            self.metrics.waiting_sequences.set(len(self._waiting))
            self._wake.notify()
        return Stream(self, sequence)

    def cancel(self, sequence: Sequence) -> None:
        """Forget `sequence` (its client left): its slot is free before the next step."""
        if not sequence.cancelled:
            sequence.cancelled = True
            with self._wake:
                self._wake.notify()

    def _retry_after(self) -> int:
        return max(1, round(self.queue_timeout_s / 4))

    # --- the worker thread --------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stopping and not self._waiting and not self._running:
                        self._wake.wait()
                    if self._stopping:
                        break
                try:
                    self._step()
                except Exception as error:  # noqa: BLE001 - a model failure ends the sequences it touched
                    log.exception("generation step failed")
                    failed = InferenceFailed(f"generation failed: {type(error).__name__}: {error}")
                    for sequence in [*self._running]:
                        self._finish(sequence, None, failed)
                    self._publish_gauges()
                self._flush()
        for sequence in [*self._running, *self._waiting]:
            self._send(sequence, Chunk("", len(sequence.generated), error=ServerNotReady("the server is shutting down")))
        self._flush()

    def _step(self) -> None:
        self._drop_cancelled()
        decoding = sorted((s for s in self._running if s.decoding), key=lambda s: s.slot)
        chunks = self._prompt_chunks(self.step_tokens - len(decoding))
        if decoding or chunks:
            # one small tensor per step for the tokens and positions; slots 0..B-1 are a cached range
            tokens, positions = torch.tensor([[s.generated[-1] for s in decoding], [s.position for s in decoding]],
                                             dtype=torch.long, device=self._device)
            # sorted and distinct, they are 0..B-1 unless a sequence still prefilling holds a slot below
            in_order = not decoding or decoding[-1].slot == len(decoding) - 1
            slots = self._slots[:len(decoding)] if in_order else torch.tensor([s.slot for s in decoding], device=self._device)
            logits = self.model.step(tokens, slots, positions, [chunk for _, chunk in chunks])
            for sequence, chunk in chunks:
                sequence.prefilled = chunk.end
            self.metrics.prompt_tokens.inc(sum(chunk.tokens.shape[0] for _, chunk in chunks))
            # the rows of the decoding sequences, then of the prompts this step finished (their first token)
            rows = [*range(len(decoding)), *(row for row, (s, _) in enumerate(chunks, len(decoding)) if s.decoding)]
            stepped = [*decoding, *(s for s, _ in chunks if s.decoding)]
            self._advance(stepped, logits if len(rows) == logits.shape[0] else logits[rows])
        self._publish_gauges()

    def _prompt_chunks(self, budget: int) -> list[tuple[Sequence, PromptChunk]]:
        """The prompt tokens this step prefills, at most `budget`: those of prompts begun earlier first, then
        of newcomers given a slot now, in arrival order; a prompt longer than what is left goes in chunks."""
        chunks = []
        prefilling = [s for s in self._running if not s.decoding]  # in arrival order: `_admit` appends
        for sequence in prefilling + self._admit(budget - sum(len(s.prompt) - s.prefilled for s in prefilling)):
            if budget <= 0:
                break
            end = min(len(sequence.prompt), sequence.prefilled + budget)
            tokens = torch.tensor(sequence.prompt[sequence.prefilled:end], device=self._device)
            chunks.append((sequence, PromptChunk(tokens, sequence.slot, sequence.prefilled)))
            budget -= end - sequence.prefilled
        return chunks

    def _drop_cancelled(self) -> None:
        for sequence in [s for s in self._running if s.cancelled]:
            self._finish(sequence, None)

    def _admit(self, budget: int) -> list[Sequence]:
        """Waiting sequences that get a slot now, in arrival order, while `budget` prompt tokens are left for
        them (the last may take it all and go on in the next steps); those waiting too long are refused."""
        admitted = []
        now = time.perf_counter()
        with self._wake:
            while self._waiting and ((self.cache.free_slots and budget > 0) or self._waiting[0].cancelled
                                     or now - self._waiting[0].arrived > self.queue_timeout_s):
                sequence = self._waiting.popleft()
                if sequence.cancelled:
                    continue
                if now - sequence.arrived > self.queue_timeout_s:
                    self._send(sequence, Chunk("", 0, error=Unavailable(
                        f"no sequence slot was free within {self.queue_timeout_s:g}s; retry later",
                        retry_after_s=self._retry_after(),
                    )))
                    continue
                sequence.slot = self.cache.acquire()
                sequence.trace.dequeued()
                sequence.generator = new_generator(sequence.params.seed, self._device)
                admitted.append(sequence)
                budget -= len(sequence.prompt)
            self.metrics.waiting_sequences.set(len(self._waiting))
        self._running.extend(admitted)
        self.metrics.running_sequences.set(len(self._running))  # before their first tokens go out
        return admitted

    def _advance(self, sequences: list[Sequence], logits: torch.Tensor) -> None:
        tokens = next_tokens(logits, [s.params for s in sequences], [s.generator for s in sequences])
        now = time.perf_counter()
        self.metrics.generated_tokens.inc(sum(not s.cancelled for s in sequences))
        for sequence, token in zip(sequences, tokens):
            if sequence.cancelled:
                continue
            first = not sequence.generated
            if first:
                self.metrics.time_to_first_token.observe(now - sequence.arrived)
            else:
                self.metrics.inter_token_latency.observe(now - sequence.last_token_at)
            sequence.last_token_at = now
            if token in self._eos:
                self._finish(sequence, "stop")
                continue
            sequence.generated.append(token)
            text = sequence.text.add(token)
            if sequence.text.stopped:
                self._finish(sequence, "stop", text=text)
            elif (len(sequence.generated) >= sequence.params.max_tokens
                  or sequence.position + 1 >= self.plan.max_len):
                self._finish(sequence, "length", text=text)
            elif text:
                self._send(sequence, Chunk(text, len(sequence.generated)))

    def _finish(self, sequence: Sequence, reason: str | None, error: BaseException | None = None,
                text: str = "") -> None:
        """Take `sequence` out of the batch and free its slot; tell its client why, unless it left."""
        self._running.remove(sequence)
        self.cache.release(sequence.slot)
        highest = max(self._running, key=lambda s: s.slot, default=None)
        if highest is not None and highest.slot > sequence.slot:  # keep the running slots 0..B-1
            # its last token may have been fed this step already: one position more than `position` holds
            self.cache.move(highest.slot, sequence.slot, min(highest.position + 1, self.plan.max_len))
            highest.slot = sequence.slot
        if not sequence.cancelled:
            if error is not None:
                self._send(sequence, Chunk("", len(sequence.generated), error=error))
            else:
                self._send(sequence, Chunk(text + sequence.text.finish(), len(sequence.generated), reason))
        sequence.cancelled = True

    def _send(self, sequence: Sequence, chunk: Chunk) -> None:
        self._outbox.append((sequence, chunk))

    def _flush(self) -> None:
        """Hand the step's chunks to their event loops, one wake-up per loop and step, not one per token."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Mailbox, Chunk]]] = {}
        for sequence, chunk in self._outbox:
            by_loop.setdefault(sequence.loop, []).append((sequence.mailbox, chunk))
        self._outbox.clear()
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _publish_gauges(self) -> None:
        self.metrics.running_sequences.set(len(self._running))
        used = sum(len(s.prompt) + len(s.generated) for s in self._running)
        self.metrics.kv_cache_used.set(used)


def _deliver(items: list[tuple[Mailbox, Chunk]]) -> None:
    for mailbox, chunk in items:
        mailbox.put(chunk)
