"""A CloudEvents sink for the payload log rows: as cheap as an honest HTTP/1.1 server can be in Python.

It runs on the same cores as the server it receives from, so every microsecond it spends is taken from the
figure measured. An asyncio Protocol (on uvloop when installed) hands each read to `httptools` (C) and, for the
requests it completed, writes one fixed `200` per request in one write: no header or body becomes a Python
object. Pipelined requests are answered in order, as HTTP/1.1 wants. It counts the requests it answered and
prints the count as JSON when stopped (SIGTERM or SIGINT); its CPU share is measured from outside
(`measured.process_cpu_s` on its pid).

    python benchmarks/loadgen/sink.py --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import httptools

REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class Counts:
    requests = 0


class SinkProtocol(asyncio.Protocol):
    """One connection: counts complete requests per read and answers them together."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.completed = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def on_message_complete(self) -> None:
        self.completed += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        if self.completed:
            self.transport.write(REPLY * self.completed)
            Counts.requests += self.completed
            self.completed = 0


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set_result, None)
    server = await loop.create_server(SinkProtocol, host, port, backlog=1024)
    async with server:
        await stopped
    print(json.dumps({"requests": Counts.requests}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
