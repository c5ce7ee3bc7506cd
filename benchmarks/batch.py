"""BatchInference against the online path, side by side in one run, on the same cores.

For each model, one dataset (held-out digits as a NumPy .npy; sentences as JSON Lines), scored:
- offline: `slimserve batch --spec` with 1 and with 2 shards (each shard a process with its share of the CPUs),
  scoring timed from the first shard's model loaded to the last part published (the shards' events), and end
  to end, process starts and model loads included;
- online: the same records sent one per request to `slimserve serve` (dynamic batching, torch threads = the
  CPUs; started and warmed up before the clock starts) by tritonclient over REST with the binary tensor
  extension at concurrency 32 (benchmarks/serving.py's server), timed from the first request to the last answer;
  the client's and the server's CPU seconds beside it, marked client-bound as benchmarks/serving.py marks it.
Records/s of each and the ratio to the online path are printed as a table; the target is >= 1.5x (scoring
against a running server: a BatchInference's pods start once per run, a ModelService's server before it).

    .venv/bin/python benchmarks/batch.py                                  # digits-cnn and minilm-l6
    .venv/bin/python benchmarks/batch.py --models minilm-l6 --records 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

import serving  # benchmarks/serving.py: the server process and its readiness
from loadgen import measured  # benchmarks/loadgen: CPU seconds of the client and the server

CONCURRENCY = 32
TARGET = 1.5
DEFAULT_RECORDS = {"digits-cnn": 10000, "minilm-l6": 2048}  # under a minute online each, on 2 cores


def write_dataset(model: str, records: int, folder: Path) -> tuple[Path, list[np.ndarray]]:
    """The dataset file, and the one-row arrays an online client sends for it."""
    if model == "minilm-l6":
        from slimserve.data import builtin_sentences

        pool = [*builtin_sentences("eval"), *builtin_sentences("train")]
        texts = [pool[i % len(pool)] for i in range(records)]
        path = folder / "texts.jsonl"
        path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
        return path, [np.array([text.encode()], dtype=object) for text in texts]
    from slimserve.models.digits import digits_data

    held_out = digits_data().x_test.astype(np.float32)
    rows = held_out[np.arange(records) % len(held_out)]
    path = folder / "digits.npy"
    np.save(path, rows)
    return path, [rows[i : i + 1] for i in range(records)]


def run_offline(model: str, dataset: Path, shards: int, batch_size: int, folder: Path) -> dict:
    spec_path = folder / f"batch-{shards}.yaml"
    spec_path.write_text(yaml.safe_dump({
        "apiVersion": "slimserve.io/v1alpha1", "kind": "BatchInference", "metadata": {"name": f"bench-{shards}"},
        "spec": {"model": {"uri": serving.MODELS[model]}, "input": {"uri": f"file://{dataset}"},
                 "output": {"uri": f"file://{folder}/out-{shards}/"}, "shards": shards, "parallelism": shards,
                 "batchSize": batch_size},
    }))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "slimserve.cli.main", "batch", "--spec", str(spec_path)],
                          capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"slimserve batch failed: {done.stderr[-2000:]}")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    # Scoring: from the first shard's model loaded to the last part published (the shards' own clocks).
    first = min(event["time"] for event in events if event["event"] == "scoring")
    scoring = max(event["time"] for event in events if event["event"] == "part") - first
    records = json.loads((folder / f"out-{shards}" / "_manifest.json").read_text())["records"]
    return {"path": f"slimserve batch, {shards} shard{'s' if shards > 1 else ''}", "records": records,
            "seconds": scoring, "end_to_end_s": seconds}


def run_online(model: str, rows: list[np.ndarray], folder: Path, cpus: int) -> dict:
    server = serving.start_server("slimserve", model, cpus, folder, None)
    try:
        send(server, rows[: min(len(rows), 2 * CONCURRENCY)])  # warm up: connections, the batcher, the model
        server_cpu_s = measured.process_cpu_s(server.process.pid)
        started, client_cpu_s = time.perf_counter(), time.process_time()
        answered = send(server, rows)
        seconds, client_cpu_s = time.perf_counter() - started, time.process_time() - client_cpu_s
        server_cpu_s = measured.process_cpu_s(server.process.pid) - server_cpu_s
    finally:
        server.stop()
    row = {"path": f"slimserve serve, client at concurrency {CONCURRENCY}", "records": answered, "seconds": seconds,
           "client_cpu_s": client_cpu_s, "client_cpu_share": client_cpu_s / (seconds * measured.cpu_count())}
    return measured.mark_client_bound(row, server_cpu_s)


def send(server: "serving.Server", rows: list[np.ndarray]) -> int:
    """Every row as one request, CONCURRENCY in flight; returns how many were answered."""
    import gevent
    import tritonclient.http as httpclient

    name, datatype, _, output = serving.example_input(server.model)
    client = httpclient.InferenceServerClient(server.url("rest"), concurrency=CONCURRENCY, connection_timeout=120,
                                              network_timeout=120)
    outputs = [httpclient.InferRequestedOutput(output, binary_data=True)]
    pending = iter(rows)
    answered = [0]

    def worker() -> None:
        for row in pending:
            tensor = httpclient.InferInput(name, list(row.shape), datatype)
            tensor.set_data_from_numpy(row, binary_data=True)
            client.infer(server.model, [tensor], outputs=outputs).as_numpy(output)
            answered[0] += 1

    gevent.joinall([gevent.spawn(worker) for _ in range(CONCURRENCY)], raise_error=True)
    client.close()
    return answered[0]


def report(model: str, rows: list[dict]) -> str:
    online = next(row for row in rows if "end_to_end_s" not in row)
    online_rps = online["records"] / online["seconds"]
    lines = [f"\n{model}: {online['records']} records",
             "| path | scoring s | records/s | vs online | end to end s (process starts, model loads) |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        rps = row["records"] / row["seconds"]
        end_to_end = f"{row['end_to_end_s']:.1f}" if "end_to_end_s" in row else "-"
        bound = (f" (client {row['client_cpu_s']:.1f} CPU s, server {row['server_cpu_s']:.1f}"
                 f"{'; client-bound' if row['client_bound'] else ''})") if "client_bound" in row else ""
        lines.append(f"| {row['path']}{bound} | {row['seconds']:.2f} | {rps:.1f} | {rps / online_rps:.2f}x | {end_to_end} |")
    best = max(row["records"] / row["seconds"] for row in rows if row is not online) / online_rps
    lines.append(f"target >= {TARGET}x the online path: {'met' if best >= TARGET else 'NOT met'} ({best:.2f}x)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits-cnn,minilm-l6")
    parser.add_argument("--records", type=int, default=0, help="records per dataset (default: 10000 digits, 2048 sentences)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-batch-{model}-") as tmp:
            folder = Path(tmp)
            dataset, rows = write_dataset(model, args.records or DEFAULT_RECORDS[model], folder)
            results = [run_offline(model, dataset, shards, args.batch_size, folder) for shards in (1, 2)]
            results.append(run_online(model, rows, folder, cpus))
            print(report(model, results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
