"""Dynamic batching: requests that arrive close together run as one model call.

Policy (per model, one batch in the model at a time):
- while the model is busy, arriving requests queue; when it frees, everything queued runs together, up
  to `max_batch_size` rows. A request is never split, and its rows stay contiguous;
- a request joins the queue only once it is complete (body received and decoded): a client still
  sending, or stalled, holds back nobody else's batch;
- a request that finds the model idle runs at once, unless - for a model slow enough to run on its
  thread - fewer requests are queued than were in the server when the last batch finished (those clients
  are about to send their next request). Then the batch waits for them, at most `max_latency_s` from the
  moment the model is free and the last batch's answers are sent (the loop's own work on them is not the
  clients' delay). So a lone client pays no batching delay, and a crowd keeps getting full
  batches instead of splitting into two half-size groups that take turns;
- requests whose non-batch dimensions differ are not merged (they cannot be concatenated);
- if a merged batch fails, its requests are re-run one by one, so only the faulty one gets the error.

Where the model runs (`ModelCaller`): on one worker thread, so the loop keeps parsing the next requests
while torch computes (it releases the GIL) - except for models whose recent calls took under
`ModelCaller.INLINE_BELOW_S` of CPU (median), which run inline on the loop: for them the hand-off to a
thread and back costs more than the call itself. Such models never wait for a batch to fill: waiting would
only hold back responses the clients are ready to act on. A request of an inline model that finds the
batcher idle leads: it yields to the loop once, so the requests already received reach the queue behind
it, then runs them with its own in its task - or, when none came, runs alone, as with batching off. So a
lone client pays one loop turn for batching, not a hand-off to the batch task and back, and a crowd still
shares model calls. docs/performance.md has the figures behind both.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.tracing import NO_TRACE, RequestTrace, batch_span

Arrays = dict[str, np.ndarray]
Predict = Callable[[Arrays], Arrays]


class BatchShapeError(RuntimeError):
    """The model returned outputs whose batch dimension does not match its inputs."""


class BatchOutputs(dict):
    """One request's output rows (name -> array), and `batch_size`: the rows of the model call that made them."""

    def __init__(self, outputs: Arrays, batch_size: int) -> None:
        super().__init__(outputs)
        self.batch_size = batch_size


class _RecentDurations:
    """Median of the last few call durations: one call stretched by the OS scheduler moves nothing."""

    def __init__(self, size: int = 16) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._median: float | None = None  # kept up to date by `add`: read on every request

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        ordered = sorted(self._samples)
        self._median = ordered[len(ordered) // 2]

    def median(self) -> float | None:
        return self._median


class ModelCaller:
    """Makes the model calls: timed, checked for one output row per input row, inline or on the model thread.

    Where to run a call is decided on the CPU time calls take (`time.thread_time`), not their wall time:
    wall time includes preemption by other processes and, on the model thread, waits for the GIL that a
    busy event loop holds up to the interpreter's switch interval (`sys.getswitchinterval()`) - a fast model measured by wall
    time under load would look slow, move to the thread, and there look slower still.
    """

    INLINE_BELOW_S = 0.0005  # typical call shorter than this: run it on the event loop

    def __init__(self, predict: Predict, executor: ThreadPoolExecutor, metrics: ServerMetrics) -> None:
        self._predict = predict
        self._executor = executor
        self._metrics = metrics
        self._calls = _RecentDurations()

    def calibrate(self, inputs: Arrays, repeats: int = 10) -> float:
        """Time single-row calls before serving (on the model thread, no traffic yet); returns the median.
        The first requests then already run where the model's calls belong."""
        for _ in range(repeats):
            start = time.thread_time()
            self._predict(inputs)
            self._calls.add(time.thread_time() - start)
        return self._calls.median()

    @property
    def runs_inline(self) -> bool:
        typical = self._calls.median()
        return typical is not None and typical < self.INLINE_BELOW_S

    async def __call__(self, inputs: Arrays, rows: int) -> Arrays:
        if self.runs_inline:
            return self._timed(inputs, rows)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, inputs, rows)

    def _timed(self, inputs: Arrays, rows: int) -> Arrays:
        start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            outputs = self._predict(inputs)
        finally:
            self._calls.add(time.thread_time() - cpu_start)
            self._metrics.forward_seconds.observe(time.perf_counter() - start)
        for name, array in outputs.items():
            if array.shape[:1] != (rows,):
                raise BatchShapeError(f"model output {name!r} has {array.shape[:1]} rows for a batch of {rows}")
        return outputs


@dataclass
class _Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future
    trace: RequestTrace = NO_TRACE
    queued_at: float = field(default_factory=time.perf_counter)

    def fits_with(self, other: "_Pending") -> bool:
        return all(array.shape[1:] == other.inputs[name].shape[1:] for name, array in self.inputs.items())


