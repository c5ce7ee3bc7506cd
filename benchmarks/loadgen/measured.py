"""A load generator run as a child process, with the CPU time it spent.

The CPU time counts every thread of the client and nothing else; its share is of the CPUs this process may
run on, over the child's wall time. A client that takes as much CPU as the server it drives, or a large share
of the machine, competes with that server for the same cores: the row is then marked client-bound
(`client_bound`), and its throughput says as much about the client as about the server.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

# A client using this share of the machine's CPU (on 2 cores: 0.8 of one) is taken as the limit of its row.
CLIENT_BOUND_SHARE = 0.4
# A row says how much CPU the hypervisor took from the machine while it ran (steal) from this share on: on a
# shared virtual machine that time is lost to server and client alike, and the row is slower for it.
STEAL_NOTE_SHARE = 0.05
# A run starts once the machine's CPUs spent less than this share of a short window on anything: work left
# from before (a test suite, a build) takes cores from the servers and clients alike.
QUIET_SHARE = 0.10


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float  # user + system time of the child, all its threads


def run(command: list[str], timeout_s: float, env: dict[str, str] | None = None) -> Finished:
    """Run `command` to its end (killed after `timeout_s`), with its output and its own CPU time.

    The CPU time is the growth of RUSAGE_CHILDREN across the run: the only child reaped meanwhile is this one
    (the servers a benchmark started are reaped when they stop, after their load generators).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    wall_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Finished(done.returncode, done.stdout, done.stderr, wall_s, cpu_s)


def client_fields(client: str, finished: Finished) -> dict:
    """The client columns of a result row."""
    return client_columns(client, finished.cpu_s, finished.wall_s)


def client_columns(client: str, cpu_s: float, wall_s: float) -> dict:
    """The client columns of a row whose client spent `cpu_s` of CPU over `wall_s` seconds."""
    share = cpu_s / (wall_s * cpu_count()) if wall_s > 0 else 0.0
    return {"client": client, "client_cpu_s": round(cpu_s, 3), "client_cpu_share": round(share, 3)}


def mark_client_bound(row: dict, server_cpu_s: float | None) -> dict:
    """Set `client_bound` on a row: its client took CLIENT_BOUND_SHARE of the machine, or at least as much CPU
    as the server over the same run (`server_cpu_s`, when known)."""
    cpu = row.get("client_cpu_s")
    if cpu is None:
        return row
    row["server_cpu_s"] = round(server_cpu_s, 3) if server_cpu_s is not None else None
    row["client_bound"] = row.get("client_cpu_share", 0) >= CLIENT_BOUND_SHARE or (
        server_cpu_s is not None and cpu >= server_cpu_s)
    return row


def against_server(server_pid: int, run: Callable[[], dict]) -> dict:
    """The row of one measured run (`run()`) with what the machine did meanwhile: the server's CPU seconds, the
    client marked as the limit where it was (`mark_client_bound`), and the share of the CPUs' time the
    hypervisor took (`steal_share`). The one wrapper every benchmark's load generator runs in."""
    server_cpu_s, ticks = process_cpu_s(server_pid), machine_ticks()
    row = run()
    row["steal_share"] = steal_share(ticks, machine_ticks())
    return mark_client_bound(row, process_cpu_s(server_pid) - server_cpu_s)


class Ticks(NamedTuple):
    """Clock ticks of the machine's CPUs so far, from /proc/stat's `cpu` line."""

    stolen: int  # the hypervisor ran something else while a CPU had work
    idle: int  # idle, or waiting on I/O
    all: int


def machine_ticks(stat: str = "/proc/stat") -> Ticks | None:
    """The machine's `Ticks` so far; None where /proc/stat's `cpu` line is not there."""
    try:
        with open(stat) as lines:
            fields = lines.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    return Ticks(stolen=ticks[7], idle=ticks[3] + ticks[4], all=sum(ticks))


