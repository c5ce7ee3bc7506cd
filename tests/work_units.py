"""How `pytest -n N` (make test: three workers) hands out the suite: in units of work, one worker each.

A unit is a test module, so that its module fixtures are made once and its tests run in order on one worker. The
real node and the podman images are one per machine: the tests under MACHINE_WIDE_DIRS (the autoscaling ones run
beside the real node) make one unit together,
handed out first (the workers order it first), so that this longest unit never ends the run alone. The operator's
modules come next: a worker's session operator starts with its first one, and watching every namespace the
worker's earlier tests left Terminating, one started late took minutes to handle its first resource.
"""

from __future__ import annotations

MACHINE_WIDE_UNIT = "machine-wide"
MACHINE_WIDE_DIRS = ("tests/containers/", "tests/realnode/", "tests/autoscaling/")
OPERATOR_DIR = "tests/operator/"  # the session operator's tests (tests/operator/conftest.py)


def unit_of(nodeid: str) -> str:
    """The unit of work of a test, by its node id."""
    module = nodeid.split("::", 1)[0]
    return MACHINE_WIDE_UNIT if module.startswith(MACHINE_WIDE_DIRS) else module


def hand_out_order(nodeid: str) -> int:
    """A sort key: the machine-wide unit's tests first, then the operator's, then the rest, each in its order."""
    if unit_of(nodeid) == MACHINE_WIDE_UNIT:
        return 0
    return 1 if nodeid.startswith(OPERATOR_DIR) else 2


def module_scheduling(config, log):
    """xdist's --dist loadscope with units as `unit_of` makes them. (xdist_group marks cannot join modules:
    pytest 9.2 no longer reads the node ids xdist rewrites for them.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return ModuleScheduling(config, log)
