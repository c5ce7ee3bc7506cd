"""Small helpers for tests against the local control plane: kubectl in, JSON out, polling."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

# Namespaces the session's admin operator leaves alone: tests that prove what an operator with other rights
# (the chart's ServiceAccount) does on its own create their namespaces with this prefix.
SOLO_NAMESPACE_PREFIX = "solo-"


def apply(cp, namespace: str, *objects: dict) -> None:
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def get(cp, namespace: str, *what: str) -> dict:
    return json.loads(cp.kubectl("get", "-n", namespace, *what, "-o", "json").stdout)


def exists(cp, namespace: str, kind: str, name: str) -> bool:
    return cp.kubectl("get", "-n", namespace, kind, name, "--ignore-not-found", "-o", "name").stdout.strip() != ""


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


POLL_BACKOFF = 1.5
POLL_GAP_CAP_S = 1.0


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.3) -> Any:
    """Poll `check` until it returns something truthy (returned), or fail naming `what`.

    The gap between polls starts at `interval` and grows to at most a second (or `interval`, if longer): most
    checks run kubectl, a process each, and a long wait at the first gap spent a CPU the suite shares."""
    deadline = time.monotonic() + timeout
    gap = interval
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(gap)
        gap = min(gap * POLL_BACKOFF, max(interval, POLL_GAP_CAP_S))


def events_of(cp, namespace: str, name: str, kind: str | None = None) -> list[tuple[str, str, str]]:
    selector = f"involvedObject.name={name}" + (f",involvedObject.kind={kind}" if kind else "")
    found = get(cp, namespace, "events", "--field-selector", selector)["items"]
    return [(event["type"], event["reason"], event.get("message", "")) for event in found]


def wait_for_event(cp, namespace: str, name: str, *, reason: str, message: str = "", kind: str | None = None,
                   timeout: float = 60) -> str:
    """Wait for an Event about `name` with `reason` whose message contains `message`; returns that message.

    For tests that prove something did not happen: an Event posted after the handling in question says the
    handler ran, so what it did not do by then, it did not do.
    """
    def posted() -> str | None:
        return next((text for _, why, text in events_of(cp, namespace, name, kind) if why == reason and message in text),
                    None)

    return wait_for(f"an Event {reason} {message!r} about {name}", posted, timeout)


# Kopf's record of the object as its handlers last handled it (the diff base set in controller/app.py).
LAST_HANDLED_ANNOTATION = "kopf.slimserve.io/last-handled-configuration"


def last_handled(obj: dict) -> dict:
    """What the operator's Kopf handlers last handled of `obj`: its spec, labels and annotations ({} before any)."""
    recorded = (obj["metadata"].get("annotations") or {}).get(LAST_HANDLED_ANNOTATION)
    return json.loads(recorded) if recorded else {}


def wait_established(cp, *names: str, timeout: float = 60) -> None:
    """Each CRD named has condition Established=True. (`kubectl wait` exits with an error, instead of waiting,
    when it reads a CRD the API server has not yet given any condition.)"""
    def established(name: str) -> bool:
        crd = json.loads(cp.kubectl("get", "crd", name, "-o", "json").stdout)
        return any(c["type"] == "Established" and c["status"] == "True" for c in crd.get("status", {}).get("conditions") or [])

    for name in names:
        wait_for(f"CRD {name} established", lambda: established(name), timeout=timeout)


@contextlib.contextmanager
def crd_installed(cp, path: Path) -> Iterator[str]:
    """The CRD in `path` applied and established for the block, then deleted (it is cluster-wide); its name."""
    name = next(doc for doc in yaml.safe_load_all(path.read_text()) if doc)["metadata"]["name"]
    try:
        cp.kubectl("apply", "--server-side", "-f", str(path))
        wait_established(cp, name)
        yield name
    finally:
        cp.kubectl("delete", "crd", name, "--ignore-not-found", "--wait=true", timeout=120)
