"""A shard's report into its BatchInference's status: `status.shardProgress["<index>"]`, nothing else.

Each pod writes only its own index's entry, so the writes of two pods never touch the same key: a JSON merge
patch without a resourceVersion precondition is enough (`kube.status.patch_status(..., resource_version=None)`).
As the compression pod's sink does, each write first reads the object: a pod whose generation is no longer
the resource's (the spec changed, a new Job took over) stops writing, so a stale run never covers a newer one.
Progress is written at most once per `min_interval_seconds`; the final state at once, and it must land.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.api.batch_inference import BatchInference, ShardProgress
from slimserve.artifacts.errors import SlimServeError
from slimserve.kube.client import load_api_client
from slimserve.kube.status import TRANSIENT_STATUSES, patch_status, read_status

logger = logging.getLogger(__name__)


class StatusNotWritten(SlimServeError):
    """The shard's final state could not be written: the pod fails, and its retry resumes from the part."""

    reason = "StatusNotWritten"


class StaleGeneration(SlimServeError):
    """The BatchInference moved on to a newer generation: this pod's run is no longer wanted."""

    reason = "StaleGeneration"


class ShardReporter:
    def __init__(
        self,
        namespace: str,
        name: str,
        index: int,
        generation: int | None,
        *,
        api: client.ApiClient | None = None,
        min_interval_seconds: float = 2.0,
        attempts: int = 5,
        backoff_seconds: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.namespace, self.name, self.index = namespace, name, index
        self.generation = generation  # None (a run started by hand): the one current at the first read
        self.uid: str | None = None
        self.min_interval_seconds = min_interval_seconds
        self.attempts, self.backoff_seconds, self.clock = attempts, backoff_seconds, clock
        self.writes = 0
        self._api = api
        self._last_write: float | None = None

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            self._api = load_api_client()
        return self._api

    def start(self, records_total: int | None = None) -> str:
        """Report the shard running; returns the resource's uid (part of the run id). Raises StaleGeneration."""
        self._write(ShardProgress(generation=0, state="Running", records_total=records_total), required=True)
        assert self.uid is not None
        return self.uid

    def running(self, records_done: int, records_total: int | None) -> None:
        """Live progress, at a bounded rate; a failed write is logged, never raised."""
        if self._last_write is not None and self.clock() - self._last_write < self.min_interval_seconds:
            return
        entry = ShardProgress(generation=0, state="Running", records_done=records_done, records_total=records_total)
        self._write(entry, required=False)

    def finished(self, entry: ShardProgress) -> None:
        """The shard's final state (Succeeded, Skipped or Failed); StatusNotWritten when it cannot be written."""
        self._write(entry, required=True)

    def _write(self, entry: ShardProgress, *, required: bool) -> None:
        self._last_write = self.clock()
        for attempt in range(1, self.attempts + 1):
            try:
                current = read_status(self.api, BatchInference.plural, self.namespace, self.name)
                self._check_generation(current)
                body = entry.model_copy(update={"generation": self.generation}).model_dump(mode="json", by_alias=True)
                # Every field, absent ones as null: a merge patch would otherwise keep an older entry's part.
                patch_status(self.api, BatchInference.plural, self.namespace, self.name,
                             {"shardProgress": {str(self.index): body}}, resource_version=None)
                self.writes += 1
                return
            except ApiException as exc:
                if exc.status in TRANSIENT_STATUSES and attempt < self.attempts:
                    time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
                    continue
                self._not_written(f"{exc.status} {exc.reason}", required)
                return
            except (StaleGeneration, StatusNotWritten):
                raise
            except Exception as exc:  # no credentials, no network: all mean "not written"
                self._not_written(f"{type(exc).__name__}: {exc}", required)
                return

    def _check_generation(self, current: dict[str, Any]) -> None:
        metadata = current["metadata"]
        self.uid = metadata["uid"]
        if self.generation is None:
            self.generation = metadata.get("generation")
        if metadata.get("generation") != self.generation:
            raise StaleGeneration(
                f"BatchInference {self.namespace}/{self.name} is at generation {metadata.get('generation')}, "
                f"this pod runs generation {self.generation}: stopping"
            )

    def _not_written(self, detail: str, required: bool) -> None:
        what = f"shard {self.index} of BatchInference {self.namespace}/{self.name}: {detail}"
        if required:
            raise StatusNotWritten(f"could not write the status of {what}")
        logger.warning("could not write the progress of %s", what)