def _ticks_between(before: Ticks | None, after: Ticks | None) -> int | None:
    """All the CPUs' ticks between two `machine_ticks` readings; None when either is unknown or none passed."""
    if before is None or after is None or after.all <= before.all:
        return None
    return after.all - before.all


def steal_share(before: Ticks | None, after: Ticks | None) -> float | None:
    """The share of the machine's CPU time stolen between two `machine_ticks` readings; None when unknown."""
    total = _ticks_between(before, after)
    return None if total is None else round((after.stolen - before.stolen) / total, 3)


def busy_share(before: Ticks | None, after: Ticks | None) -> float | None:
    """The share of the machine's CPU time spent on anything (any process, the kernel, steal) between two
    `machine_ticks` readings; None when unknown."""
    total = _ticks_between(before, after)
    return None if total is None else round(1 - (after.idle - before.idle) / total, 3)


def wait_for_quiet(max_wait_s: float, window_s: float = 2.0, ticks: Callable[[], Ticks | None] = machine_ticks,
                   sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] = print) -> dict:
    """Watch the machine's CPUs in windows of `window_s` until one is busy less than QUIET_SHARE, for at most
    `max_wait_s`: {"busy_share": of the last window, "waited_s", "quiet"}. A machine whose /proc/stat says
    nothing is not waited for (busy_share None, quiet False)."""
    waited = 0.0
    while True:
        before = ticks()
        sleep(window_s)
        busy, waited = busy_share(before, ticks()), waited + window_s
        quiet = busy is not None and busy < QUIET_SHARE
        if quiet or busy is None or waited >= max_wait_s:
            return {"busy_share": busy, "waited_s": round(waited, 1), "quiet": quiet}
        say(f"waiting for a quiet machine: its CPUs {busy:.0%} busy over the last {window_s:g} s "
            f"(starting under {QUIET_SHARE:.0%}, or after {max_wait_s:g} s)")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a running process and its descendants (a server may fork workers),
    all their threads, from /proc."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:  # it ended meanwhile
            continue
    return total


# CPU features that decide which int8 GEMM runs (quant/kernels.py): without them torch._int_mm takes a slow path.
INT8_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")


def machine() -> dict:
    """What a run's figures depend on besides the code: CPUs (model, int8 features), the load average when it
    ended, the threshold."""
    model, flags = cpu_description()
    return {"cpus": cpu_count(), "cpu_model": model, "cpu_int8_flags": [f for f in INT8_CPU_FLAGS if f in flags],
            "load_average": [round(x, 2) for x in os.getloadavg()], "client_bound_share": CLIENT_BOUND_SHARE}


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The first CPU's model name and feature flags (Linux); ("?", empty) where /proc/cpuinfo is not there."""
    model, flags = "?", set()
    try:
        with open(cpuinfo) as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "?":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model, flags


def describe(row: dict) -> str:
    """'ghz 24% CPU' or 'h2load 61% CPU, client-bound, 12% stolen': a row's client, its share of the machine's
    CPU, the mark, and the share the hypervisor took meanwhile when it reached STEAL_NOTE_SHARE."""
    if "client" not in row:
        return "-"
    stolen = row.get("steal_share") or 0
    return (f"{row['client']} {row.get('client_cpu_share', 0):.0%} CPU" + (", client-bound" if row.get("client_bound") else "")
            + (f", {stolen:.0%} stolen" if stolen >= STEAL_NOTE_SHARE else ""))


def median_round(rounds: list[dict]) -> dict:
    """The round with the median throughput (its own p50/p99 and client columns with it); errors summed."""
    ranked = sorted((r for r in rounds if r.get("rps")), key=lambda r: r["rps"])
    errors = sum(abs(r.get("errors", 0)) for r in rounds)
    if not ranked:  # every round failed: the first failure says why
        failures = [r["failure"] for r in rounds if "failure" in r]
        return {"requests": 0, "errors": errors, **({"failure": failures[0]} if failures else {})}
    return {**ranked[len(ranked) // 2], "errors": errors, "rounds": len(rounds)}
