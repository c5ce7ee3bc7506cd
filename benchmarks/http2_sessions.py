"""The gRPC port's HTTP/2 backends side by side: CPU per call for one call's frames in and out, in process.

Each backend (`slimserve.serving.http2`: libnghttp2 through ctypes, and python-hyper's h2) serves the same
recorded client bytes: a connection preface, then N unary gRPC calls as grpc-go sends them (HEADERS with the
usual request headers, one DATA frame with a 5-byte-prefixed message and END_STREAM). For each call the server
reads its events, answers with response headers, one message and the status trailers, and takes the bytes to
write; no sockets, no event loop, so the figure is the HTTP/2 layer's alone. Rounds alternate between the
backends so drift on a busy machine hits both alike; it prints µs per call (median of the rounds) and the
ratio.

    .venv/bin/python benchmarks/http2_sessions.py                  # 3000 calls, 5 rounds
    .venv/bin/python benchmarks/http2_sessions.py --calls 10000 --json /tmp/http2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import h2.config
import h2.connection
import h2.events

from slimserve.serving.http2 import SessionSettings, nghttp2_lib, open_session
from slimserve.serving.http2 import session as http2

SETTINGS = SessionSettings(max_concurrent_streams=1000, initial_window=4 << 20, max_header_list_bytes=16 << 10,
                           connection_window=4 << 20)
REQUEST_BYTES = 300  # about a digits-MLP ModelInferRequest with raw_input_contents
RESPONSE_BYTES = 60


def _message(size: int) -> bytes:
    return b"\x00" + size.to_bytes(4, "big") + b"x" * size


def recorded_calls(calls: int) -> tuple[bytes, list[bytes]]:
    """The client's preface, then each call's bytes, made by h2's client against generous server settings."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.increment_flow_control_window(1 << 30)  # room for every reply: a recording never credits the server
    preface = client.data_to_send()
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    peer.initiate_connection()
    peer.receive_data(preface)
    peer.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1 << 30,
                          h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 30})
    peer.increment_flow_control_window(1 << 30)
    client.receive_data(peer.data_to_send())
    client.data_to_send()  # its SETTINGS ACK is for this stand-in peer, not for the measured server
    body = _message(REQUEST_BYTES)
    out = []
    for _ in range(calls):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, [
            (":method", "POST"), (":scheme", "http"), (":path", "/inference.GRPCInferenceService/ModelInfer"),
            (":authority", "127.0.0.1:8081"), ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.71.0"), ("te", "trailers"), ("grpc-timeout", "19999958u"),
        ])
        client.send_data(stream_id, body, end_stream=True)
        out.append(client.data_to_send())
    return preface, out


def us_per_call(backend: str, preface: bytes, calls: list[bytes]) -> float:
    session = open_session(SETTINGS, backend)
    session.receive(preface)
    session.data_to_send()
    reply = _message(RESPONSE_BYTES)
    headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    trailers = [(b"grpc-status", b"0")]
    answered = 0
    start = time.perf_counter()
    for data in calls:
        for event in session.receive(data):
            if event[0] == http2.ENDED:
                stream_id = event[1]
                session.send_headers(stream_id, headers)
                session.send_data(stream_id, reply)
                session.send_headers(stream_id, trailers, end_stream=True)
                answered += 1
        session.data_to_send()
    elapsed = time.perf_counter() - start
    if answered != len(calls):
        raise RuntimeError(f"{backend} answered {answered} of {len(calls)} calls")
    return 1e6 * elapsed / len(calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if nghttp2_lib.load() is None:
        print("libnghttp2 is not installed here (Debian: libnghttp2-14): nothing to compare", file=sys.stderr)
        return 1
    preface, calls = recorded_calls(args.calls)
    figures: dict[str, list[float]] = {"nghttp2": [], "h2": []}
    for _ in range(args.rounds):
        for backend in figures:
            figures[backend].append(us_per_call(backend, preface, calls))
    median = {backend: statistics.median(values) for backend, values in figures.items()}
    print(f"HTTP/2 layer of one unary gRPC call ({REQUEST_BYTES}-byte request, {RESPONSE_BYTES}-byte reply), "
          f"{args.calls} calls x {args.rounds} rounds, median:")
    print("| backend | µs per call | rounds |")
    print("| --- | --- | --- |")
    names = {"nghttp2": f"libnghttp2 {nghttp2_lib.version()} (ctypes)", "h2": f"h2 {h2.__version__}"}
    for backend, values in figures.items():
        print(f"| {names[backend]} | {median[backend]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"h2 / libnghttp2: {median['h2'] / median['nghttp2']:.2f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"calls": args.calls, "us_per_call": figures, "versions": names}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
