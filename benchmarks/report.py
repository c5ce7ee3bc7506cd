"""The benchmark report: one run's JSON (benchmarks/run_all.py) as a short Markdown page with PNG plots.

    .venv/bin/python benchmarks/report.py RUN.json [--out DIR]      # DIR defaults to RUN.json without .json

The page leads with the targets, then the serving figures at the highest concurrency measured (native clients,
the Python client's throughput beside them, client-bound rows marked), then the plots: throughput against
concurrency per server and protocol, latency percentiles, batching on and off, gRPC-Web against gRPC, a decoder's
streamed tokens/s and time to first token against concurrency per client (transformers `generate` beside), and
compression size, speed and accuracy. Everything else is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # noqa: E402  (the one definition of the serving targets)
from loadgen import measured  # noqa: E402

PROTOCOL_STYLE = {"rest": "-", "grpc": "--"}


def render(run: dict, out: Path) -> Path:
    """Write report.md and its plots into `out`; returns the Markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    benchmarks = run.get("benchmarks", {})
    sections = [_header(run)]
    if "serving" in benchmarks:
        sections.append(_serving(benchmarks["serving"], out))
    if "grpc_web" in benchmarks:
        sections.append(_grpc_web(benchmarks["grpc_web"], out))
    if "generation" in benchmarks:
        sections.append(_generation(benchmarks["generation"], out))
    compression = {name: benchmarks[name] for name in ("compression_digits", "compression_minilm") if name in benchmarks}
    if compression:
        sections.append(_compression(compression, out))
    for name, reason in sorted(run.get("failed", {}).items()):
        sections.append(f"**{name} failed**: {reason}")
    page = out / "report.md"
    page.write_text("\n\n".join(sections) + "\n")
    return page


def _header(run: dict) -> str:
    machine = run.get("machine", {})
    load = ", ".join(f"{x:g}" for x in machine.get("load_average", [])) or "?"
    cpu = ""
    if "cpu_model" in machine:  # which int8 GEMM the compression rows ran on
        has = machine.get("cpu_int8_flags", [])
        lacks = [flag for flag in measured.INT8_CPU_FLAGS if flag not in has]
        cpu = f" ({machine['cpu_model']}; {', '.join(has) or 'none of ' + ', '.join(lacks)}" + \
              (f"; no {', '.join(lacks)}" if has and lacks else "") + ")"
    stolen = machine.get("steal_share")
    steal = "" if stolen is None else (f" The hypervisor took {stolen:.0%} of the CPUs' time over the run (steal); a row "
                                       f"says its own share from {measured.STEAL_NOTE_SHARE:.0%} on.")
    return (f"# SlimServe benchmarks, {run.get('started', '?')}{' (QUICK)' if run.get('quick') else ''}\n\n"
            f"Commit {run.get('commit', '?')}, {machine.get('cpus', '?')} CPUs{cpu}, load average {load} when it started. "
            + _before_start(machine.get("before_start")) +
            f"A row is client-bound when its load generator took {machine.get('client_bound_share', measured.CLIENT_BOUND_SHARE):.0%} "
            "of the machine's CPU or as much CPU as the server: there the client set the pace." + steal)


def _before_start(quiet: dict | None) -> str:
    """How busy the machine was when the run started (run_all waits for it to quiet down), where recorded."""
    if not quiet or quiet.get("busy_share") is None:
        return ""
    busy, waited = quiet["busy_share"], quiet["waited_s"]
    if quiet["quiet"]:
        return f"Its CPUs were {busy:.0%} busy just before the start ({waited:g} s watched). "
    return (f"**Other work kept the machine busy**: its CPUs were still {busy:.0%} busy after {waited:g} s of waiting; "
            "the figures are lower than a quiet machine's. ")


