// Calls a SlimServe server through the reference gRPC-Web client runtime (npm grpc-web) in Node, with the
// messages built by protobufjs from the server's own .proto, and prints what came back as one JSON line.
//
// Usage: node grpc_web_call.js '<json>' where the JSON holds
//   {url, proto, model, format: "binary"|"text", inputs: [{name, datatype, shape, data}]}
// (data: numbers, or strings for BYTES). Prints
//   {format, serverMetadata, modelMetadata, infer: {modelName, parameters, outputs}, unknownModelError}.
"use strict";

global.XMLHttpRequest = require("xhr2"); // grpc-web sends through XMLHttpRequest, which Node lacks
const grpcWeb = require("grpc-web");
const protobuf = require("protobufjs");

const SERVICE = "inference.GRPCInferenceService";
const CONTENTS_FIELD = { FP32: "fp32Contents", BYTES: "bytesContents", INT64: "int64Contents" };

function descriptor(root, method, requestName, responseName) {
  const Request = root.lookupType(`slimserve.oip.v2.${requestName}`);
  const Response = root.lookupType(`slimserve.oip.v2.${responseName}`);
  const toPlain = (message) =>
    Response.toObject(message, { longs: Number, bytes: String, defaults: true, arrays: true, oneofs: true });
  return new grpcWeb.MethodDescriptor(
    `/${SERVICE}/${method}`, grpcWeb.MethodType.UNARY, Request, Response,
    (request) => Request.encode(Request.fromObject(request)).finish(),
    (bytes) => toPlain(Response.decode(bytes)),
  );
}

function call(client, url, method, request) {
  return client.unaryCall(`${url}${method.getName()}`, request, {}, method);
}

function parameters(map) { // {key: {parameterChoice, boolParam, int64Param, ...}} -> {key: value}
  return Object.fromEntries(Object.entries(map ?? {}).map(([key, p]) => [key, p[p.parameterChoice]]));
}

async function main() {
  const spec = JSON.parse(process.argv[2]);
  const root = protobuf.loadSync(spec.proto);
  const client = new grpcWeb.GrpcWebClientBase({ format: spec.format });
  const methods = {
    serverMetadata: descriptor(root, "ServerMetadata", "ServerMetadataRequest", "ServerMetadataResponse"),
    modelMetadata: descriptor(root, "ModelMetadata", "ModelMetadataRequest", "ModelMetadataResponse"),
    modelInfer: descriptor(root, "ModelInfer", "ModelInferRequest", "ModelInferResponse"),
  };
  const inputs = spec.inputs.map((input) => ({
    name: input.name,
    datatype: input.datatype,
    shape: input.shape,
    contents: {
      [CONTENTS_FIELD[input.datatype]]:
        input.datatype === "BYTES" ? input.data.map((text) => Buffer.from(text, "utf8")) : input.data,
    },
  }));

  const serverMetadata = await call(client, spec.url, methods.serverMetadata, {});
  const modelMetadata = await call(client, spec.url, methods.modelMetadata, { name: spec.model });
  const response = await call(client, spec.url, methods.modelInfer, { modelName: spec.model, inputs });
  let unknownModelError = null;
  try {
    await call(client, spec.url, methods.modelInfer, { modelName: `${spec.model}-missing`, inputs });
  } catch (error) {
    unknownModelError = { code: error.code, message: error.message };
  }
  const outputs = response.outputs.map((output) => ({
    name: output.name,
    datatype: output.datatype,
    shape: output.shape,
    data: output.contents[CONTENTS_FIELD[output.datatype]],
  }));
  console.log(JSON.stringify({
    format: spec.format,
    serverMetadata,
    modelMetadata,
    infer: { modelName: response.modelName, parameters: parameters(response.parameters), outputs },
    unknownModelError,
  }));
}

main().catch((error) => {
  console.error(`gRPC-Web call failed: code ${error.code}: ${error.message}`);
  process.exit(1);
});
