"""How many threads torch may use: the container's CPU limit, not the host's core count.

In a pod with `limits.cpu: 2` on a 64-core node, torch would otherwise start 64 threads, and the CFS
quota would throttle them all; the limit is in cgroup v2 `cpu.max` or cgroup v1 `cpu.cfs_quota_us`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (e.g. 1.5), or None when unlimited or unknown."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return _ratio(quota, period or "100000")
    for v1_dir in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu", root):
        quota_file, period_file = v1_dir / "cpu.cfs_quota_us", v1_dir / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = quota_file.read_text().strip()
            if quota.startswith("-"):
                return None
            return _ratio(quota, period_file.read_text().strip())
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a cpuset), else the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_count(cpu_limit: float | None, cpus: int) -> int:
    """Threads for a quota: whole CPUs of it (rounded down, at least 1), never more than the CPUs we have."""
    if cpu_limit is None:
        return max(1, cpus)
    return max(1, min(cpus, math.floor(cpu_limit)))


def configure_torch_threads(requested: int = 0, root: Path = CGROUP_ROOT) -> int:
    """Set torch's intra-op threads (`requested`, or 0 for the container's limit); returns the count."""
    import torch

    count = requested if requested > 0 else thread_count(cgroup_cpu_limit(root), available_cpus())
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(1)  # one model call at a time: inter-op parallelism buys nothing
    except RuntimeError:
        pass  # already set, or parallel work already started in this process
    log.info("torch uses %d threads", count)
    return count