class Batcher:
    """Queues validated requests of one model and runs them in batches; `submit` returns a request's rows."""

    def __init__(
        self, call: ModelCaller, metrics: ServerMetrics, max_batch_size: int = 32, max_latency_s: float = 0.005
    ) -> None:
        self._call = call
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._recent_requests = 1  # requests in the server (queued or just answered) when the last batch ended
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._leading = False  # a request of an inline model is gathering the requests behind it
        self._executing = False  # a model call is under way

    async def submit(self, inputs: Arrays, rows: int, trace: RequestTrace = NO_TRACE) -> Arrays:
        """Run one validated request; returns its rows of the outputs."""
        if not (self._leading or self._queue or self._executing or self._stopping) and self._call.runs_inline:
            return await self._lead(inputs, rows, trace)
        future = asyncio.get_running_loop().create_future()
        trace.enqueued()
        self._queue.append(_Pending(inputs, rows, future, trace))
        self._metrics.queue_depth.set(len(self._queue))
        if not self._leading:  # a leader takes what queues behind it
            self._wake_runner()
        return await future

    def _wake_runner(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="slimserve-batcher")
        self._wakeup.set()

    async def _lead(self, inputs: Arrays, rows: int, trace: RequestTrace) -> Arrays:
        """An inline model's request that found the batcher idle: one loop turn lets the requests already
        received queue behind it; then it runs them with its own, here, or runs alone when none came."""
        self._leading = True
        trace.enqueued()  # its loop turn is its queue wait
        try:
            await asyncio.sleep(0)
        except BaseException:  # cancelled (its client went away): the batch task serves those behind it
            if self._queue:
                self._wake_runner()
            raise
        finally:
            self._leading = False
        if not self._queue:
            trace.dequeued()
            return await _run_alone(self._call, self._metrics, inputs, rows, trace)
        own = _Pending(inputs, rows, asyncio.get_running_loop().create_future(), trace)
        self._queue.appendleft(own)
        if not self._call.runs_inline:  # its calls moved to the model thread meanwhile: the batch task's job
            self._wake_runner()
            return await own.future
        # Inline, the calls below never suspend: no request can join, and no cancellation can strand the others.
        batch = self._take()  # its own request first
        self._metrics.queue_depth.set(len(self._queue))
        await self._execute(batch, sum(pending.rows for pending in batch))
        if self._queue:  # more queued than one batch takes: the batch task runs the rest
            self._wake_runner()
        return own.future.result()

    async def close(self) -> None:
        """Finish what is queued, then stop the loop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take()
            rows = sum(p.rows for p in batch)
            if rows < self.max_batch_size and self.max_latency_s > 0:
                batch, rows = await self._wait_for_latecomers(batch, rows)
            self._metrics.queue_depth.set(len(self._queue))
            await self._execute(batch, rows)
            self._recent_requests = len(batch) + len(self._queue)

    def _take(self, batch: list[_Pending] | None = None, rows: int = 0) -> list[_Pending]:
        batch = batch if batch is not None else []
        while self._queue:
            head = self._queue[0]
            if rows + head.rows > self.max_batch_size or (batch and not head.fits_with(batch[0])):
                break
            batch.append(self._queue.popleft())
            rows += head.rows
        return batch

    def _take_more(self, batch: list[_Pending], rows: int) -> tuple[list[_Pending], int]:
        """`batch` with what fits of the queue added, and its rows."""
        before = len(batch)
        batch = self._take(batch, rows)
        return batch, rows + sum(pending.rows for pending in batch[before:])

    def _expects_more(self, requests: int) -> bool:
        return not self._call.runs_inline and requests < self._recent_requests

    async def _wait_for_latecomers(self, batch: list[_Pending], rows: int) -> tuple[list[_Pending], int]:
        # One loop turn first: the requests the last batch answered send their answers (their tasks were woken
        # before this one), so the window is the clients' time to come back, not this loop's own work on the
        # answers. Charged to the window, that work made a crowd's late half miss it round after round.
        if self._expects_more(len(batch)):
            await asyncio.sleep(0)
            batch, rows = self._take_more(batch, rows)
        # From now, when the model is free: time queued behind a busy model is not a batching delay.
        deadline = time.perf_counter() + self.max_latency_s
        while rows < self.max_batch_size and self._expects_more(len(batch)) and not self._stopping:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
            before = len(batch)
            batch, rows = self._take_more(batch, rows)
            if self._queue and len(batch) == before:
                break  # the head cannot join this batch: run what we have
        return batch, rows

    async def _execute(self, batch: list[_Pending], rows: int) -> None:
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
        self._metrics.batch_size.observe(rows)
        for pending in batch:
            pending.trace.dequeued()
        self._executing = True
        try:
            with batch_span([pending.trace for pending in batch], rows):
                outputs = await self._call(inputs, rows)
        except Exception as error:  # noqa: BLE001 - isolated below, reported per request
            if len(batch) == 1:
                _resolve(batch[0].future, error=error)
            else:
                await self._execute_one_by_one(batch)
            return
        finally:
            self._executing = False
        start = 0
        for pending in batch:
            end = start + pending.rows
            _resolve(pending.future, result=BatchOutputs({name: array[start:end] for name, array in outputs.items()}, rows))
            start = end

    async def _execute_one_by_one(self, batch: list[_Pending]) -> None:
        for pending in batch:
            try:
                result = await _run_alone(self._call, self._metrics, pending.inputs, pending.rows, pending.trace)
            except Exception as error:  # noqa: BLE001 - belongs to this request only
                _resolve(pending.future, error=error)
            else:
                _resolve(pending.future, result=result)


class DirectRunner:
    """Batching off: each request is its own model call, in arrival order on the model's thread."""

    def __init__(self, call: ModelCaller, metrics: ServerMetrics) -> None:
        self._call = call
        self._metrics = metrics

    async def submit(self, inputs: Arrays, rows: int, trace: RequestTrace = NO_TRACE) -> Arrays:
        return await _run_alone(self._call, self._metrics, inputs, rows, trace)

    async def close(self) -> None:
        pass


async def _run_alone(
    call: ModelCaller, metrics: ServerMetrics, inputs: Arrays, rows: int, trace: RequestTrace
) -> BatchOutputs:
    """One request as its own model call."""
    metrics.batch_size.observe(rows)
    with trace.batch([trace], rows):
        return BatchOutputs(await call(inputs, rows), rows)


def _resolve(future: asyncio.Future, result: Arrays | None = None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away and its handler was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
