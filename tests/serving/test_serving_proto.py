"""The committed gRPC messages: generated from the .proto, and wire-compatible with the standard OIP proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimserve.serving.proto import generate
from slimserve.serving.proto import open_inference_v2_pb2 as ours


def test_generated_modules_are_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    for fresh in generate.generate(tmp_path):
        committed = generate.PROTO_DIR / Path(fresh).name
        assert fresh.read_text() == committed.read_text(), (
            f"{committed.name} is stale: run python -m slimserve.serving.proto.generate"
        )


def _fields(descriptor) -> dict[int, tuple[str, int, bool]]:
    return {f.number: (f.name, f.type, f.is_repeated) for f in descriptor.fields}


def test_messages_match_the_standard_inference_proto_field_for_field():
    # tritonclient ships the standard `inference` package (a superset of the OIP messages); importing it
    # next to ours must work (ours live in another proto package) and every field must agree on the wire.
    theirs = pytest.importorskip("tritonclient.grpc.service_pb2")
    checked = 0
    for name, descriptor in ours.DESCRIPTOR.message_types_by_name.items():
        reference = theirs.DESCRIPTOR.message_types_by_name[name]
        for nested in [descriptor, *descriptor.nested_types]:
            other = reference if nested is descriptor else reference.nested_types_by_name[nested.name]
            for number, field in _fields(nested).items():
                assert _fields(other).get(number) == field, f"{nested.full_name} field {number} differs"
                checked += 1
    assert checked > 50
