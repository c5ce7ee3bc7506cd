"""The generation engine in process, on a real DecoderLM: sequences that join a running batch, their prompts
prefilled together and in chunks beside decoding, get the tokens they get alone, eos ends a sequence, a stop
sequence is held back until it cannot match, and the cache plan honours its byte budget."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from slimserve.models.decoder import DecoderConfig, DecoderLM, Tokenizer
from slimserve.serving.errors import InferenceFailed
from slimserve.serving.generation.engine import GenerationEngine, plan_cache
from slimserve.serving.generation.params import SamplingParams
from slimserve.serving.generation.text import TextStream
from slimserve.serving.metrics import ServerMetrics

VOCAB = 40


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """As the servers in the tests run: a tiny model's steps are slower, not faster, on a shared machine's threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def word_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    backend = Backend(models.WordLevel({"<pad>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    return Tokenizer(backend)


def engine(eos: list[int] = (), slots: int = 3, step_tokens: int = 512) -> GenerationEngine:
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                           intermediate_size=40, max_position_embeddings=64)
    model = DecoderLM(config).to(torch.float64).eval()  # float64: batched and alone agree to the last bit
    plan = plan_cache(model.new_cache(1, 1).bytes_per_token(), 64, slots)
    return GenerationEngine(model, word_tokenizer(), list(eos), plan, ServerMetrics().add_generation(),
                            max_waiting=8, queue_timeout_s=30, device=torch.device("cpu"), step_tokens=step_tokens)


def recording_steps(engine: GenerationEngine) -> list[tuple[list[int], list[tuple[int, int, int]]]]:
    """Each model step the engine runs: its decoding slots, and its prompt chunks as (slot, start, end)."""
    step, steps = engine.model.step, []

    def recording_step(tokens, slots, positions, chunks=()):
        steps.append((slots.tolist(), [(chunk.slot, chunk.start, chunk.end) for chunk in chunks]))
        return step(tokens, slots, positions, chunks)

    engine.model.step = recording_step
    return steps


def generate(engine: GenerationEngine, requests: list[tuple[list[int], int]], stagger: bool) -> list:
    """Completions of (prompt, max_tokens) requests; `stagger`: each joins once the previous one streams."""

    async def run():
        engine.start()
        try:
            streams, tasks = [], []
            for prompt, max_tokens in requests:
                stream = engine.submit(prompt, SamplingParams(max_tokens=max_tokens, temperature=0))
                tasks.append(asyncio.ensure_future(stream.complete()))
                streams.append(stream)
                while stagger and not streams[-1].sequence.generated:
                    await asyncio.sleep(0.001)
            return await asyncio.gather(*tasks)
        finally:
            engine.stop()

    return asyncio.run(run())


def test_sequences_joining_a_running_batch_get_the_tokens_they_get_alone():
    requests = [([1, 2, 3], 20), ([4, 5], 12), ([6, 7, 8, 9], 16), ([10], 8)]  # 4 requests, 3 slots
    alone = [generate(engine(), [request], stagger=False)[0] for request in requests]
    batched = engine()
    steps = recording_steps(batched)
    together = generate(batched, requests, stagger=True)
    stepped = [slots for slots, _ in steps]
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.completion_tokens for c in together] == [20, 12, 16, 8]
    # every step ran slots 0..B-1 in order (a view of the cache), also after sequences left from below
    assert all(slots == list(range(len(slots))) for slots in stepped)
    assert any(len(slots) == 3 for slots in stepped)  # the batch was full at times


def test_prompts_prefilled_together_and_in_chunks_beside_decoding_get_the_tokens_they_get_alone():
    # different lengths, more than the slots: some join together, later ones as slots free up; a step takes
    # at most 10 tokens, so the longer prompts are prefilled in chunks over several steps, beside decoding
    requests = [([1, 2, 3], 9), ([4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], 6), ([16, 17], 12),
                ([18, 19, 20, 21, 22, 23, 24], 5), ([25], 7), ([26, 27, 28, 29, 30, 31, 32, 33, 34], 8)]
    alone = [generate(engine(), [request], stagger=False)[0] for request in requests]
    batched = engine(slots=4, step_tokens=10)
    steps = recording_steps(batched)
    together = generate(batched, requests, stagger=False)
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.completion_tokens for c in together] == [max_tokens for _, max_tokens in requests]
    assert all(len(slots) + sum(end - start for _, start, end in chunks) <= 10 for slots, chunks in steps)
    assert any(len(chunks) > 1 for _, chunks in steps)  # prompts prefilled together
    assert any(start > 0 for _, chunks in steps for _, start, _ in chunks)  # a prompt went on in a later step
    assert any(slots and chunks for slots, chunks in steps)  # a prompt prefilled beside decoding


