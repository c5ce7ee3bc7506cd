"""Tensor encodings shared by both protocols, the REST binary extension, and gRPC typed contents."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from slimserve.serving.errors import InvalidInput
from slimserve.serving.protocol import InferResponse, OutputTensor
from slimserve.serving.rest_codec import parse_infer_request, render_infer_response
from slimserve.serving.tensors import decode_raw, decode_sequence, encode_raw


def test_bytes_tensors_round_trip_through_the_length_prefixed_raw_form():
    texts = np.array([b"hello", b"", "wörld".encode()], dtype=object)
    raw = encode_raw(texts, "BYTES")
    assert raw[:4] == struct.pack("<I", 5)
    back = decode_raw(raw, "BYTES", (3,), "input 'text'")
    assert list(back) == list(texts)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (struct.pack("<I", 5) + b"abc", "past the end"),
        (struct.pack("<I", 1) + b"a" + b"\x01\x00", "inside an element's 4-byte length"),
        (struct.pack("<I", 1) + b"a", "needs 2 elements, data has 1"),
    ],
)
def test_malformed_raw_bytes_are_refused_with_the_tensor_named(raw, message):
    with pytest.raises(InvalidInput, match=message) as error:
        decode_raw(raw, "BYTES", (2,), "input 'text'")
    assert "input 'text'" in str(error.value)


def test_raw_numbers_are_little_endian_writable_arrays():
    values = np.arange(6, dtype="<f4").reshape(2, 3)
    array = decode_raw(values.tobytes(), "FP32", (2, 3), "input 'x'")
    np.testing.assert_array_equal(array, values)
    assert array.flags.writeable


@pytest.mark.parametrize(
    ("values", "datatype", "shape", "message"),
    [
        ([1.5, 2.0], "INT32", (2,), "non-integer numbers"),
        ([1, 2**40], "INT32", (2,), "out of the range"),
        (["1.0", "2.0"], "FP32", (2,), "holds strings"),
        ([[1, 2], [3]], "FP32", (2, 2), "ragged"),
        ([1, 2, 3], "FP32", (2, 2), "needs 4 elements, data has 3"),
        ([1, 2], "BYTES", (2,), "must hold strings"),
        ([1.0], "BF16", (1,), "not supported"),
    ],
)
def test_sequences_that_do_not_fit_their_datatype_or_shape(values, datatype, shape, message):
    with pytest.raises(InvalidInput, match=message):
        decode_sequence(values, datatype, shape, "input 'x'")


def test_nested_and_flat_sequences_decode_alike():
    nested = decode_sequence([[1, 2], [3, 4]], "FP32", (2, 2), "input 'x'")
    flat = decode_sequence([1, 2, 3, 4], "FP32", (2, 2), "input 'x'")
    np.testing.assert_array_equal(nested, flat)
    assert nested.dtype == np.float32


def test_rest_binary_extension_reads_inputs_after_the_json_header():
    x = np.arange(4, dtype=np.float32)
    header = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],' \
             b'"parameters":{"binary_data_output":true}}'
    request = parse_infer_request(header + x.tobytes(), len(header), "m", "")
    assert bytes(request.inputs[0].payload) == x.tobytes()
    assert request.binary_outputs is True


def test_rest_response_puts_binary_outputs_after_the_json_header():
    y = np.arange(3, dtype=np.float32).reshape(1, 3)
    response = InferResponse("m", "1", [OutputTensor("y", "FP32", (1, 3), y, binary=True)], id="7")
    body, content_type, header_length = render_infer_response(response)
    assert content_type == "application/octet-stream"
    assert body[header_length:] == y.tobytes()
    assert b'"binary_data_size":12' in body[:header_length] and b'"id":"7"' in body[:header_length]
