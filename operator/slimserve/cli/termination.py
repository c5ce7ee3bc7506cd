"""A pod command's failure in one line: on stderr, and in the termination log, whose content Kubernetes shows as
the container's termination message (and the operator puts in the resource's status)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from slimserve.api.workload import TERMINATION_LOG

KUBERNETES_TERMINATION_LOG = Path("/dev/termination-log")  # the container's default terminationMessagePath
LINE_LIMIT = 4000  # Kubernetes keeps 4096 bytes of it


def report_failure(command: str, reason: str, message: str) -> None:
    """`slimserve COMMAND: Reason: message` on stderr, `Reason: message` in the termination log; the message's
    lines joined into one."""
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"slimserve {command}: {reason}: {one_line}", file=sys.stderr)
    write_termination_log(f"{reason}: {one_line}")


def write_termination_log(line: str) -> None:
    """Into $SLIMSERVE_TERMINATION_LOG, else into Kubernetes' file where there is one (not outside a pod)."""
    configured = TERMINATION_LOG.read(os.environ)
    path = Path(configured) if configured else KUBERNETES_TERMINATION_LOG
    if not configured and not (path.exists() and os.access(path, os.W_OK)):
        return
    try:
        path.write_text(line[:LINE_LIMIT] + "\n", encoding="utf-8")
    except OSError:
        pass  # best effort: stderr already has the reason
