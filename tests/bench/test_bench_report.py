"""benchmarks/report.py on a recorded run (tests/bench/data/bench-run.json, a QUICK `make bench` trimmed to a
few cells): the Markdown carries the targets and rows computed from that run, marks client-bound rows and
failed benchmarks, and every plot it links is a PNG it wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import report

RECORDED = Path(__file__).resolve().parent / "data" / "bench-run.json"


@pytest.fixture
def run() -> dict:
    return json.loads(RECORDED.read_text())


def rendered(run: dict, folder: Path) -> tuple[str, Path]:
    page = report.render(run, folder)
    return page.read_text(), page.parent


@pytest.fixture(scope="module")
def recorded_report(tmp_path_factory) -> tuple[str, Path]:
    """The recorded run rendered once (matplotlib takes seconds) for the tests that only read it."""
    return rendered(json.loads(RECORDED.read_text()), tmp_path_factory.mktemp("report"))


def test_targets_and_rows_come_from_the_run(run, recorded_report):
    results = run["benchmarks"]["serving"]["results"]
    cell = {(r["server"], r["model"], r["protocol"], r["concurrency"]): r for r in results}
    top = max(r["concurrency"] for r in results)
    text, _ = recorded_report
    for protocol in ("rest", "grpc"):
        ratio = cell["slimserve", "digits-mlp", protocol, top]["rps"] / cell["kserve", "digits-mlp", protocol, top]["rps"]
        assert f"tiny MLP, {protocol}, c32: SlimServe / KServe throughput = {ratio:.2f}x (target >= 3x)" in text
    for r in results:
        if r["concurrency"] == top:
            figure = f"{r['rps']:.0f} | {r['p50_ms']:.2f}" if r.get("rps") else "- | - | - | no request finished"
            assert f"| {r['model']} | {r['protocol']} | {r['server']} | {figure} |" in text
    assert any(not r.get("rps") for r in results), "the recorded run keeps a cell where no request finished"
    for r in run["benchmarks"]["compression_digits"]:
        assert f"| digits CNN | {r['variant']} | {r['sizeRatio']:.2f}x | {r['speedup']:.2f}x | {0.0 - r['dropPoints']:+.2f} (" in text


def test_generation_targets_and_rows_come_from_the_run(run, recorded_report):
    generation = run["benchmarks"]["generation"]
    text, _ = recorded_report
    rate = generation["targets"]["tokens_per_s"]
    assert f"c32 tokens/s = {rate['vs_one_at_a_time']:.2f}x transformers `generate` one request at a time" in text
    assert f"c32 tokens/s = {rate['vs_static_batching']:.2f}x `generate` statically batched by 32" in text
    assert f"the figures from {generation['targets']['client']}" in text
    for r in generation["rows"]:
        client = f"{r['client']} {r['client_cpu_share']:.0%} CPU" if "client" in r else "-"
        assert (f"| {r['row']} | {r['tokens_per_s']:.0f} | {r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | "
                f"{client}") in text
    clients = {r.get("client") for r in generation["rows"] if r.get("concurrency")}
    assert clients == {"perf_analyzer", "python"}, "the recorded run has a native and a Python client"


def test_client_bound_rows_and_failed_benchmarks_are_marked(run, tmp_path):
    results = run["benchmarks"]["serving"]["results"]
    top = max(r["concurrency"] for r in results)
    marked = next(r for r in results if r["concurrency"] == top and r["server"] == "kserve")
    marked["client_bound"] = True
    for r in results:
        if r is not marked:
            r["client_bound"] = False
    run["failed"] = {"grpc_web": "exit status 1"}
    text, _ = rendered(run, tmp_path)
    bound_lines = [line for line in text.splitlines() if f"{marked['client_cpu_share']:.0%} CPU, client-bound |" in line]
    assert bound_lines and all(f"| {marked['server']} |" in line for line in bound_lines), text
    assert "**grpc_web failed**: exit status 1" in text


def test_every_linked_plot_is_a_png_it_wrote(recorded_report):
    text, folder = recorded_report
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert set(linked) == {"serving-throughput.png", "serving-latency.png", "serving-batching.png", "grpc-web.png",
                           "generation.png", "compression.png"}
    for name in linked:
        data = (folder / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name


def test_the_header_names_the_cpu_and_its_int8_features(run, tmp_path):
    from loadgen import measured

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
                       "\nprocessor\t: 1\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    model, flags = measured.cpu_description(str(cpuinfo))
    assert model == "Example CPU 9000" and {"avx2", "avx512_vnni"} <= flags
    assert measured.cpu_description(str(tmp_path / "missing")) == ("?", set())
    run["machine"].update(cpu_model=model, cpu_int8_flags=[f for f in measured.INT8_CPU_FLAGS if f in flags])
    text, _ = rendered(run, tmp_path / "report")
    assert "2 CPUs (Example CPU 9000; avx2, avx512f, avx512_vnni; no avx_vnni, amx_tile)" in text


def test_stolen_cpu_time_is_read_from_proc_stat_and_noted_on_the_rows_it_slowed(run, tmp_path):
    from loadgen import measured

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n")
    before = measured.machine_ticks(str(stat))
    assert before == measured.Ticks(stolen=35, idle=810, all=1000)
    stat.write_text("cpu  200 0 100 1500 10 0 5 185 0 0\n")
    assert measured.steal_share(before, measured.machine_ticks(str(stat))) == 0.15
    assert measured.machine_ticks(str(tmp_path / "missing")) is None
    assert measured.steal_share(None, before) is None and measured.steal_share(before, before) is None

    results = run["benchmarks"]["serving"]["results"]
    top = max(r["concurrency"] for r in results)
    slowed, calm = [r for r in results if r["concurrency"] == top and r.get("rps")][:2]
    slowed["steal_share"], calm["steal_share"] = 0.15, measured.STEAL_NOTE_SHARE / 2
    run["machine"]["steal_share"] = 0.07
    text, _ = rendered(run, tmp_path / "report")
    assert "The hypervisor took 7% of the CPUs' time over the run (steal)" in text
    noted = [line for line in text.splitlines() if "15% stolen" in line]
    assert len(noted) == 1 and f"| {slowed['protocol']} | {slowed['server']} | {slowed['rps']:.0f} |" in noted[0]
    calm_line = next(line for line in text.splitlines()
                     if f"| {calm['protocol']} | {calm['server']} | {calm['rps']:.0f} |" in line)
    assert "stolen" not in calm_line


def test_a_run_waits_for_a_quiet_machine_and_the_report_says_how_busy_it_was(run, tmp_path, recorded_report):
    from loadgen import measured

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 0 0\n")
    first = measured.machine_ticks(str(stat))
    stat.write_text("cpu  400 0 150 1000 10 0 5 35 0 0\n")  # 400 of 600 ticks busy
    assert measured.busy_share(first, measured.machine_ticks(str(stat))) == pytest.approx(2 / 3, abs=0.001)

    # Windows of a machine that is busy 60 %, then 30 %, then 5 % of its CPU time (ticks per window: 100).
    readings = iter([measured.Ticks(0, idle, total) for idle, total in
                     [(0, 0), (40, 100), (40, 100), (110, 200), (110, 200), (205, 300)]])
    said, slept = [], []
    watch = dict(window_s=2.0, ticks=lambda: next(readings), sleep=slept.append, say=said.append)
    assert measured.wait_for_quiet(60, **watch) == {"busy_share": 0.05, "waited_s": 6.0, "quiet": True}
    assert slept == [2.0] * 3 and len(said) == 2 and "60% busy" in said[0] and "30% busy" in said[1]
    readings = iter([measured.Ticks(0, 0, 0), measured.Ticks(0, 40, 100)] * 5)
    assert measured.wait_for_quiet(4, **watch) == {"busy_share": 0.6, "waited_s": 4.0, "quiet": False}
    assert measured.wait_for_quiet(4, window_s=0.0, ticks=lambda: None, sleep=slept.append) == \
        {"busy_share": None, "waited_s": 0.0, "quiet": False}

    run["machine"]["before_start"] = {"busy_share": 0.03, "waited_s": 4.0, "quiet": True}
    text, _ = rendered(run, tmp_path / "quiet")
    assert "Its CPUs were 3% busy just before the start (4 s watched)." in text
    run["machine"]["before_start"] = {"busy_share": 0.6, "waited_s": 180.0, "quiet": False}
    text, _ = rendered(run, tmp_path / "busy")
    assert "**Other work kept the machine busy**: its CPUs were still 60% busy after 180 s of waiting" in text
    older, _ = recorded_report  # recorded before runs waited: nothing said
    assert "busy" not in older.split("\n\n")[1]
