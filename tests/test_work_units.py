"""How `make test`'s workers share the suite (tests/work_units.py), played on xdist's own scheduler."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import pytest_xdist_make_scheduler
from tests.work_units import MACHINE_WIDE_UNIT, hand_out_order, unit_of

TESTS = Path(__file__).resolve().parent


class Worker:
    """What the scheduler asks of a worker: run these tests (indices into its collection), shut down."""

    def __init__(self, name: str):
        self.name = name
        self.gateway = SimpleNamespace(id=name)
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def send_runtest_all(self) -> None:
        raise AssertionError("a scope scheduler hands out units, never everything")

    def shutdown(self) -> None:
        self.shutting_down = True


def test_the_real_node_and_podman_tests_are_one_unit_and_every_other_module_its_own():
    machine_wide = [p.relative_to(TESTS.parent).as_posix() for d in ("realnode", "containers", "autoscaling")
                    for p in sorted((TESTS / d).glob("test_*.py"))]
    assert len(machine_wide) >= 3  # the real node's, the containers' and the autoscaling modules
    assert {unit_of(f"{module}::test_x") for module in machine_wide} == {MACHINE_WIDE_UNIT}
    assert unit_of("tests/operator/test_scale_cluster.py::test_a[1]") == "tests/operator/test_scale_cluster.py"
    assert unit_of("tests/test_cluster.py::test_b") == "tests/test_cluster.py"


@pytest.mark.parametrize("count", [2, 3])
def test_workers_get_whole_units_the_machine_wide_one_first_and_the_operators_next(request, monkeypatch, count):
    monkeypatch.setattr(request.config.option, "tx", [f"{count}*popen"])
    monkeypatch.setattr(request.config.option, "dist", "loadscope")  # as pyproject asks; inside a worker it reads "no"
    collected = sorted([  # as a worker orders its collection
        "tests/batch/test_a.py::test_1", "tests/batch/test_a.py::test_2", "tests/batch/test_a.py::test_3",
        "tests/containers/test_c.py::test_1",
        "tests/operator/test_o.py::test_1", "tests/operator/test_o.py::test_2", "tests/operator/test_o.py::test_3",
        "tests/realnode/test_r.py::test_1", "tests/realnode/test_s.py::test_1",
        "tests/serving/test_s.py::test_1", "tests/serving/test_s.py::test_2",
    ], key=hand_out_order)
    scheduler = pytest_xdist_make_scheduler(request.config, None)
    workers = [Worker(f"gw{index}") for index in range(count)]
    for worker in workers:
        scheduler.add_node(worker)
        scheduler.add_node_collection(worker, collected)
    scheduler.schedule()
    done = {worker.name: 0 for worker in workers}
    while any(done[worker.name] < len(worker.sent) for worker in workers):  # each worker runs what it was sent
        for worker in workers:
            while done[worker.name] < len(worker.sent):
                scheduler.mark_test_complete(worker, worker.sent[done[worker.name]])
                done[worker.name] += 1
    assert scheduler.tests_finished

    ran = {worker.name: [collected[i] for i in worker.sent] for worker in workers}
    assert sorted(sum(ran.values(), [])) == sorted(collected)  # each test once
    machine_wide = [test for test in collected if unit_of(test) == MACHINE_WIDE_UNIT]
    assert len(machine_wide) == 3 and ran["gw0"][:3] == machine_wide  # the whole unit, handed out first
    operators = [test for test in collected if test.startswith("tests/operator/")]
    assert ran["gw1"][:3] == operators  # the other worker's session operator starts before namespaces pile up
    units = [{unit_of(test) for test in tests} for tests in ran.values()]
    assert sum(len(u) for u in units) == len(set().union(*units))  # a unit's tests stay on one worker, in order
    for tests in ran.values():
        for unit in {unit_of(t) for t in tests}:
            mine = [t for t in tests if unit_of(t) == unit]
            assert mine == [t for t in collected if unit_of(t) == unit]


def test_without_loadscope_xdist_schedules_as_asked(request, monkeypatch):
    monkeypatch.setattr(request.config.option, "dist", "load")
    assert pytest_xdist_make_scheduler(request.config, None) is None
