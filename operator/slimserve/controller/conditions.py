"""Status conditions per the Kubernetes API conventions.

`lastTransitionTime` changes only when a condition's status changes, so `kubectl wait`, Argo CD and Flux's
kstatus see stable conditions; every condition records the generation it was computed for.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def find_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str = "",
    *,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new list with `type_` set; the other conditions are kept as they are."""
    if status not in (TRUE, FALSE, UNKNOWN):
        raise ValueError(f"condition status must be True, False or Unknown, not {status!r}")
    previous = find_condition(conditions, type_)
    transition = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    updated = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition or now_rfc3339(),
        "observedGeneration": generation,
    }
    return [c for c in conditions or [] if c.get("type") != type_] + [updated]


def condition_changed(before: list[dict[str, Any]] | None, after: list[dict[str, Any]], type_: str) -> bool:
    """True when `type_` changed status or reason: the transitions worth a Kubernetes Event."""
    old, new = find_condition(before, type_), find_condition(after, type_)
    if new is None:
        return False
    return old is None or (old.get("status"), old.get("reason")) != (new.get("status"), new.get("reason"))
