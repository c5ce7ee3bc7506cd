"""Small helpers for tests against the local control plane: kubectl in, JSON out, polling."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

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


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.3) -> Any:
    """Poll `check` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def events_of(cp, namespace: str, name: str, kind: str | None = None) -> list[tuple[str, str, str]]:
    selector = f"involvedObject.name={name}" + (f",involvedObject.kind={kind}" if kind else "")
    found = get(cp, namespace, "events", "--field-selector", selector)["items"]
    return [(event["type"], event["reason"], event.get("message", "")) for event in found]
