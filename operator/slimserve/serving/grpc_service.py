"""The gRPC endpoint: service `inference.GRPCInferenceService`, served by `grpc_server` (and gRPC-Web).

Runs on the same asyncio loop as the REST app, so both protocols share one data plane and one batch
queue. Handlers are registered with a generic handler under the standard service name, using messages
from our own proto package (see the note in open_inference_v2.proto on why not package `inference`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import grpc
import numpy as np

from slimserve.serving.access_log import REQUEST_ID_HEADER, request_id
from slimserve.serving.auth import API_KEY_HEADER, AUTHORIZATION_HEADER, Auth
from slimserve.serving.dataplane import BATCH_SIZE_PARAMETER, DataPlane, RequestTimer
from slimserve.serving.errors import InvalidInput, client_message, grpc_status
from slimserve.serving.grpc_calls import ServicerContext
from slimserve.serving.protocol import InferRequest, InferResponse, InputTensor, RequestedOutput
from slimserve.serving.proto import open_inference_v2_pb2 as pb
from slimserve.serving.tensors import encode_raw
from slimserve.serving.tracing import (
    DECODE_SPAN, ENCODE_SPAN, GRPC_SPAN, NO_TRACE, TRACEPARENT, TRACESTATE, RequestTrace,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
# The payload log's content type of the messages it sends as they were received and returned.
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"

# Typed `InferTensorContents` field of each datatype (FP16/BF16 have none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_to_dict(parameters) -> dict:
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def request_from_proto(message: pb.ModelInferRequest) -> InferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs")
    inputs = []
    for index, tensor in enumerate(message.inputs):
        what = f"input '{tensor.name}'"
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{what}: contents must be empty when raw_input_contents is used")
            payload = raw[index]
        else:
            payload = _typed_contents(tensor, what)
        inputs.append(
            InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), payload, parameters_to_dict(tensor.parameters))
        )
    outputs = None
    if message.outputs:
        outputs = [RequestedOutput(o.name, parameters=parameters_to_dict(o.parameters)) for o in message.outputs]
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        inputs=inputs,
        outputs=outputs,
        id=message.id or None,
        parameters=parameters_to_dict(message.parameters),
    )


def _typed_contents(tensor, what: str) -> list:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(f"{what}: datatype {tensor.datatype!r} has no typed contents; send raw_input_contents")
    contents = tensor.contents
    for other in set(CONTENTS_FIELD.values()) - {field}:
        if len(getattr(contents, other)):
            raise InvalidInput(f"{what}: a {tensor.datatype} tensor carries its data in {field}, not {other}")
    return list(getattr(contents, field))


def response_to_proto(response: InferResponse, raw: bool) -> pb.ModelInferResponse:
    """Raw output contents when the request came raw (as tritonclient expects), typed contents otherwise."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version)
    if response.id:
        message.id = response.id
    for key, value in response.parameters.items():
        _set_parameter(message.parameters[key], value)
    for output in response.outputs:
        tensor = message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if raw or output.datatype not in CONTENTS_FIELD:
            message.raw_output_contents.append(encode_raw(output.data, output.datatype))
        else:
            _fill_typed(tensor.contents, output.data, output.datatype)
    return message


def _set_parameter(parameter: pb.InferParameter, value: bool | int | float | str) -> None:
    if isinstance(value, bool):  # before int: bool is an int subclass
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def _fill_typed(contents, data: np.ndarray, datatype: str) -> None:
    flat = data.reshape(-1)
    values = list(flat) if datatype == "BYTES" else flat.tolist()
    getattr(contents, CONTENTS_FIELD[datatype]).extend(values)


class InferenceServicer:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        metadata = self.dataplane.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context, trace: RequestTrace = NO_TRACE
    ) -> pb.ModelInferResponse:
        # gRPC (and the gRPC-Web middleware) call this with the whole message received.
        self.dataplane.check_inference_target(request.model_name, request.model_version)
        with RequestTimer(self.dataplane.metrics, _protocol(context)):
            with trace.phase(DECODE_SPAN):
                parsed = request_from_proto(request)
            response = await self.dataplane.infer(parsed, trace)
            with trace.phase(ENCODE_SPAN):
                return response_to_proto(response, raw=bool(request.raw_input_contents))


_METHODS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


# The request field that names the model, per method (the access log's "model").
_MODEL_FIELD = {"ModelInfer": "model_name", "ModelReady": "name", "ModelMetadata": "name"}
# What probes call: answered without a credential when auth is on (as grpc.health.v1.Health is).
PUBLIC_METHODS = frozenset({"ServerLive", "ServerReady"})


