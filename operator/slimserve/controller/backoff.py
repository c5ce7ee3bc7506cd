"""The one back-off rule of the operator's retries: a first delay, doubled for each failure in a row, capped."""

from __future__ import annotations

# Past this many doublings every delay here is long capped; the bound keeps the power small.
_MAX_DOUBLINGS = 32


def doubling_delay(first: float, doublings: int, cap: float) -> float:
    """`first` doubled `doublings` times (none when 0 or less), at most `cap`."""
    return min(first * 2 ** min(max(doublings, 0), _MAX_DOUBLINGS), cap)
