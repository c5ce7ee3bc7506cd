"""Labels of everything the operator creates, merged in one place."""

from __future__ import annotations

from slimserve import __version__

MANAGED_BY = "slimserve-operator"


def standard_labels(*, instance: str, component: str) -> dict[str, str]:
    """The `app.kubernetes.io/*` labels: `instance` is the owning resource's name."""
    return {
        "app.kubernetes.io/name": "slimserve",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "slimserve",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": __version__,
    }


def selector_labels(*, instance: str, component: str) -> dict[str, str]:
    """The stable subset used in selectors (never include the version: selectors are immutable)."""
    return {
        "app.kubernetes.io/name": "slimserve",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
    }


def merge_labels(*label_sets: dict[str, str] | None) -> dict[str, str]:
    """Later sets win; None is skipped. User labels go first so ours cannot be overridden."""
    merged: dict[str, str] = {}
    for labels in label_sets:
        merged.update(labels or {})
    return merged