def _with_status(
    method: str, handler: Callable[..., Awaitable], dataplane: DataPlane, auth: Auth | None = None
) -> Callable[..., Awaitable]:
    """Maps domain errors to gRPC status codes, counts and logs every call, and sends its request id back;
    with `auth`, a call of any method but the public ones needs a credential."""
    metrics, access_log = dataplane.metrics, dataplane.access_log
    model_field = _MODEL_FIELD.get(method)
    auth = None if method in PUBLIC_METHODS else auth
    inference = method == "ModelInfer"  # traced and payload-logged
    payload_log = dataplane.payload_log if inference else None

    async def call(received, context: ServicerContext):
        start = time.perf_counter()
        # Payload-logged calls get the bytes received beside the message, and return the bytes they send.
        request, received_bytes = received if payload_log is not None else (received, None)
        protocol = _protocol(context)
        sent = _sent_metadata(context)
        rid = request_id(sent.get(REQUEST_ID_HEADER))
        reply_metadata = ((REQUEST_ID_HEADER, rid),)
        model = getattr(request, model_field) if model_field else None
        try:
            if auth is not None:
                await auth.check(protocol, sent.get(AUTHORIZATION_HEADER), sent.get(API_KEY_HEADER))
            if inference:
                response, reply = await _infer(handler, request, received_bytes, context, dataplane, sent, rid, model)
            else:
                response = reply = await handler(request, context)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            code = grpc_status(error)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("gRPC %s failed (request id %s)", method, rid)
            metrics.count(protocol, method, code.name)
            access_log.record(rid, model, protocol, code.value[0], time.perf_counter() - start)
            await context.abort(code, client_message(error), trailing_metadata=reply_metadata)
        await context.send_initial_metadata(reply_metadata)
        context.set_trailing_metadata(reply_metadata)
        metrics.count(protocol, method, "OK")
        batch_size = response.parameters[BATCH_SIZE_PARAMETER].int64_param if inference else None
        access_log.record(rid, model, protocol, grpc.StatusCode.OK.value[0], time.perf_counter() - start,
                          batch_size)
        return reply

    return call


async def _infer(handler, request, received_bytes: bytes | None, context, dataplane: DataPlane,
                 sent: dict, rid: str, model: str) -> tuple[pb.ModelInferResponse, pb.ModelInferResponse | bytes]:
    """One authorized ModelInfer, traced; (the response, what the call returns: the response, or its bytes when
    payload-logged). Like KServe's logger, the payload log gets every request that passed auth and the
    response of each that succeeded: the bytes as received and as sent, none serialized again for it."""
    trace = dataplane.tracing.start(GRPC_SPAN, sent.get(TRACEPARENT), sent.get(TRACESTATE), rid, model)
    if received_bytes is None:
        with trace:
            response = await handler(request, context, trace)
        return response, response
    sent_bytes = None
    try:
        with trace:
            response = await handler(request, context, trace)
        sent_bytes = response.SerializeToString()
        return response, sent_bytes
    finally:
        dataplane.payload_log.record(rid, model, received_bytes, PROTOBUF_CONTENT_TYPE, sent_bytes,
                                     PROTOBUF_CONTENT_TYPE)


_READ_METADATA = (REQUEST_ID_HEADER, TRACEPARENT, TRACESTATE, AUTHORIZATION_HEADER, API_KEY_HEADER)


def _sent_metadata(context) -> dict[str, str | bytes]:
    """The request id, trace context and credential the client sent (first value of each)."""
    sent: dict[str, str | bytes] = {}
    for key, value in context.invocation_metadata() or ():
        if key in _READ_METADATA and key not in sent:
            sent[key] = value
    return sent


def _protocol(context) -> str:
    """Metrics label: "grpc", or what a mounted transport's context says it is (gRPC-Web: "grpc-web")."""
    return getattr(context, "protocol", "grpc")


def method_handlers(dataplane: DataPlane, auth: Auth | None = None) -> dict[str, grpc.RpcMethodHandler]:
    """Method name -> handler of `inference.GRPCInferenceService` (also for mounting, e.g. gRPC-Web)."""
    servicer = InferenceServicer(dataplane)
    handlers = {}
    for name, (request_type, response_type) in _METHODS.items():
        deserializer, serializer = request_type.FromString, response_type.SerializeToString
        if name == "ModelInfer" and dataplane.payload_log is not None:
            # The bytes received ride beside the message; the handler returns the bytes it sends.
            deserializer, serializer = _with_bytes(request_type.FromString), None
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            _with_status(name, getattr(servicer, name), dataplane, auth),
            request_deserializer=deserializer, response_serializer=serializer,
        )
    return handlers


def _with_bytes(parse: Callable[[bytes], object]) -> Callable[[bytes], tuple[object, bytes]]:
    def deserialize(data: bytes) -> tuple[object, bytes]:
        return parse(data), data

    return deserialize


def add_inference_service(server, dataplane: DataPlane, auth: Auth | None = None) -> None:
    """Serve `inference.GRPCInferenceService` on `server` (a `grpc_server.GrpcServer`)."""
    server.add_registered_method_handlers(SERVICE_NAME, method_handlers(dataplane, auth))
