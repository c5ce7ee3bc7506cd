"""Torch threads follow the container's CPU quota (cgroup v2 and v1), not the host's core count."""

from __future__ import annotations

import pytest
import torch

from slimserve.serving.threads import cgroup_cpu_limit, configure_torch_threads, thread_count


@pytest.mark.parametrize(
    ("content", "limit"),
    [("200000 100000\n", 2.0), ("150000 100000", 1.5), ("50000 100000", 0.5), ("max 100000\n", None)],
)
def test_cgroup_v2_cpu_max(tmp_path, content, limit):
    (tmp_path / "cpu.max").write_text(content)
    assert cgroup_cpu_limit(tmp_path) == limit


@pytest.mark.parametrize(("quota", "period", "limit"), [("300000", "100000", 3.0), ("-1", "100000", None)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, period, limit):
    cpu = tmp_path / "cpu,cpuacct"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text(quota)
    (cpu / "cpu.cfs_period_us").write_text(period)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None


@pytest.mark.parametrize(
    ("limit", "cpus", "threads"),
    [(2.0, 64, 2), (1.5, 64, 1), (0.5, 64, 1), (8.0, 4, 4), (None, 6, 6), (None, 0, 1)],
)
def test_thread_count_is_whole_cpus_of_the_quota_within_the_cpus_we_have(limit, cpus, threads):
    assert thread_count(limit, cpus) == threads


def test_configure_torch_threads_applies_the_container_limit(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000")
    before = torch.get_num_threads()
    try:
        assert configure_torch_threads(0, root=tmp_path) == 1
        assert torch.get_num_threads() == 1
        assert configure_torch_threads(2, root=tmp_path) == 2  # an explicit count wins
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
