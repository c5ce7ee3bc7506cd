"""Generation benchmark: SlimServe's continuous batching against Hugging Face `transformers` `generate`, side
by side in one run.

The same requests (prompt and output lengths varied, greedy) go
- to `slimserve serve` of the decoder, through its streaming /v1/completions, at concurrency 1, 8 and 32
  (tokens/s over the run; time to first token from each request's send to its first text), from perf_analyzer
  (benchmarks/loadgen: NVIDIA's C++ load generator, installed by benchmarks/tools.sh) and, as an extra row
  each, from a lean asyncio client (one keep-alive connection per concurrent request); each row gives its
  client's share of the machine's CPU and is marked client-bound as the serving benchmark's rows are
  (`--clients`: the first gives the figures the targets use);
- to `transformers` `generate` in this process, one request at a time, and statically batched by 32 (left
  padded, each batch running to its longest output); its TTFT is the request's own wait inside `generate`.
Same weights, same torch threads. Targets at concurrency 32: >= 3x one-at-a-time and >= 1.3x static batching.
A run at concurrency 32 takes about a second of the server's time, so one such run moves with the machine: the
comparison with static batching is made in `--rounds` pairs (the server at concurrency 32 and static batching,
one after the other, in alternating order) and its ratio is the median of the pairs' ratios.
Each row also gives tokens per CPU second (the server's process and the client's, or `generate`'s): on a
machine shared with other work, a server whose threads hand each step to one another waits for the CPU at
every hand-off, so tokens/s there measures the machine's load as much as the server. At concurrency 32 the
run's CPU per token is split between the server's worker threads (the engine and its model), its event loop
and the client.
`--artifact URI` (repeatable) adds a row per compressed decoder artifact (int8, int4) at concurrency 1 and
32, as a ratio of the fp32 server's tokens/s.

    .venv/bin/python benchmarks/generation.py                    # builtin://tiny-lm (a random Llama if absent)
    .venv/bin/python benchmarks/generation.py --quick            # fewer requests
    .venv/bin/python benchmarks/generation.py --artifact file:///tmp/tiny-lm-int8 --artifact file:///tmp/tiny-lm-int4

`--model-size base` measures instead where weight bandwidth bounds a decode step, as with the models users
run: a random Llama of about 90M parameters (hidden 768, 12 layers), fp32 and its weight-only int8 and int4
copies (round to nearest), generating one sequence (concurrency 1) through the server's prefill and decode
path in this process, in interleaved rounds. Targets: int8 >= 1.4x and int4 >= 1.8x fp32 tokens/s.

    .venv/bin/python benchmarks/generation.py --model-size base
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loadgen import measured, perf_analyzer  # benchmarks/loadgen: the native load generators

HOST = "127.0.0.1"
CONCURRENCY = (1, 8, 32)
STATIC_BATCH = 32
CLIENTS = ("perf_analyzer", "python")
MODEL_NAME = "bench"
COMPLETIONS = "/v1/completions"


@dataclass(frozen=True)
class Request:
    prompt: str
    max_tokens: int


@dataclass
class Result:
    tokens: int  # generated
    ttft_s: float


def process_cpu_s(pid: int, thread: int | None = None) -> float:
    """CPU seconds (user + system) a process (or one of its threads) has used so far, from /proc."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSplit:
    """Where a server run's CPU seconds went: the server's main thread (its event loop: HTTP and the SSE
    events), its other threads (the generation engine's worker, which runs the model), and the client."""

    event_loop: float = 0.0
    server_workers: float = 0.0
    client: float = 0.0

    @classmethod
    def now(cls, server_pid: int) -> "CpuSplit":
        whole, main = process_cpu_s(server_pid), process_cpu_s(server_pid, thread=server_pid)
        return cls(main, whole - main, time.process_time())

    def __sub__(self, other: "CpuSplit") -> "CpuSplit":
        return CpuSplit(self.event_loop - other.event_loop, self.server_workers - other.server_workers,
                        self.client - other.client)

    @property
    def total(self) -> float:
        return self.event_loop + self.server_workers + self.client


