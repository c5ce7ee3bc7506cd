"""Ports for the servers the tests start, chosen so that nothing else is handed the same one before they bind.

Binding port 0 and closing the socket yields a port from the kernel's ephemeral range: the pool every outgoing
connection (kubectl, API clients, probes) draws its source port from, and the pool the other xdist worker's
port-0 binds draw from too. Between the choice and the server's bind one of them can take it. These ports come
from below that range instead, one block per xdist worker, each confirmed unbound when handed out. A server
should still retry on "address already in use" where it can: a process outside the suite may hold the port.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

FIRST_PORT = 20000
BLOCK = 1500  # ports per xdist worker
_offsets = itertools.count()


def ephemeral_floor() -> int:
    """The first port of the kernel's range for outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def worker_block() -> range:
    """This process's ports: xdist sets PYTEST_XDIST_WORKER (gw0, gw1, ...); a run without xdist is worker 0."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0
    first = FIRST_PORT + index * BLOCK
    return range(first, first + BLOCK)


def free_port() -> int:
    block = worker_block()
    if block.stop > ephemeral_floor():  # more workers than blocks fit below the range
        return _kernel_chosen_port()
    for _ in range(BLOCK):
        port = block[next(_offsets) % BLOCK]
        if _unbound(port):
            return port
    raise RuntimeError(f"every port in {block.start}-{block.stop - 1} is bound")


def _unbound(port: int) -> bool:
    # On the wildcard address and without SO_REUSEADDR: free for a server on any address, even one that sets it.
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _kernel_chosen_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
