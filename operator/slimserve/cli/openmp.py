"""OpenMP's wait policy for the commands that time models or serve them on this machine."""

from __future__ import annotations

import os

ENV_WAIT_POLICY = "OMP_WAIT_POLICY"


def wait_passively() -> None:
    """OpenMP threads sleep at barriers instead of spinning (as in the compressor and server images), unless
    the environment says otherwise. Spinning threads of one model take the cores from the next one timed, and
    from other processes on a shared machine: side by side, an eager and a compiled model then take tens of
    milliseconds for what takes a fraction of one. Call it before torch is imported (OpenMP reads it once)."""
    os.environ.setdefault(ENV_WAIT_POLICY, "PASSIVE")
