"""How an invalid spec reads, wherever it is found: one `field.path: message` line per problem.

Paths are written as `kubectl explain` writes them (`spec.steps[0].prune.amount`), so `slimserve run`,
`slimserve compress` and the operator's status name a field the same way the API server does.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from pydantic import ValidationError


def field_path(loc: Iterable[Any]) -> str:
    """('spec', 'steps', 0, 'prune', 'amount') -> 'spec.steps[0].prune.amount'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def field_errors(exc: ValidationError, root: tuple[str, ...] = (), aliases: Mapping[str, str] | None = None) -> list[str]:
    """One line per problem of `exc`, its path under `root` (("spec",) when a spec was validated alone).

    `aliases` shows a field under another name, e.g. {"spec.output.uri": "--output"} where an option set it.
    """
    lines = []
    for error in exc.errors():
        # Union members add their class name to the location; it is not a field.
        loc = [part for part in error["loc"] if not (isinstance(part, str) and part[:1].isupper())]
        path = field_path([*root, *loc])
        path = (aliases or {}).get(path, path)
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
        # A cross-field rule names its own field (its message is the CRD's CEL message).
        lines.append(message if not path or message.startswith("spec.") else f"{path}: {message}")
    return lines