# --- serving ----------------------------------------------------------------------------------------
def _serving(data: dict, out: Path) -> str:
    results, bare = data["results"], {m: {int(b): r for b, r in rates.items()} for m, rates in data.get("bare", {}).items()}
    top = max(r["concurrency"] for r in results)
    lines = ["## Serving", "", "Targets (native clients, side by side in one run):", ""]
    lines += [f"- {line}" for line in serving.targets(results, bare)] or ["- (no target cell measured)"]
    lines += ["", f"At concurrency {top}:", "",
              "| model | protocol | server | req/s | p50 ms | p99 ms | client | python client req/s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["concurrency"] == top:
            python = r.get("python", {})
            lines.append(f"| {r['model']} | {r['protocol']} | {r['server']} | {_figures(r)} | "
                         + (f"{python['rps']:.0f} ({measured.describe(python)})" if python.get("rps") else "-") + " |")
    lines += ["", _image(_throughput_plot(results, out), "throughput against concurrency"),
              _image(_latency_plot(results, top, out), "latency percentiles"),
              _image(_batching_plot(results, out), "batching on and off")]
    return "\n".join(line for line in lines if line is not None)


def _figures(row: dict) -> str:
    """req/s, p50, p99 and client columns of a row; a cell where no request finished says so."""
    if not row.get("rps"):
        return f"- | - | - | no request finished{': ' + row['failure'][:80] if row.get('failure') else ''}"
    return f"{row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {measured.describe(row)}"


def _by_model(results: list[dict]) -> dict[str, list[dict]]:
    models: dict[str, list[dict]] = {}
    for r in results:
        models.setdefault(r["model"], []).append(r)
    return models


def _panels(count: int, title: str):
    figure, axes = plt.subplots(1, count, figsize=(4.5 * count, 3.6), squeeze=False)
    figure.suptitle(title)
    return figure, axes[0]


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _throughput_plot(results: list[dict], out: Path) -> Path:
    models = _by_model(results)
    figure, axes = _panels(len(models), "throughput (native clients; dotted: the Python client)")
    for ax, (model, rows) in zip(axes, models.items()):
        for (server, protocol), series in _series(rows).items():
            x = [r["concurrency"] for r in series]
            line, = ax.plot(x, [r.get("rps", 0) for r in series], PROTOCOL_STYLE.get(protocol, "-"), marker="o",
                            label=f"{server} {protocol}")
            bound = [r for r in series if r.get("client_bound")]
            ax.plot([r["concurrency"] for r in bound], [r.get("rps", 0) for r in bound], "x", color="red", markersize=10)
            if any("python" in r for r in series):
                ax.plot(x, [r.get("python", {}).get("rps", 0) for r in series], ":", color=line.get_color())
        ax.set(title=model, xlabel="concurrency", ylabel="req/s", xscale="log", xticks=sorted({r["concurrency"] for r in rows}))
        ax.set_xticklabels(sorted({r["concurrency"] for r in rows}))
    axes[-1].legend(fontsize=7, title="red x: client-bound", title_fontsize=7)
    return _save(figure, out / "serving-throughput.png")


def _series(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    series: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["concurrency"]):
        series.setdefault((r["server"], r["protocol"]), []).append(r)
    return series


def _latency_plot(results: list[dict], concurrency: int, out: Path) -> Path:
    models = _by_model([r for r in results if r["concurrency"] == concurrency])
    figure, axes = _panels(len(models), f"latency at concurrency {concurrency} (bar: p50, tick: p99)")
    for ax, (model, rows) in zip(axes, models.items()):
        labels = [f"{r['server']}\n{r['protocol']}" for r in rows]
        positions = range(len(rows))
        ax.bar(positions, [r.get("p50_ms", 0) for r in rows], color="tab:blue")
        ax.scatter(positions, [r.get("p99_ms", 0) for r in rows], marker="_", s=300, color="black", zorder=3)
        ax.set_xticks(list(positions), labels, fontsize=6, rotation=60)
        ax.set(title=model, ylabel="ms", yscale="log")
    return _save(figure, out / "serving-latency.png")


def _batching_plot(results: list[dict], out: Path) -> Path | None:
    pairs = [(r, next((o for o in results if o["server"] == "slimserve-nobatch" and
                       (o["model"], o["protocol"], o["concurrency"]) == (r["model"], r["protocol"], r["concurrency"])), None))
             for r in results if r["server"] == "slimserve"]
    pairs = [(on, off) for on, off in pairs if off is not None]
    if not pairs:
        return None
    figure, axes = _panels(1, "SlimServe throughput, batching on / off")
    ax = axes[0]
    labels = [f"{on['model']}\n{on['protocol']} c{on['concurrency']}" for on, _ in pairs]
    ax.bar(range(len(pairs)), [on.get("rps", 0) / off["rps"] if off.get("rps") else 0 for on, off in pairs])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(pairs)), labels, fontsize=6, rotation=60)
    ax.set(ylabel="on / off")
    figure.set_size_inches(max(6, 0.45 * len(pairs)), 3.6)
    return _save(figure, out / "serving-batching.png")


