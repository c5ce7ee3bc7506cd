"""torch's intra-op thread count for one block of work, restored after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on `count` threads: a measurement at a stated thread count, or training whose result must
    not depend on the machine's cores (the order of a multi-threaded sum does)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
