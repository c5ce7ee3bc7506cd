"""ghz as the gRPC load generator: unary ModelInfer calls of one serialized request, on one connection.

The server's proto (`slimserve.oip.v2`, see open_inference_v2.proto) has the messages but no service: the
service path `inference.GRPCInferenceService` is registered by the server. ghz needs both, so `protoset`
writes a descriptor set of the same messages under package `inference` with that service, the wire
contract every OIP server (KServe's too) answers. ghz has no warm-up phase: `run` makes a short run first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

from google.protobuf import descriptor_pb2

from slimserve.serving.proto import open_inference_v2_pb2 as pb

from . import measured, window

TOOLS_SCRIPT = Path(__file__).resolve().parents[1] / "tools.sh"
PACKAGE, SERVICE = "inference", "GRPCInferenceService"
CALL = f"{PACKAGE}.{SERVICE}/ModelInfer"


def binary() -> str:
    path = subprocess.run([str(TOOLS_SCRIPT), "--print-ghz"], check=True, capture_output=True, text=True).stdout.strip()
    if not os.access(path, os.X_OK):
        raise SystemExit(f"ghz not built ({path}): run benchmarks/tools.sh")
    return path


def protoset(path: Path) -> Path:
    """Write the OIP messages with the ModelInfer service as a FileDescriptorSet to `path`."""
    source = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(source)
    ours = f".{source.package}."
    source.name, source.package = "grpc_predict_v2.proto", PACKAGE
    for message in source.message_type:
        _rename_types(message, ours, f".{PACKAGE}.")
    method = source.service.add(name=SERVICE).method.add(name="ModelInfer")
    method.input_type, method.output_type = f".{PACKAGE}.ModelInferRequest", f".{PACKAGE}.ModelInferResponse"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[source]).SerializeToString())
    return path


def _rename_types(message: descriptor_pb2.DescriptorProto, old: str, new: str) -> None:
    for field in message.field:
        if field.type_name.startswith(old):
            field.type_name = new + field.type_name[len(old):]
    for nested in message.nested_type:
        _rename_types(nested, old, new)


def command(target: str, protoset_path: Path, request: Path, concurrency: int, duration_s: float,
            metadata: dict[str, str] | None = None, tls: bool = False) -> list[str]:
    """ghz's command line: `concurrency` workers on one connection for `duration_s`, each sending the
    serialized ModelInferRequest in `request`; a JSON summary on stdout. The calls still in flight when the
    time is up are waited for and counted, with their time (--duration-stop=wait): cutting them off would
    lose a batch's worth of calls as slow as MiniLM's under load, and count them as errors. `tls`: over TLS,
    the server's certificate unverified (the handshake and the encryption are what is measured)."""
    args = [binary(), "--skipTLS" if tls else "--insecure", f"--protoset={protoset_path}", f"--call={CALL}",
            f"--binary-file={request}",
            f"--concurrency={concurrency}", "--connections=1", f"--duration={max(1, round(duration_s * 1000))}ms",
            "--total=0", "--duration-stop=wait", "--format=json"]
    if metadata:
        args.append(f"--metadata={json.dumps(metadata)}")
    return [*args, target]


def parse(stdout: str, concurrency: int) -> dict:
    """The result dict of one run from ghz's JSON report: counts from its summary, the rate and latency
    percentiles from its per-call details (loadgen.window), counted as every client's are."""
    summary = json.loads(stdout)
    statuses = summary.get("statusCodeDistribution") or {}
    ok = int(statuses.get("OK", 0))
    result = {"requests": ok, "errors": int(summary["count"]) - ok, "seconds": summary["total"] / 1e9}
    details = [d for d in summary.get("details") or [] if d.get("status") == "OK" and not d.get("error")]
    if len(details) != ok:
        raise ValueError(f"ghz reported {ok} OK calls but details of {len(details)}")
    if ok:
        # A detail's timestamp is when the call ended (ghz's stats handler); its latency in nanoseconds.
        ends_ns = [_unix_ns(d["timestamp"]) for d in details]
        origin = min(ends_ns)
        answered = window.Answered.of([(end - origin) / 1e9 for end in ends_ns], [d["latency"] / 1e9 for d in details])
        result.update(window.steady(answered, concurrency))
    return result


RFC3339_NANO = re.compile(r"(?P<seconds>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d{1,9}))?(?P<zone>Z|[+-]\d\d:\d\d)")


def _unix_ns(timestamp: str) -> int:
    """Nanoseconds since the epoch of a Go time in JSON (RFC 3339, up to nanoseconds), exactly."""
    match = RFC3339_NANO.fullmatch(timestamp)
    if not match:
        raise ValueError(f"not an RFC 3339 time: {timestamp!r}")
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    seconds = int(datetime.fromisoformat(match["seconds"] + zone).timestamp())
    return seconds * 10**9 + int((match["fraction"] or "").ljust(9, "0"))


def run(target: str, request: bytes, concurrency: int, duration_s: float, warmup_s: float,
        metadata: dict[str, str] | None = None, tls: bool = False) -> dict:
    """A warm-up run, then the measured one, against `target` (host:port): the result dict with the
    client's CPU columns."""
    with tempfile.TemporaryDirectory(prefix="ghz-") as scratch:
        request_path = Path(scratch) / "request.bin"
        request_path.write_bytes(request)
        descriptors = protoset(Path(scratch) / "oip.protoset")
        if warmup_s > 0:
            measured.run(command(target, descriptors, request_path, concurrency, warmup_s, metadata, tls), warmup_s + 60)
        finished = measured.run(command(target, descriptors, request_path, concurrency, duration_s, metadata, tls),
                                timeout_s=duration_s + 60)
        if finished.returncode != 0 or not finished.stdout.strip():
            return {"requests": 0, "errors": -1, "failure": (finished.stderr or finished.stdout)[-500:]}
        return {**parse(finished.stdout, concurrency), **measured.client_fields("ghz", finished)}
