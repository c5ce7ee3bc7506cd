"""A progress sink that reports to the CompressionJob itself: the pod patches its own status through the API.

Why the API and not the container's termination message: the status shows live progress while the job runs
(the termination message is read once, after the container ended); the metrics of a multi-step run do not
fit the termination message's 4 KiB; and this path is exercised against a real API server in the tests, with
the same RBAC a cluster applies. The termination message stays as the fallback for failures (one line, read
by the operator into the Succeeded condition), because a pod that cannot reach the API can still fail loudly.

What the pod may do is minimal: the operator gives each CompressionJob a ServiceAccount whose Role allows
`get` and `patch` on `compressionjobs/status` of that one name. Every write carries the resourceVersion it
was computed from (see `slimserve.kube.status`): a 409 Conflict is retried from a fresh read, as
are throttling and 5xx answers. A pod whose generation is no longer the CompressionJob's (the spec changed
and a new Job took over) never writes: a stale run cannot overwrite a newer one.

Progress patches are throttled (one per `min_interval_seconds`, the latest event wins, and a trailing write
makes sure the last event of a burst is not lost); the result and errors are written at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel

from slimserve.api import CompressionJob
from slimserve.api.compression_job import ArtifactRef, CompressionMetrics, Progress
from slimserve.api.workload import CompressorEnv
from slimserve.kube.client import load_api_client
from slimserve.kube.status import TRANSIENT_STATUSES, update_status

logger = logging.getLogger(__name__)

_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_TARGET_PATTERN = re.compile(rf"^(?P<namespace>{_NAME})/(?P<name>{_NAME})$")


class StatusSinkError(RuntimeError):
    """The result could not be written to the CompressionJob's status (the run fails: nobody would see it)."""

    reason = "StatusNotWritten"


def parse_target(target: str, *, option: str | None = "--status-target") -> tuple[str, str]:
    """(namespace, name) of `NAMESPACE/NAME`, or a ValueError naming `option` (argparse names it itself)."""
    match = _TARGET_PATTERN.match(target or "")
    if not match:
        prefix = f"{option}: " if option else ""
        raise ValueError(f"{prefix}expected NAMESPACE/NAME of a CompressionJob, got {target!r}")
    return match["namespace"], match["name"]


class KubernetesStatusSink:
    """Writes progress, the result and errors of one compression run into its CompressionJob's status."""

    def __init__(
        self,
        target: str,
        generation: int | None = None,
        *,
        api: client.ApiClient | None = None,
        min_interval_seconds: float = 1.0,
        attempts: int = 5,
        backoff_seconds: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.namespace, self.name = parse_target(target)
        self._api = api  # connected on the first write: a sink that cannot reach the API still lets the run start
        self.min_interval_seconds = min_interval_seconds
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.clock = clock
        # Without a generation (a run started by hand), the one current at the first write is this run's.
        self.generation = generation
        self.stale = False  # set once the CompressionJob has moved on to a newer generation
        self.writes = 0
        self._lock = threading.Lock()
        self._last_write: float | None = None
        self._pending: dict[str, Any] | None = None
        self._latest_progress: dict[str, Any] = {}
        self._timer: threading.Timer | None = None

    @classmethod
    def for_target(cls, target: str, environ: Mapping[str, str] = os.environ, **kwargs: Any) -> "KubernetesStatusSink":
        """The sink of `slimserve compress --status-target`; the generation comes from the pod's environment."""
        return cls(target, CompressorEnv.from_env(environ, only=["job_generation"]).job_generation, **kwargs)

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            self._api = load_api_client()
        return self._api

    # ---- the progress-sink protocol ---------------------------------------------------------------------

    def progress(self, event: Any) -> None:
        """Record live progress; throttled, never raises (progress is best effort)."""
        fields = {"progress": _to_status_json(event, Progress)}
        with self._lock:
            self._latest_progress = fields["progress"]
            wait = self._wait_seconds()
            if wait > 0:
                self._pending = fields
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._pending = None
            self._write(fields, required=False)

    def result(self, result: Any) -> None:
        """Write the artifact and metrics (with progress at 100 %); raises StatusSinkError when it cannot."""
        fields: dict[str, Any] = {
            "artifact": _to_status_json(_part(result, "artifact"), ArtifactRef),
            "metrics": _to_status_json(_part(result, "metrics"), CompressionMetrics),
        }
        with self._lock:
            fields["progress"] = {**self._latest_progress, "fraction": 1.0, "message": "artifact written"}
            self._cancel_pending()
            self._write(fields, required=True)

    def error(self, reason: str, message: str) -> None:
        """Record why the run failed in the live progress; the operator's Succeeded condition says it too."""
        with self._lock:
            progress = {**self._latest_progress, "message": f"{reason}: {message}"}
            self._cancel_pending()
            self._write({"progress": progress}, required=False)

    def close(self) -> None:
        """Write a progress event still held back by the throttle."""
        with self._lock:
            pending, self._pending = self._pending, None
            self._cancel_pending()
            if pending is not None:
                self._write(pending, required=False)

    # ---- internals --------------------------------------------------------------------------------------

    def _wait_seconds(self) -> float:
        if self._last_write is None:
            return 0.0
        return self._last_write + self.min_interval_seconds - self.clock()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            pending, self._pending = self._pending, None
            if pending is not None:
                self._write(pending, required=False)

    def _cancel_pending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = None

    def _derive(self, fields: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
        def derive(compression_job: dict[str, Any]) -> dict[str, Any] | None:
            current = compression_job["metadata"].get("generation")
            if self.generation is None:
                self.generation = current
            if current != self.generation:
                self.stale = True
                logger.warning(
                    "CompressionJob %s/%s is at generation %s, this run is generation %s: not writing its status",
                    self.namespace, self.name, current, self.generation,
                )
                return None
            return fields

        return derive

    def _write(self, fields: dict[str, Any], *, required: bool) -> None:
        if self.stale:
            return
        try:
            _, written = update_status(
                self.api,
                CompressionJob.plural,
                self.namespace,
                self.name,
                self._derive(fields),
                attempts=self.attempts,
                retry_on=TRANSIENT_STATUSES,
                backoff_seconds=self.backoff_seconds,
            )
        except Exception as exc:  # API refusals, no credentials, no network: all mean "not written"
            detail = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else f"{type(exc).__name__}: {exc}"
            what = f"status of CompressionJob {self.namespace}/{self.name}: {detail}"
            if required:
                raise StatusSinkError(f"could not write the result to the {what}") from exc
            logger.warning("could not write progress to the %s", what)
            return
        finally:
            # The interval runs from the end of a write: a slow API server (the first write also connects)
            # gets fewer writes, not one at once after each slow one.
            self._last_write = self.clock()
        if written is not None:
            self.writes += 1


def _part(result: Any, name: str) -> Any:
    value = result.get(name) if isinstance(result, Mapping) else getattr(result, name, None)
    if value is None:
        raise ValueError(f"compression result has no {name}")
    return value


def _to_status_json(value: Any, model: type[BaseModel]) -> dict[str, Any]:
    """`value` (a pydantic model, dataclass or mapping, snake_case or camelCase) as the status's JSON."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return model.model_validate(value).to_json()
