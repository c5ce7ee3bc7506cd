"""How `pytest -n N` (make test: two workers) hands out the suite: in units of work, one worker each.

A unit is a test module, so that its module fixtures are made once and its tests run in order on one worker. The
real node and the podman images are one per machine: the tests under MACHINE_WIDE_DIRS make one unit together,
handed out first (the workers order it first), so that this longest unit never ends the run alone.
"""

from __future__ import annotations

MACHINE_WIDE_UNIT = "machine-wide"
MACHINE_WIDE_DIRS = ("tests/containers/", "tests/realnode/")


def unit_of(nodeid: str) -> str:
    """The unit of work of a test, by its node id."""
    module = nodeid.split("::", 1)[0]
    return MACHINE_WIDE_UNIT if module.startswith(MACHINE_WIDE_DIRS) else module


def machine_wide_first(nodeid: str) -> bool:
    """A sort key that puts the machine-wide unit's tests first and keeps the others' order."""
    return unit_of(nodeid) != MACHINE_WIDE_UNIT


def module_scheduling(config, log):
    """xdist's --dist loadscope with units as `unit_of` makes them. (xdist_group marks cannot join modules:
    pytest 9.2 no longer reads the node ids xdist rewrites for them.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return ModuleScheduling(config, log)
