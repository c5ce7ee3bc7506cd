"""Fixtures for the controller tests: CRDs installed on the real control plane, and the operator as a process."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests import ports
from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, wait_established, wait_for

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"

# The node pools of the test cluster's kwok nodes (see tests/cluster/kwok/nodes.yaml).
TEST_OPERATOR_CONFIG = {
    "images": {
        "compressor": {"repository": "registry.test/slimserve/compressor", "tag": "test", "pullPolicy": "IfNotPresent"},
        "server": {"repository": "registry.test/slimserve/server", "tag": "test", "pullPolicy": "IfNotPresent"},
        "compressorGpu": {"repository": "registry.test/slimserve/compressor", "tag": "test-cuda"},
        "serverGpu": {"repository": "registry.test/slimserve/server", "tag": "test-cuda"},
    },
    "nodePools": {
        "cpu": {"nodeSelector": {"slimserve.io/pool": "cpu"}},
        "gpu": {
            "nodeSelector": {"slimserve.io/pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "gpuResourceName": "nvidia.com/gpu",
        },
    },
}


@pytest.fixture(scope="session")
def crds(control_plane) -> None:
    """Both CRDs installed and established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CRDS))
    wait_established(control_plane, *(yaml.safe_load(path.read_text())["metadata"]["name"] for path in sorted(CRDS.glob("*.yaml"))))


PORT_ATTEMPTS = 3


class _PortTaken(Exception):
    """A port went to another process between `ports.free_port` and the operator's bind."""


class OperatorProcess:
    """`slimserve operator` as a real process against the test cluster; restartable."""

    def __init__(self, control_plane, workdir: Path, *, kubeconfig: Path | None = None, extra_args: tuple = (),
                 metrics: bool = False, wait_handling: bool = False):
        self.control_plane = control_plane
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = kubeconfig or control_plane.kubeconfig
        self.extra_args = extra_args
        self.config_path = workdir / "operator.yaml"
        self.config_path.write_text(yaml.safe_dump(TEST_OPERATOR_CONFIG))
        self.log_path = workdir / "operator.log"
        self.process: subprocess.Popen | None = None
        self.port = 0
        # With `metrics`, the operator also serves /metrics on a port chosen, like the liveness one, per attempt.
        self.metrics = metrics
        self.metrics_port = 0
        # With `wait_handling`, every start (a restart too) returns once the operator has handled a resource.
        self.wait_handling = wait_handling
        self._attempt_log_start = 0
        # This process's own liveness path: another worker's operator that won the race for the same free port
        # answers 404 there, never a 200 that would pass for this one's.
        self.live_path = f"/healthz-{secrets.token_hex(4)}"

    def start(self) -> "OperatorProcess":
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = ports.free_port()
            self.metrics_port = ports.free_port() if self.metrics else 0
            try:
                self._start()
            except _PortTaken:
                if attempt == PORT_ATTEMPTS:
                    raise RuntimeError(f"operator found a port taken {attempt} times:\n{self.logs()}")
                continue
            if self.wait_handling:
                _wait_handling(self.control_plane)
            return self
        raise AssertionError("unreachable")

    def _start(self) -> None:
        env = {
            **self.control_plane.env(),
            "KUBECONFIG": str(self.kubeconfig),
            "SLIMSERVE_OPERATOR_CONFIG": str(self.config_path),
            "PYTHONUNBUFFERED": "1",
        }
        self._attempt_log_start = len(self.logs())
        log = self.log_path.open("ab")
        metrics_flags = [f"--metrics-port={self.metrics_port}"] if self.metrics else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "slimserve.cli.main", "operator", "--liveness",
             f"http://127.0.0.1:{self.port}{self.live_path}", *self.extra_args, *metrics_flags],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_live()

    def _wait_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                # Kopf's liveness server and the metrics endpoint both say so when their port is taken; this
                # attempt's own lines only, as the log is appended to across attempts and restarts.
                if "address already in use" in self.logs()[self._attempt_log_start:].lower():
                    self.process = None
                    raise _PortTaken()
                raise RuntimeError(f"operator exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.live_path}", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"operator not live after {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None

    def restart(self) -> "OperatorProcess":
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def operator(control_plane, crds, tmp_path_factory) -> Iterator[OperatorProcess]:
    """One operator for the session with admin credentials, watching every namespace but the solo ones."""
    proc = OperatorProcess(
        control_plane, tmp_path_factory.mktemp("operator"),
        extra_args=("--namespace", f"!{SOLO_NAMESPACE_PREFIX}*"),  # one Kopf pattern: all but the solo ones
        wait_handling=True,  # its restarts within tests too
    ).start()
    try:
        yield proc
    finally:
        proc.stop()
        if os.environ.get("SLIMSERVE_SHOW_OPERATOR_LOG"):
            sys.stderr.write(proc.logs())


FAILURE_LOG_LINES = 80


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used the session operator shows the end of its log: what the operator did, or why it
    did not, is then in the report (in CI too), not only in a temporary directory."""
    outcome = yield
    report = outcome.get_result()
    proc = item.funcargs.get("operator") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(proc, OperatorProcess):
        lines = proc.logs().splitlines()[-FAILURE_LOG_LINES:]
        report.sections.append((f"the operator's log, last {len(lines)} lines", "\n".join(lines)))


def _wait_handling(control_plane, timeout: float = 300) -> None:
    """Until the operator has handled a resource: live is not yet watching. With a namespace pattern Kopf watches
    each namespace it matches, and it runs no handler at all until every watch of an indexed resource has listed
    its objects once: that takes time in proportion to the namespaces and the API server's load, at the
    session's start and at every restart, and longer while a watch is refused and retried. A test's own
    timeouts should not pay for that. The probe, on an unknown node pool, is refused at once and never makes
    a Job."""
    namespace = control_plane.create_namespace("operator-probe")
    try:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump({
            "apiVersion": "slimserve.io/v1alpha1", "kind": "CompressionJob", "metadata": {"name": "probe"},
            "spec": {"model": {"uri": "builtin://digits-cnn"}, "nodePool": "none-such",
                     "steps": [{"quantize": {"method": "int8-dynamic"}}], "output": {"uri": "pvc://models/probe"}},
        }))
        wait_for("the operator's first status write", lambda: json.loads(control_plane.kubectl(
            "get", "-n", namespace, "compressionjob", "probe", "-o", "json").stdout).get("status", {}).get("phase"),
            timeout=timeout)
    finally:
        control_plane.delete_namespace(namespace, wait=False)


@pytest.fixture
def operator_factory(control_plane, crds, tmp_path):
    """Start extra operators (another ServiceAccount, namespaced mode); all are stopped after the test."""
    started: list[OperatorProcess] = []

    def start(**kwargs) -> OperatorProcess:
        proc = OperatorProcess(control_plane, tmp_path / f"operator-{len(started)}", **kwargs)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