def _image(path: Path | None, alt: str) -> str | None:
    return f"![{alt}]({path.name})" if path else None


# --- gRPC-Web ---------------------------------------------------------------------------------------
def _grpc_web(data: dict, out: Path) -> str:
    results = data["results"]
    concurrencies = sorted({r["concurrency"] for r in results})
    figure, axes = _panels(len(concurrencies), f"gRPC-Web, {results[0]['model']}: req/s by protocol (hatched: Python client)")
    lines = ["## gRPC-Web", "", "| concurrency | protocol | req/s | vs gRPC | client | python client req/s |",
             "|---|---|---|---|---|---|"]
    for ax, concurrency in zip(axes, concurrencies):
        native = [r for r in results if r["concurrency"] == concurrency and r.get("client") != "python"]
        python = {r["protocol"]: r for r in results if r["concurrency"] == concurrency and r.get("client") == "python"}
        for i, r in enumerate(native):
            ax.bar(i - 0.2, r.get("rps", 0), width=0.4, color="tab:blue")
            if r["protocol"] in python:
                ax.bar(i + 0.2, python[r["protocol"]].get("rps", 0), width=0.4, color="tab:gray", hatch="//")
            lines.append(f"| {concurrency} | {r['protocol']} | {r.get('rps', 0):.0f} | {r.get('vs_grpc') or 0:.2f} | "
                         f"{measured.describe(r)} | {python.get(r['protocol'], {}).get('rps', 0):.0f} |")
        ax.set_xticks(range(len(native)), [r["protocol"] for r in native], fontsize=7, rotation=30)
        ax.set(title=f"concurrency {concurrency}", ylabel="req/s")
    lines += ["", _image(_save(figure, out / "grpc-web.png"), "gRPC-Web against gRPC")]
    return "\n".join(lines)


# --- generation -------------------------------------------------------------------------------------
SERVER_ROW = "slimserve c"  # generation.py's rows of the server: "slimserve c8", "slimserve c8, python client"


