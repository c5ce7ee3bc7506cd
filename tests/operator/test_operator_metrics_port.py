"""`slimserve operator --metrics-port`: a taken port is one clear line, and the test harness picks another."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from slimserve import __version__
from slimserve.controller.metrics import serve_metrics
from tests import ports
from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_taken_metrics_port_ends_the_operator_with_one_line_naming_it():
    with _listening_socket() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as stopped:
            serve_metrics(port, namespaced=False, address="127.0.0.1")
    assert str(stopped.value) == (
        f"slimserve operator: cannot serve metrics on 127.0.0.1:{port} (--metrics-port): address already in use")


@pytest.mark.cluster
def test_the_harness_retries_an_operator_whose_metrics_port_was_taken(control_plane, operator_factory, monkeypatch):
    """The race CI lost: another process binds the metrics port between the harness choosing it and the operator
    binding it. The operator exits saying so, and the harness starts it again on fresh ports."""
    with _listening_socket() as taken:
        taken_port = taken.getsockname()[1]
        free_port = ports.free_port
        chosen = iter([free_port(), taken_port])  # the first attempt: liveness, then the taken metrics port
        monkeypatch.setattr(ports, "free_port", lambda: next(chosen, None) or free_port())
        operator = operator_factory(extra_args=("--namespace", f"{SOLO_NAMESPACE_PREFIX}metrics-port"), metrics=True)
        assert operator.metrics_port != taken_port
        assert f"0.0.0.0:{taken_port} (--metrics-port): address already in use" in operator.logs()
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    assert f'slimserve_operator_info{{mode="namespaced",version="{__version__}"}} 1.0' in text
