"""A deduplicating work queue with retries, for reconciles triggered by watch events of other objects.

Kopf retries its own resource handlers, but not event handlers: when a child Deployment changes or a
CompressionJob finishes, the parent must be reconciled again, and again later if that fails. Keys added while
queued are merged (a burst of events is one reconcile); a key is never worked on by two threads at once; a
failure re-queues the key after a growing delay (or the delay a `kopf.TemporaryError` asks for).

Its worker threads run the blocking API calls, as Kopf's executor does for sync handlers. The ModelService
controller's queue lives on the operator's memo and is started and stopped by Kopf's startup and cleanup
handlers (`model_service_runtime`); docs/architecture.md says why there is a queue at all.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from typing import Callable, Generic, Hashable, TypeVar

import kopf

log = logging.getLogger(__name__)

Key = TypeVar("Key", bound=Hashable)

DEFAULT_BACKOFFS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class WorkQueue(Generic[Key]):
    def __init__(
        self,
        work: Callable[[Key], None],
        *,
        workers: int = 4,
        backoffs: tuple[float, ...] = DEFAULT_BACKOFFS,
        name: str = "workqueue",
    ) -> None:
        self._work = work
        self._workers = workers
        self._backoffs = backoffs
        self._name = name
        self._cond = threading.Condition()
        self._ready: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._again: set[Key] = set()  # added while being worked on: run once more afterwards
        self._delayed: list[tuple[float, int, Key]] = []
        self._sequence = 0
        self._failures: dict[Key, int] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self) -> None:
        with self._cond:
            if self._threads:
                return
            self._stopping = False
            self._threads = [
                threading.Thread(target=self._run, name=f"{self._name}-{i}", daemon=True) for i in range(self._workers)
            ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)

    def add(self, key: Key, delay: float = 0.0) -> None:
        with self._cond:
            if delay > 0:
                self._sequence += 1
                heapq.heappush(self._delayed, (time.monotonic() + delay, self._sequence, key))
            elif key in self._active:
                self._again.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
            self._cond.notify()

    def forget(self, key: Key) -> None:
        """Drop the key's failure count (it was deleted)."""
        with self._cond:
            self._failures.pop(key, None)

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._delayed) + len(self._active)

    def _promote_due(self) -> float | None:
        """Move due delayed keys to the ready queue; seconds until the next one, or None."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            if key in self._active:
                self._again.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
        return self._delayed[0][0] - now if self._delayed else None

    def _next(self) -> Key | None:
        with self._cond:
            while not self._stopping:
                wait = self._promote_due()
                if self._ready:
                    key = self._ready.popleft()
                    self._queued.discard(key)
                    self._active.add(key)
                    return key
                self._cond.wait(wait)
            return None

    def _run(self) -> None:
        while (key := self._next()) is not None:
            retry_in = self._attempt(key)
            with self._cond:
                self._active.discard(key)
                again = key in self._again
                self._again.discard(key)
            if retry_in is not None:
                self.add(key, retry_in)
            elif again:
                self.add(key)

    def _attempt(self, key: Key) -> float | None:
        """Run the work; None on success, else the delay before the retry."""
        try:
            self._work(key)
        except kopf.PermanentError as exc:
            log.warning("%s: %s: %s", self._name, key, exc)  # already reported in the object's status
            return None
        except kopf.TemporaryError as exc:
            log.info("%s: %s: %s", self._name, key, exc)
            return self._record_failure(key, exc.delay)
        except Exception:
            log.exception("%s: reconciling %s failed", self._name, key)
            return self._record_failure(key, None)
        with self._cond:
            self._failures.pop(key, None)
        return None

    def _record_failure(self, key: Key, requested: float | None) -> float:
        with self._cond:
            count = self._failures.get(key, 0)
            self._failures[key] = count + 1
        backoff = self._backoffs[min(count, len(self._backoffs) - 1)]
        return requested if requested is not None else backoff