def _generation(data: dict, out: Path) -> str:
    rows, targets = data["rows"], data.get("targets", {})
    lines = ["## Generation", "", f"A decoder ({data.get('model', '?')}) streaming /v1/completions; the figures "
             f"from {targets.get('client', '?')}, each other client's rows after them.", ""]
    rate = targets.get("tokens_per_s")
    if rate:
        lines += [f"- c32 tokens/s = {rate['vs_one_at_a_time']:.2f}x transformers `generate` one request at a time "
                  "(target >= 3x)",
                  f"- c32 tokens/s = {rate['vs_static_batching']:.2f}x `generate` statically batched by 32 (median of "
                  f"{targets.get('paired_rounds', '?')} paired rounds; target >= 1.3x)", ""]
    lines += ["| row | tokens/s | TTFT p50 ms | TTFT p99 ms | client |", "|---|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['tokens_per_s']:.0f} | {r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | "
              f"{measured.describe(r)} |" for r in rows]
    figure, (throughput, first_token) = _panels(2, "generation: the server by client (lines), transformers generate (grey)")
    series: dict[str, list[dict]] = {}
    for r in rows:
        if r["row"].startswith(SERVER_ROW) and r.get("concurrency"):
            series.setdefault(r.get("client", "?"), []).append(r)
    for client, points in series.items():
        points.sort(key=lambda r: r["concurrency"])
        x = [r["concurrency"] for r in points]
        line, = throughput.plot(x, [r["tokens_per_s"] for r in points], marker="o", label=client)
        first_token.plot(x, [r["ttft_p50_ms"] for r in points], marker="o", color=line.get_color(), label=f"{client} p50")
        first_token.plot(x, [r["ttft_p99_ms"] for r in points], "--", color=line.get_color(), label=f"{client} p99")
        bound = [r for r in points if r.get("client_bound")]
        throughput.plot([r["concurrency"] for r in bound], [r["tokens_per_s"] for r in bound], "x", color="red",
                        markersize=10)
    for r in rows:
        if not r["row"].startswith(SERVER_ROW) and r.get("concurrency") is None:
            throughput.axhline(r["tokens_per_s"], color="grey", linestyle=":", label=r["row"])
    concurrencies = sorted({r["concurrency"] for points in series.values() for r in points})
    for ax, label in ((throughput, "tokens/s"), (first_token, "time to first token, ms")):
        ax.set(xlabel="concurrency", ylabel=label, xscale="log")
        if concurrencies:
            ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.legend(fontsize=6)
    lines += ["", _image(_save(figure, out / "generation.png"), "generation tokens/s and time to first token")]
    return "\n".join(lines)


# --- compression ------------------------------------------------------------------------------------
def _compression(data: dict, out: Path) -> str:
    """Size, speed and accuracy of each variant against fp32: digits CNN (accuracy change) and MiniLM (cosine)."""
    # model -> (what its accuracy column is, its format, rows of (variant, x smaller, x fp32 speed, accuracy))
    tables = {}
    if "compression_digits" in data:
        tables["digits CNN"] = ("accuracy change, points", "{:+.2f}", [
            (r["variant"], r["sizeRatio"], r["speedup"], 0.0 - r["dropPoints"]) for r in data["compression_digits"]])
    if "compression_minilm" in data:
        tables["MiniLM-L6"] = ("mean cosine to fp32", "{:.4f}", [
            (name, r.get("size_x") or 0, r["speed_x"], r["cosine_mean"])
            for name, r in data["compression_minilm"]["variants"].items()])
    figure, axes = plt.subplots(len(tables), 3, figsize=(13, 3.4 * len(tables)), squeeze=False)
    figure.suptitle("compression against fp32")
    lines = ["## Compression", "", "| model | variant | smaller | speed | accuracy |", "|---|---|---|---|---|"]
    for row_axes, (model, (accuracy, accuracy_format, rows)) in zip(axes, tables.items()):
        for ax, column, label in zip(row_axes, (1, 2, 3), ("size: x smaller", "speed: x fp32", accuracy)):
            values = [r[column] for r in rows]
            ax.barh(range(len(rows)), values)
            ax.set_yticks(range(len(rows)), [r[0] for r in rows] if column == 1 else [""] * len(rows), fontsize=7)
            ax.set(title=f"{model}: {label}")
        if model == "MiniLM-L6":  # cosines sit near 1: show the differences, not the bars' common length
            row_axes[2].set_xlim(min(values) - 0.005, 1.0)
        lines += [f"| {model} | {r[0]} | {r[1]:.2f}x | {r[2]:.2f}x | {accuracy_format.format(r[3])} ({accuracy}) |"
                  for r in rows]
    lines += ["", _image(_save(figure, out / "compression.png"), "compression size, speed and accuracy")]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run's JSON, as benchmarks/run_all.py writes it")
    parser.add_argument("--out", type=Path, help="the report's folder (default: beside the JSON, same name)")
    args = parser.parse_args()
    page = render(json.loads(args.run.read_text()), args.out or args.run.with_suffix(""))
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
