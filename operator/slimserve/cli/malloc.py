"""glibc malloc's arenas for the compressor: few, so that memory one thread frees is reused by the next."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV_ARENA_MAX = "MALLOC_ARENA_MAX"
M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h
COMPRESSOR_ARENAS = 2


def limit_arenas(count: int = COMPRESSOR_ARENAS) -> bool:
    """Cap glibc's malloc arenas at `count` unless MALLOC_ARENA_MAX says otherwise; False where it could not
    (another C library). glibc gives threads that allocate at the same time arenas of their own (up to eight
    per core), and what is freed in one arena serves only that one: the tokenizer's and torch's threads then
    hold tens of MB each beyond what the run needs at once. Call it early, before threads allocate."""
    if ENV_ARENA_MAX in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False