def generated_unread(engine: GenerationEngine, prompt: list[int], max_tokens: int) -> list:
    """The batches a reader gets that starts reading only once the engine is done with its request."""

    async def run():
        engine.start()
        try:
            stream = engine.submit(prompt, SamplingParams(max_tokens=max_tokens, temperature=0))
            deadline = time.monotonic() + 60
            while not stream.sequence.cancelled:  # set by the engine once the sequence has left the batch
                assert time.monotonic() < deadline, "the sequence did not end"
                await asyncio.sleep(0.005)
        finally:
            engine.stop()  # its thread has handed every chunk to this loop once it is joined
        batches = []
        try:
            async for batch in stream.batches():
                batches.append(batch)
        except InferenceFailed as error:
            batches.append(error)
        return batches, stream

    return asyncio.run(run())


def test_a_reader_slower_than_the_steps_gets_the_chunks_that_came_meanwhile_in_one_batch():
    alone = generate(engine(), [([1, 2, 3], 12)], stagger=False)[0]
    batches, stream = generated_unread(engine(), [1, 2, 3], 12)
    assert len(batches) == 1 and len(batches[0]) > 1
    assert "".join(chunk.text for chunk in batches[0]) == alone.text
    assert batches[0][-1].finish_reason == "length" and batches[0][-1].completion_tokens == 12
    assert "".join(stream.sent) == alone.text and stream.finish_reason == "length"


def test_a_failed_step_is_raised_after_the_chunks_that_came_before_it():
    alone = generate(engine(), [([1, 2, 3], 12)], stagger=False)[0]
    failing = engine()
    step, calls = failing.model.step, []

    def third_step_fails(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("the device went away")
        return step(*args)

    failing.model.step = third_step_fails
    batches, stream = generated_unread(failing, [1, 2, 3], 12)
    assert [type(item) for item in batches] == [list, InferenceFailed]
    text = "".join(chunk.text for chunk in batches[0])
    assert alone.text.startswith(text) and len(text.split()) == 2  # the two steps' tokens (words) before the failure
    assert "device went away" in str(batches[1]) and stream.error is batches[1]
    assert stream.sent == [chunk.text for chunk in batches[0]] and stream.finish_reason is None


def test_eos_ends_a_sequence_without_its_text():
    free = generate(engine(), [([1, 2, 3], 10)], stagger=False)[0]
    eos = word_tokenizer().encode(free.text.split()[2])[0]
    ended = generate(engine(eos=[eos]), [([1, 2, 3], 10)], stagger=False)[0]
    assert ended.finish_reason == "stop"
    assert ended.text.split() == free.text.split()[:2]


def test_text_that_could_start_a_stop_sequence_is_held_back_until_it_cannot():
    tokenizer = word_tokenizer()
    stream = TextStream(tokenizer.incremental([1]).step, stop=(" w5 w6",))
    released = [stream.add(token) for token in tokenizer.encode("w5 w7 w5 w6")]
    assert released == ["", " w5 w7", "", ""]  # " w5" waits: it may begin " w5 w6"
    assert stream.stopped
    assert "".join(released) == " w5 w7"


@pytest.mark.parametrize("budget, slots, max_len", [(0, 8, 64), (10 * 64 * 100, 8, 64), (3 * 64 * 100, 3, 64),
                                                    (20 * 100, 1, 20)])
def test_the_cache_plan_fits_its_byte_budget(budget, slots, max_len):
    plan = plan_cache(bytes_per_token=100, context_length=64, max_sequences=8, budget_bytes=budget)
    assert (plan.slots, plan.max_len) == (slots, max_len)
    assert budget == 0 or plan.bytes <= budget
