"""tests/ports.py: the ports the suite's servers get are outside the kernel's ephemeral range and never bound."""

from __future__ import annotations

import itertools
import socket

from tests import ports


def test_ports_come_from_this_workers_block_below_the_ephemeral_range(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    handed_out = [ports.free_port() for _ in range(5)]
    assert len(set(handed_out)) == 5
    assert all(port in range(ports.FIRST_PORT + ports.BLOCK, ports.FIRST_PORT + 2 * ports.BLOCK) for port in handed_out)
    assert max(handed_out) < ports.ephemeral_floor()


def test_a_bound_port_is_passed_over(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    block = ports.worker_block()
    start = next(offset for offset in range(ports.BLOCK - 1) if ports._unbound(block[offset]))
    monkeypatch.setattr(ports, "_offsets", itertools.count(start))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", block[start]))
        holder.listen()
        handed_out = ports.free_port()  # the offsets begin at the bound port
    assert handed_out != block[start] and handed_out in block


def test_more_workers_than_blocks_fall_back_to_the_kernels_choice(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw99")
    port = ports.free_port()
    assert port >= ports.ephemeral_floor()
