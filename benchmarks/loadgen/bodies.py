"""The request bodies the native generators send: the same bytes the Python clients (tritonclient) send."""

from __future__ import annotations

import numpy as np

from slimserve.serving.proto import open_inference_v2_pb2 as pb


def rest_binary(name: str, datatype: str, array: np.ndarray, output: str) -> tuple[bytes, dict[str, str]]:
    """A REST infer body with the binary tensor extension (JSON header, then the raw tensor), and its headers."""
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(output, binary_data=True)]
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    return body, {"content-type": "application/octet-stream", "inference-header-content-length": str(json_size)}


def grpc_request(model: str, name: str, datatype: str, array: np.ndarray, output: str) -> pb.ModelInferRequest:
    """A ModelInferRequest with the tensor in raw_input_contents, as tritonclient.grpc builds it."""
    from tritonclient.utils import serialize_byte_tensor

    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
    raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else np.ascontiguousarray(array).tobytes()
    message.raw_input_contents.append(raw)
    message.outputs.add(name=output)
    return message
