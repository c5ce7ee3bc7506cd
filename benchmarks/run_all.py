"""`make bench`: every benchmark this machine can run, one JSON file of results per run, and its report.

Runs, each in its own process: the serving benchmark (SlimServe against KServe, native clients and the
Python one), gRPC-Web against gRPC, the generation benchmark (a decoder streamed to perf_analyzer and the Python
client, against transformers `generate`) and the two compression benchmarks. Their JSON outputs are gathered into
    ${SLIMSERVE_CACHE:-~/.cache/slimserve}/bench/<UTC time>.json
with the commit, the machine (CPUs, load average, how busy it was at the start: the run first waits, up to
--quiet-wait-s, for its CPUs to quiet down) and any benchmark that failed, and benchmarks/report.py
renders it beside, in the folder of the same name (report.md and PNG plots). QUICK=1 (or --quick) runs
shorter and fewer cells: a smoke run of the whole pipeline, not figures to quote. The load generators come
from benchmarks/tools.sh (`make bench` runs it first).

    .venv/bin/python benchmarks/run_all.py [--quick] [--only serving,grpc_web]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402
from loadgen import measured  # noqa: E402

# benchmark -> (script, arguments of a full run, arguments of a quick one); each also gets --json PATH.
# A full run takes about 11 minutes on 2 cores: the models the targets name, three rounds per serving cell, the
# torch.compile'd MiniLM against ONNX Runtime only where the bench extra is installed (pip install -e
# '.[bench]'). Each script run on its own measures more (see its --help).
ORT = ["onnxruntime"] if importlib.util.find_spec("onnxruntime") else []
BENCHMARKS = {
    "serving": ("serving.py", ["--models", "digits-mlp,minilm-l6", "--rounds", "3", "--duration-s", "1"],
                ["--models", "digits-mlp,minilm-l6", "--concurrency", "1,32", "--rounds", "1", "--duration-s", "0.5"]),
    "grpc_web": ("grpc_web.py", ["--concurrency", "8", "32", "--duration-s", "2", "--rounds", "1"],
                 ["--concurrency", "8", "--duration-s", "1", "--rounds", "1"]),
    "generation": ("generation.py", ["--rounds", "7"], ["--quick", "--rounds", "1"]),
    "compression_digits": ("compression_digits.py", ["--rounds", "20"], ["--rounds", "5"]),
    "compression_minilm": ("compression_minilm.py", ["--rounds", "5", "--variants", "slimserve", *ORT],
                           ["--rounds", "3", "--variants", "slimserve"]),
}


def cache_dir() -> Path:
    return Path(os.environ.get("SLIMSERVE_CACHE") or Path.home() / ".cache" / "slimserve") / "bench"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK") == "1")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated, of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--out-dir", type=Path, default=None, help="default ${SLIMSERVE_CACHE:-~/.cache/slimserve}/bench")
    parser.add_argument("--quiet-wait-s", type=float, default=180.0,
                        help="wait at most this long for the machine's CPUs to be busy under "
                             f"{measured.QUIET_SHARE:.0%} before starting (0: start at once)")
    args = parser.parse_args()

    quiet = measured.wait_for_quiet(args.quiet_wait_s) if args.quiet_wait_s > 0 else None
    started = datetime.now(timezone.utc)
    out_dir = args.out_dir or cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    run = {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "commit": commit, "quick": args.quick,
           "machine": {**measured.machine(), "before_start": quiet}, "benchmarks": {}, "seconds": {}, "failed": {}}
    ticks = measured.machine_ticks()
    with tempfile.TemporaryDirectory(prefix="slimserve-bench-") as scratch:
        for name in args.only.split(","):
            script, full, quick = BENCHMARKS[name]
            part = Path(scratch) / f"{name}.json"
            print(f"== {name}", flush=True)
            start = time.monotonic()
            done = subprocess.run([sys.executable, str(HERE / script), *(quick if args.quick else full), "--json", str(part)])
            run["seconds"][name] = round(time.monotonic() - start, 1)
            if done.returncode == 0 and part.exists():
                run["benchmarks"][name] = json.loads(part.read_text())
            else:
                run["failed"][name] = f"exit status {done.returncode}"
    run["machine"]["load_average_after"] = measured.machine()["load_average"]
    run["machine"]["steal_share"] = measured.steal_share(ticks, measured.machine_ticks())
    path = out_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(run, indent=2))
    page = report.render(run, path.with_suffix(""))
    print(f"results: {path}\nreport:  {page}")
    return 1 if run["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