# --- the model and the requests ---------------------------------------------------------------------
def model_directory(uri: str, scratch: Path) -> Path:
    """The Hugging Face directory of `uri` (both sides load it); builtin://tiny-lm's package files, or a
    random Llama of its shape when those are not there yet."""
    if uri != "builtin://tiny-lm":
        return Path(uri.removeprefix("file://"))
    from slimserve.models.decoder import tiny_lm_dir

    if (tiny_lm_dir() / "config.json").is_file():
        return tiny_lm_dir()
    print("builtin://tiny-lm has no files here: a random Llama of its shape (no eos) stands in", flush=True)
    return random_llama(scratch / "random-llama")


def random_llama(directory: Path) -> Path:
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = 4096
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=704, max_position_embeddings=512, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer = Tokenizer(models.WordLevel({"<pad>": 0, **{f"w{i}": i for i in range(1, vocab)}}, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def make_requests(directory: Path, count: int, seed: int) -> list[Request]:
    """Prompts of 8 to 96 tokens (decoded from random ids of the vocabulary), 16 to 128 tokens out."""
    from slimserve.models.decoder import Tokenizer

    tokenizer = Tokenizer.from_directory(directory)
    rng = random.Random(seed)
    ids = range(3, tokenizer.vocab_size)
    return [Request(tokenizer.decode(rng.sample(ids, rng.randint(8, 96))), rng.randint(16, 128)) for _ in range(count)]


# --- SlimServe --------------------------------------------------------------------------------------
class Server:
    def __init__(self, uri: str, threads: int, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            self.port = sock.getsockname()[1]
        command = [sys.executable, "-m", "slimserve.cli.main", "serve", "--artifact", uri, "--model-name", MODEL_NAME,
                   "--host", HOST, "--http-port", str(self.port), "--grpc-port", "0", "--torch-threads", str(threads),
                   "--max-sequences", str(max(CONCURRENCY)), "--no-access-log", "--log-level", "WARNING"]
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/v2/health/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready: {log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Connection:
    """One keep-alive HTTP/1.1 connection of the client, one request at a time, a streamed answer's body handed
    out as it comes. The client shares the machine with the server, so it is lean: asyncio's streams, and
    httptools (the parser uvicorn serves with, in C) to undo the chunked framing, not a general-purpose
    client's Python per line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._body: list[bytes] = []
        self._complete = False

    @classmethod
    async def open(cls, port: int) -> "Connection":
        return cls(*await asyncio.open_connection(HOST, port))

    def close(self) -> None:
        self._writer.close()

    def on_body(self, body: bytes) -> None:  # httptools' callbacks
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    async def post(self, path: str, body: bytes):
        """The answer's body, as it arrives; RuntimeError when the status is not 200."""
        import httptools

        self._writer.write(b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                           b"content-length: %d\r\n\r\n%s" % (path.encode(), HOST.encode(), len(body), body))
        parser, self._complete = httptools.HttpResponseParser(self), False
        while not self._complete:
            data = await self._reader.read(1 << 16)
            if not data:
                raise ConnectionError("the server closed the connection")
            parser.feed_data(data)
            if parser.get_status_code() != 200:
                raise RuntimeError(f"HTTP {parser.get_status_code()}: {b''.join(self._body)[:500]!r}")
            if self._body:
                yield b"".join(self._body)
                self._body.clear()


def completion_body(request: Request) -> dict:
    """The streamed, greedy /v1/completions request every client sends; the last event carries the usage."""
    return {"model": MODEL_NAME, "prompt": request.prompt, "max_tokens": request.max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}


async def stream_completion(connection: Connection, request: Request) -> Result:
    body = completion_body(request)
    sent, first, tokens, unparsed = time.perf_counter(), None, 0, b""
    async for data in connection.post(COMPLETIONS, json.dumps(body).encode()):
        *events, unparsed = (unparsed + data).split(b"\n\n")
        for event in events:
            if not event.startswith(b"data: {"):
                continue
            document = json.loads(event[6:])
            if first is None and document["choices"] and document["choices"][0]["text"]:
                first = time.perf_counter()
            if document.get("usage"):
                tokens = document["usage"]["completion_tokens"]
    return Result(tokens, (first or time.perf_counter()) - sent)


def run_server(server: Server, requests: list[Request], concurrency: int,
               client: str = "python") -> tuple[list[Result], float, float, CpuSplit]:
    """The results, the seconds and the CPU seconds (the server's and the client's, and where they went) of
    the requests, `concurrency` at a time, from `client` (one of CLIENTS)."""
    if client == "perf_analyzer":
        return run_server_native(server, requests, concurrency)
    return run_server_python(server, requests, concurrency)


def run_server_native(server: Server, requests: list[Request], concurrency: int) -> tuple[list[Result], float, float, CpuSplit]:
    """`run_server` with perf_analyzer, after one short request to warm the server up."""
    warm_up = json.dumps({**completion_body(Request(requests[0].prompt, 4)), "stream": False}).encode()
    post = urllib.request.Request(f"http://{HOST}:{server.port}{COMPLETIONS}", warm_up,
                                  {"content-type": "application/json"})
    with urllib.request.urlopen(post, timeout=120) as answer:
        answer.read()
    before = CpuSplit.now(server.process.pid)
    answers, seconds, finished = perf_analyzer.run(f"{HOST}:{server.port}", COMPLETIONS, MODEL_NAME,
                                                   [completion_body(r) for r in requests], concurrency)
    after = CpuSplit.now(server.process.pid)
    if len(answers) != len(requests):
        raise RuntimeError(f"perf_analyzer sent {len(answers)} requests, not the {len(requests)} asked for")
    split = after - before
    split.client = finished.cpu_s  # the client is perf_analyzer, not this process
    return [Result(tokens, ttft) for tokens, ttft in answers], seconds, split.total, split


def run_server_python(server: Server, requests: list[Request], concurrency: int) -> tuple[list[Result], float, float, CpuSplit]:
    """`run_server` with this process's asyncio client: `concurrency` connections each sending its next request
    once its answer ended."""
    port = server.port

    async def main() -> tuple[list[Result], float, float, CpuSplit]:
        pending = iter(requests)
        results: list[Result] = []
        connections = [await Connection.open(port) for _ in range(concurrency)]
        try:
            await stream_completion(connections[0], Request(requests[0].prompt, 4))  # warm up

            async def worker(connection: Connection) -> None:
                for request in pending:
                    results.append(await stream_completion(connection, request))

            started, cpu = time.perf_counter(), CpuSplit.now(server.process.pid)
            await asyncio.gather(*(worker(connection) for connection in connections))
            cpu = CpuSplit.now(server.process.pid) - cpu
            return results, time.perf_counter() - started, cpu.total, cpu
        finally:
            for connection in connections:
                connection.close()

    return asyncio.run(main())


# --- transformers -----------------------------------------------------------------------------------
class FirstToken:
    """A `generate` streamer that notes when the first new token comes (its first `put` is the prompt)."""

    def __init__(self) -> None:
        self.calls, self.at = 0, None

    def put(self, _value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def run_transformers(directory: Path, requests: list[Request], batch: int) -> tuple[list[Result], float, float]:
    """`generate` over the requests, `batch` at a time (left padded; a batch runs to its longest output)."""
    import torch
    import transformers

    from slimserve.models.decoder import Tokenizer

    tokenizer = Tokenizer.from_directory(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = set([eos] if isinstance(eos, int) else eos or [])
    results, seconds, cpu = [], 0.0, 0.0
    with torch.inference_mode():
        model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=2, do_sample=False)  # warm up
        for start in range(0, len(requests), batch):
            group = requests[start:start + batch]
            prompts = [tokenizer.encode(r.prompt) for r in group]
            width = max(map(len, prompts))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            streamer = FirstToken()
            if batch > 1:  # a batch's first tokens: its prefill, timed on its own (streamers take one row)
                began = time.perf_counter()
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=0)
                streamer.at = time.perf_counter()
                ttft = streamer.at - began
            began, cpu_began = time.perf_counter(), time.process_time()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(r.max_tokens for r in group),
                                 do_sample=False, pad_token_id=0, streamer=streamer if batch == 1 else None)
            seconds += time.perf_counter() - began
            cpu += time.process_time() - cpu_began
            if batch == 1:
                ttft = streamer.at - began
            for row, request in zip(out[:, width:].tolist(), group):
                useful = row[:request.max_tokens]
                ended = next((i for i, token in enumerate(useful) if token in eos), len(useful))
                results.append(Result(ended, ttft))
    return results, seconds, cpu


# --- weight-bound decoding: quantized against fp32 at concurrency 1 ---------------------------------
BASE_SHAPE = dict(vocab_size=4096, hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12, head_dim=64,
                  intermediate_size=2048, max_position_embeddings=512)


def quantized_decode_rows(threads: int, quick: bool) -> list[dict]:
    """tokens/s at concurrency 1 of a random Llama of BASE_SHAPE in fp32, int8- and int4-weight-only."""
    import copy

    import torch

    from slimserve.compression.generation_speed import tokens_per_second
    from slimserve.compression.quantize import apply_quantization
    from slimserve.compression.quantize.configs import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from slimserve.models.decoder import DecoderConfig, DecoderLM
    from slimserve.models.decoder.model import scaled_init_

    fp32 = scaled_init_(DecoderLM(DecoderConfig(**BASE_SHAPE)), seed=0).eval()
    models = {"fp32": fp32}
    for label, config in (("int8-weight-only", Int8WeightOnlyConfig()), ("int4-weight-only", Int4WeightOnlyConfig())):
        models[label] = apply_quantization(copy.deepcopy(fp32), config, calibration=None)
    prompt = torch.randint(3, BASE_SHAPE["vocab_size"], (32,), generator=torch.Generator().manual_seed(0))
    parameters = sum(p.numel() for p in fp32.parameters())
    rates = tokens_per_second(list(models.values()), prompt, threads=threads, budget_s=5.0 if quick else 20.0)
    return [{"row": f"{label}, {parameters / 1e6:.0f}M params, c1", "tokens_per_s": rate, "vs_fp32": rate / rates[0]}
            for label, rate in zip(models, rates)]


def print_quantized_decode(rows: list[dict]) -> None:
    print(f"\n{'row':<44} {'tokens/s':>9} {'x fp32':>7}")
    for row in rows:
        print(f"{row['row']:<44} {row['tokens_per_s']:>9.1f} {row['vs_fp32']:>7.2f}")
    print(f"targets: int8 >= 1.4x, int4 >= 1.8x fp32; load average {os.getloadavg()[0]:.1f}")


# --- the table --------------------------------------------------------------------------------------
def summarize(label: str, results: list[Result], seconds: float, cpu_s: float, split: CpuSplit | None = None,
              client: str | None = None, concurrency: int | None = None) -> dict:
    """A table row; a server row (with `split`, `client` and `concurrency`) also gets its client's CPU share
    and mark."""
    ttfts = sorted(r.ttft_s for r in results)
    tokens = sum(r.tokens for r in results)
    per_token = {} if split is None else {"cpu_ms_per_token": {
        "event_loop": 1000 * split.event_loop / tokens, "server_workers": 1000 * split.server_workers / tokens,
        "client": 1000 * split.client / tokens}}
    if split is not None and client is not None:
        per_token |= measured.mark_client_bound(measured.client_columns(client, split.client, seconds),
                                                split.event_loop + split.server_workers)
    return per_token | {"row": label, "requests": len(results), "tokens": sum(r.tokens for r in results), "seconds": seconds,
            "tokens_per_s": sum(r.tokens for r in results) / seconds, "cpu_s": cpu_s,
            "tokens_per_cpu_s": sum(r.tokens for r in results) / cpu_s, "concurrency": concurrency,
            "ttft_p50_ms": 1000 * statistics.median(ttfts),
            "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]}


def paired_rounds(server: Server, directory: Path, requests: list[Request], rounds: int,
                  static_label: str, client: str) -> list[tuple[dict, dict]]:
    """(the server at concurrency 32, static batching) over the same requests, `rounds` times, which one goes
    first alternating: a machine that gets busier or quieter moves both alike."""
    runs = {"server": lambda: summarize("slimserve c32", *run_server(server, requests, 32, client), client=client,
                                        concurrency=32),
            "static": lambda: summarize(static_label, *run_transformers(directory, requests, STATIC_BATCH))}
    pairs = []
    for index in range(rounds):
        order = ("server", "static") if index % 2 == 0 else ("static", "server")
        pair = {which: runs[which]() for which in order}
        pairs.append((pair["server"], pair["static"]))
        ratio = pair["server"]["tokens_per_s"] / pair["static"]["tokens_per_s"]
        print(f"round {index + 1}: slimserve c32 {pair['server']['tokens_per_s']:.1f} tokens/s, static batching "
              f"{pair['static']['tokens_per_s']:.1f}: {ratio:.2f}x", flush=True)
    return pairs


def median_row(rows: list[dict]) -> dict:
    """The row of median tokens/s among `rows` (its own TTFTs and CPU split with it)."""
    return sorted(rows, key=lambda row: row["tokens_per_s"])[len(rows) // 2]


def print_table(rows: list[dict]) -> None:
    print(f"\n{'row':<44} {'requests':>8} {'tokens':>7} {'tokens/s':>9} {'tokens/CPU-s':>13} {'TTFT p50 ms':>12} "
          f"{'TTFT p99 ms':>12}  client")
    for row in rows:
        print(f"{row['row']:<44} {row['requests']:>8} {row['tokens']:>7} {row['tokens_per_s']:>9.1f} "
              f"{row['tokens_per_cpu_s']:>13.1f} {row['ttft_p50_ms']:>12.1f} {row['ttft_p99_ms']:>12.1f}  "
              f"{measured.describe(row)}")


def available_clients(asked: str) -> list[str]:
    """The clients of `--clients` this machine has, in order; perf_analyzer left out, saying so, when missing."""
    clients = [c for c in asked.split(",") if c]
    unknown = set(clients) - set(CLIENTS)
    if unknown or not clients:
        raise SystemExit(f"--clients takes some of {', '.join(CLIENTS)}, not {asked!r}")
    if "perf_analyzer" in clients and perf_analyzer.binary() is None:
        print("perf_analyzer is not installed (benchmarks/tools.sh installs it, on x86-64): its rows are left out",
              flush=True)
        clients.remove("perf_analyzer")
    if not clients:
        raise SystemExit("no client left to run")
    return clients


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin://tiny-lm", help="a decoder: builtin://tiny-lm or file://HF-DIR")
    parser.add_argument("--artifact", action="append", default=[], help="a compressed decoder artifact to add a row for")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server and of transformers")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-size", choices=("serving", "base"), default="serving",
                        help="base: weight-only int8 and int4 against fp32 at concurrency 1 on a ~90M-parameter random Llama")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--rounds", type=int, default=7,
                        help="pairs of the concurrency-32 comparison (the server, static batching); the median ratio counts")
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help="the server's clients, of " + ", ".join(CLIENTS) + "; the first gives the figures, "
                             "each other one an extra row per concurrency")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    import torch

    torch.set_num_threads(args.threads)
    if args.model_size == "base":
        rows = quantized_decode_rows(args.threads, args.quick)
        print_quantized_decode(rows)
        if args.json:
            args.json.write_text(json.dumps({"model_size": "base", "rows": rows}, indent=2))
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="slimserve-generation-"))
    directory = model_directory(args.model, scratch)
    counts = {1: 4, 8: 16, 32: 32} if args.quick else {1: 8, 8: 32, 32: 64}
    requests = make_requests(directory, max(counts.values()), args.seed)
    uri = args.model if args.model.startswith("builtin://") and directory.name != "random-llama" else f"file://{directory}"

    clients = available_clients(args.clients)
    client, extra_clients = clients[0], clients[1:]
    rows, extra_rows = [], []
    static_label = f"transformers generate, static batch {STATIC_BATCH}"
    server = Server(uri, args.threads, scratch / "server.log")
    try:
        for concurrency in CONCURRENCY:
            for each in clients:
                row = summarize(f"slimserve c{concurrency}" + ("" if each == client else f", {each} client"),
                                *run_server(server, requests[:counts[concurrency]], concurrency, each), client=each,
                                concurrency=concurrency)
                (rows if each == client else extra_rows).append(row)
                print_table([row])
        single = requests[:counts[8]]  # one at a time: a rate, so fewer requests do
        rows.append(summarize("transformers generate, one at a time", *run_transformers(directory, single, 1)))
        print_table(rows[-1:])
        pairs = paired_rounds(server, directory, requests[:counts[32]], args.rounds, static_label, client)
    finally:
        server.stop()
    static = median_row([pair[1] for pair in pairs])
    rows[CONCURRENCY.index(32)] = median_row([pair[0] for pair in pairs])
    rows.append(static)
    for artifact in args.artifact:
        server = Server(artifact, args.threads, scratch / f"server-{len(rows)}.log")
        try:
            for concurrency in (1, 32):
                rows.append(summarize(f"{artifact.rstrip('/').rsplit('/', 1)[-1]} c{concurrency}",
                                      *run_server(server, requests[:counts[concurrency]], concurrency, client),
                                      client=client, concurrency=concurrency))
        finally:
            server.stop()
    print(f"\nfigures from {client}" + (f"; the rows of {', '.join(extra_clients)} follow them" if extra_clients else ""))
    print_table(rows + extra_rows)

    by_name = {row["row"]: row for row in rows}
    alone = by_name["transformers generate, one at a time"]
    print(f"\n(concurrency 32 and static batching: medians of {len(pairs)} paired rounds)")
    targets = {"client": client, "paired_rounds": len(pairs)}
    for rate, what in (("tokens_per_s", "tokens/s"), ("tokens_per_cpu_s", "tokens per CPU second")):
        c32 = by_name["slimserve c32"][rate]
        ratios = sorted(server_row[rate] / static_row[rate] for server_row, static_row in pairs)
        targets[rate] = {"vs_one_at_a_time": c32 / alone[rate], "vs_static_batching": statistics.median(ratios),
                         "pairs": ratios}
        print(f"at concurrency 32, {what}: {c32 / alone[rate]:.2f}x one-at-a-time (target >= 3), "
              f"{statistics.median(ratios):.2f}x static batching (target >= 1.3; pairs {ratios[0]:.2f}x to "
              f"{ratios[-1]:.2f}x); load average {os.getloadavg()[0]:.1f}")
    split = by_name["slimserve c32"]["cpu_ms_per_token"]
    print(f"CPU ms per token at concurrency 32: the server's worker threads (the engine, the model) "
          f"{split['server_workers']:.3f}, its event loop {split['event_loop']:.3f}, the client {split['client']:.3f}; "
          f"static batching {1000 / static['tokens_per_cpu_s']:.3f}")
    for artifact_row in rows[len(CONCURRENCY) + 2:]:
        base = by_name[f"slimserve c{artifact_row['row'].rsplit('c', 1)[1]}"]["tokens_per_s"]
        print(f"{artifact_row['row']}: {artifact_row['tokens_per_s'] / base:.2f}x the fp32 server's tokens/s")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "rows": rows + extra_rows, "targets": targets}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
