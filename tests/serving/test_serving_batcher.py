"""The batch queue in process: merging, limits, per-request results and fault isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from slimserve.serving.batching import Batcher, DirectRunner, ModelCaller
from slimserve.serving.metrics import ServerMetrics


def compute(seconds: float) -> None:
    """Busy for `seconds` of CPU, like a model (the server judges models by the CPU time of their calls)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class RecordingModel:
    """y = 2x + row index within the call: rows must come back to the request that sent them, in order."""

    def __init__(self, poison: float | None = None) -> None:
        self.calls: list[int] = []
        self.poison = poison

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        compute(0.001)  # a model worth batching, run on the model thread (see the last tests for fast ones)
        x = inputs["x"]
        self.calls.append(x.shape[0])
        if self.poison is not None and (x == self.poison).any():
            raise ValueError("x: poisoned value")
        return {"y": x * 2, "rows": np.full((x.shape[0], 1), x.shape[0])}


def run(coroutine):
    return asyncio.run(coroutine)


async def _submit_all(batcher, requests: list[np.ndarray]):
    async def one(x):
        await asyncio.sleep(0)
        return await batcher.submit({"x": x}, x.shape[0])

    return await asyncio.gather(*(one(x) for x in requests), return_exceptions=True)


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown()


def test_concurrent_requests_merge_without_exceeding_the_limit_and_keep_their_rows(executor):
    model = RecordingModel()
    metrics = ServerMetrics()
    requests = [np.full((rows, 3), float(i), dtype=np.float32) for i, rows in enumerate([1, 3, 2, 5, 1, 4, 2, 2, 3, 1])]

    async def scenario():
        batcher = Batcher(ModelCaller(model, executor, metrics), metrics, max_batch_size=8, max_latency_s=0.05)
        results = await _submit_all(batcher, requests)
        await batcher.close()
        return results

    results = run(scenario())
    for x, result in zip(requests, results):
        np.testing.assert_array_equal(result["y"], x * 2)
    assert max(model.calls) <= 8
    assert sum(model.calls) == sum(x.shape[0] for x in requests)
    assert len(model.calls) < len(requests)  # some requests shared a model call
    assert metrics.batch_size._sum.get() == sum(model.calls)


def test_a_request_larger_than_the_rest_of_a_batch_waits_for_the_next_one_whole(executor):
    model = RecordingModel()
    requests = [np.ones((5, 2), np.float32), np.ones((5, 2), np.float32) * 2]

    async def scenario():
        batcher = Batcher(ModelCaller(model, executor, ServerMetrics()), ServerMetrics(), max_batch_size=8, max_latency_s=0.05)
        return await _submit_all(batcher, requests)

    results = run(scenario())
    assert model.calls == [5, 5]  # never split to fill a batch
    np.testing.assert_array_equal(results[1]["y"], requests[1] * 2)


def test_a_failing_request_does_not_fail_its_batch_mates(executor):
    model = RecordingModel(poison=-1.0)
    requests = [np.zeros((1, 2), np.float32), np.full((2, 2), -1.0, np.float32), np.ones((1, 2), np.float32)]

    async def scenario():
        batcher = Batcher(ModelCaller(model, executor, ServerMetrics()), ServerMetrics(), max_batch_size=8, max_latency_s=0.05)
        return await _submit_all(batcher, requests)

    good_a, bad, good_b = run(scenario())
    assert isinstance(bad, ValueError) and "poisoned" in str(bad)
    np.testing.assert_array_equal(good_a["y"], requests[0] * 2)
    np.testing.assert_array_equal(good_b["y"], requests[2] * 2)


def test_requests_of_different_inner_shapes_are_not_merged(executor):
    model = RecordingModel()
    requests = [np.ones((1, 2), np.float32), np.ones((1, 3), np.float32), np.ones((1, 2), np.float32)]

    async def scenario():
        batcher = Batcher(ModelCaller(model, executor, ServerMetrics()), ServerMetrics(), max_batch_size=8, max_latency_s=0.05)
        return await _submit_all(batcher, requests)

    results = run(scenario())
    assert [r["y"].shape for r in results] == [(1, 2), (1, 3), (1, 2)]
    assert len(model.calls) >= 2


def test_a_lone_request_does_not_wait_for_the_latency_window(executor):
    model = RecordingModel()

    async def scenario():
        batcher = Batcher(ModelCaller(model, executor, ServerMetrics()), ServerMetrics(), max_batch_size=8, max_latency_s=30.0)
        # Nobody else is queued: it must run now, far inside the 30 s window.
        return await asyncio.wait_for(batcher.submit({"x": np.ones((1, 2), np.float32)}, 1), timeout=10)

    assert run(scenario())["y"].shape == (1, 2)
    assert model.calls == [1]


def test_model_returning_the_wrong_row_count_is_an_error(executor):
    async def scenario():
        metrics = ServerMetrics()
        runner = DirectRunner(ModelCaller(lambda inputs: {"y": np.zeros((1, 1))}, executor, metrics), metrics)
        return await runner.submit({"x": np.zeros((3, 1))}, 3)

    with pytest.raises(RuntimeError, match="rows for a batch of 3"):
        run(scenario())


def test_fast_models_run_inline_and_slow_ones_on_the_model_thread(executor):
    def recorder(pause_s: float):
        threads = []

        def predict(inputs):
            threads.append(threading.current_thread())
            if pause_s:
                compute(pause_s)
            return {"y": inputs["x"]}

        return predict, threads

    async def calls(predict, count):
        caller = ModelCaller(predict, executor, ServerMetrics())
        for _ in range(count):
            await caller({"x": np.zeros((1, 1))}, 1)

    fast, fast_threads = recorder(0.0)
    run(calls(fast, 20))
    assert fast_threads[0] is not threading.main_thread()  # not yet measured: the model thread
    assert threading.main_thread() in fast_threads  # measured fast: inline on the loop
    slow, slow_threads = recorder(0.005)
    run(calls(slow, 5))
    assert threading.main_thread() not in slow_threads


def test_after_a_crowd_a_slow_model_waits_for_the_crowd_to_come_back(executor):
    slow = RecordingModel()

    def predict(inputs):
        compute(0.02)  # slow enough to run on the model thread
        return slow(inputs)

    async def scenario():
        metrics = ServerMetrics()
        batcher = Batcher(ModelCaller(predict, executor, metrics), metrics, max_batch_size=8, max_latency_s=2.0)
        crowd = [np.ones((1, 2), np.float32)] * 4
        await _submit_all(batcher, crowd)  # four clients at once: one call of 4
        first = asyncio.ensure_future(_submit_all(batcher, crowd[:1]))
        await asyncio.sleep(0.1)  # the other three clients come back a little later
        rest = await _submit_all(batcher, crowd[1:])
        return await first, rest

    run(scenario())
    assert slow.calls == [4, 4]  # the returning crowd ran together, not as 1 + 3


def test_the_wait_for_a_returning_crowd_starts_after_its_answers_are_sent(executor):
    """Six clients answered in one batch, two in the next: the loop's own work on the six answers (encoding and
    writing them, 2 ms each) outlasts the 5-ms window, so charged to it the six would miss the two's batch, and
    the crowd would stay split in two round after round."""
    slow = RecordingModel()

    def predict(inputs):
        compute(0.02)
        return slow(inputs)

    async def client(batcher, first_delay_s: float, rounds: int) -> None:
        x = np.ones((1, 2), np.float32)
        await asyncio.sleep(first_delay_s)
        for _ in range(rounds):
            await batcher.submit({"x": x}, 1)
            time.sleep(0.002)  # the loop writes this answer
            await asyncio.sleep(0.001)  # the client's turnaround: its next request arrives from the network

    async def scenario():
        metrics = ServerMetrics()
        caller = ModelCaller(predict, executor, metrics)
        caller.calibrate({"x": np.ones((1, 2), np.float32)})  # known slow: runs on the model thread
        slow.calls.clear()
        batcher = Batcher(caller, metrics, max_batch_size=8, max_latency_s=0.005)
        crowd = [client(batcher, 0.0, 3) for _ in range(6)]
        late = [client(batcher, 0.005, 3) for _ in range(2)]  # queued behind the six's call
        await asyncio.gather(*crowd, *late)

    run(scenario())
    assert slow.calls[:2] == [6, 8], slow.calls  # the six came back into the two's batch
    assert sum(slow.calls) == 24


def test_a_lone_client_after_a_crowd_waits_at_most_the_latency_window(executor):
    slow = RecordingModel()

    def predict(inputs):
        compute(0.02)
        return slow(inputs)

    async def scenario():
        metrics = ServerMetrics()
        batcher = Batcher(ModelCaller(predict, executor, metrics), metrics, max_batch_size=8, max_latency_s=0.1)
        await _submit_all(batcher, [np.ones((1, 2), np.float32)] * 4)
        for _ in range(3):  # one client left: after one bounded wait, no more waiting
            await asyncio.wait_for(_submit_all(batcher, [np.ones((1, 2), np.float32)]), timeout=10)

    run(scenario())
    assert slow.calls == [4, 1, 1, 1]


class TinyModel:
    """0.1 ms of CPU per call, like the digits MLP on a busy node: inline on the loop. Records each call's rows."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        compute(0.0001)
        self.calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}


def inline_batcher(model: TinyModel, executor, max_batch_size: int = 8) -> Batcher:
    metrics = ServerMetrics()
    caller = ModelCaller(model, executor, metrics)
    caller.calibrate({"x": np.ones((1, 2), np.float32)})
    assert caller.runs_inline
    model.calls.clear()
    return Batcher(caller, metrics, max_batch_size=max_batch_size, max_latency_s=30.0)


def batch_tasks() -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "slimserve-batcher"]


def test_a_fast_models_lone_requests_run_alone_in_their_own_task(executor):
    model = TinyModel()

    async def scenario():
        batcher = inline_batcher(model, executor)
        results = [await asyncio.wait_for(_submit_all(batcher, [np.ones((1, 2), np.float32)]), timeout=10)
                   for _ in range(5)]
        return results, batch_tasks()

    results, tasks = run(scenario())
    assert model.calls == [1] * 5  # none waited for company that was not coming (the window is 30 s)
    assert [r[0].batch_size for r in results] == [1] * 5
    assert tasks == []  # no hand-off to the batch task and back


def test_a_fast_models_crowd_shares_model_calls(executor):
    model = TinyModel()

    async def scenario():
        batcher = inline_batcher(model, executor, max_batch_size=4)
        crowd = [np.full((1, 2), i, np.float32) for i in range(6)]
        results = await asyncio.wait_for(_submit_all(batcher, crowd), timeout=10)
        model.calls.append(0)  # separates the rounds
        mixed = [np.ones((1, 2), np.float32)] * 2 + [np.ones((1, 3), np.float32)] * 2
        await asyncio.wait_for(_submit_all(batcher, mixed), timeout=10)
        return results

    results = run(scenario())
    # The first request leads: the five received with it queue behind it, four rows ride in its call and
    # the rest in the next; requests of another inner shape get a call of their own.
    assert model.calls == [4, 2, 0, 2, 2]
    assert [r.batch_size for r in results] == [4, 4, 4, 4, 2, 2]
    assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(6)]


def test_a_cancelled_leader_leaves_no_request_behind_it(executor):
    model = TinyModel()

    async def scenario():
        batcher = inline_batcher(model, executor)
        leader = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}, 1))
        followers = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}, 1)) for _ in range(3)]
        await asyncio.sleep(0)  # the leader yields, the followers queue behind it
        leader.cancel()
        results = await asyncio.wait_for(asyncio.gather(*followers), timeout=10)
        return leader.cancelled(), results

    cancelled, results = run(scenario())
    assert cancelled
    assert model.calls == [3]
    assert [r.batch_size for r in results] == [3, 3, 3]
