// A small gRPC-Web client for the Open Inference Protocol's inference.GRPCInferenceService.
//
// Hand-written on purpose instead of bundling the npm `grpc-web` runtime and a protobuf library: the page
// needs three unary methods and six messages, this file is a few hundred readable lines with no build
// step, bundler or lockfile behind a committed blob, and it works offline (air-gapped clusters). The
// server's compatibility with the reference runtime is tested separately (tests/web/node, npm grpc-web).
//
// Wire format: binary gRPC-Web (application/grpc-web+proto) over fetch(). A request body is one frame
// (flags byte 0, 4-byte big-endian length, the protobuf message); the answer holds a message frame and a
// trailer frame (flags 0x80, "key: value\r\n" lines), or no body and the status in the headers.

const SERVICE = "inference.GRPCInferenceService";

// gRPC status codes by number, for messages a person reads.
export const STATUS_NAMES = [
  "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
  "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

export class GrpcWebError extends Error {
  constructor(code, message) {
    super(`${STATUS_NAMES[code] ?? code}: ${message}`);
    this.code = code;
    this.details = message;
  }
}

// ---------------------------------------------------------------------------------------------------
// Protobuf encoding: only the wire types these messages use (varint 0, 64-bit 1, length-delimited 2,
// 32-bit 5). int64 values travel as BigInt internally so that -1 (a variable dimension) survives.

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

class Writer {
  constructor() { this.bytes = []; }
  varint(value) {
    let v = BigInt.asUintN(64, BigInt(value));
    while (v > 0x7fn) { this.bytes.push(Number(v & 0x7fn) | 0x80); v >>= 7n; }
    this.bytes.push(Number(v));
  }
  tag(field, wireType) { this.varint((field << 3) | wireType); }
  lengthDelimited(field, payload) { this.tag(field, 2); this.varint(payload.length); this.bytes.push(...payload); }
  string(field, value) { if (value) this.lengthDelimited(field, utf8.encode(value)); }
  message(field, writer) { this.lengthDelimited(field, writer.finish()); }
  packedInt64(field, values) {
    if (!values.length) return;
    const inner = new Writer();
    values.forEach((v) => inner.varint(v));
    this.lengthDelimited(field, inner.finish());
  }
  packedFloat(field, values) {
    if (!values.length) return;
    const view = new DataView(new ArrayBuffer(4 * values.length));
    values.forEach((v, i) => view.setFloat32(4 * i, v, true));
    this.lengthDelimited(field, new Uint8Array(view.buffer));
  }
  finish() { return Uint8Array.from(this.bytes); }
}

// Reads a message into {field number: [values]}: BigInt for varints, Uint8Array for everything else.
function readFields(bytes) {
  const fields = new Map();
  let pos = 0;
  const varint = () => {
    let result = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (pos >= bytes.length) throw new Error("truncated varint in a protobuf message");
      const byte = bytes[pos++];
      result |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return result;
    }
  };
  const take = (n) => {
    if (pos + n > bytes.length) throw new Error("truncated field in a protobuf message");
    const slice = bytes.subarray(pos, pos + n);
    pos += n;
    return slice;
  };
  while (pos < bytes.length) {
    const key = varint();
    const field = Number(key >> 3n);
    const wireType = Number(key & 7n);
    let value;
    if (wireType === 0) value = varint();
    else if (wireType === 1) value = take(8);
    else if (wireType === 2) value = take(Number(varint()));
    else if (wireType === 5) value = take(4);
    else throw new Error(`unsupported protobuf wire type ${wireType}`);
    if (!fields.has(field)) fields.set(field, []);
    fields.get(field).push({ wireType, value });
  }
  return fields;
}

const all = (fields, n) => fields.get(n) ?? [];
const last = (fields, n) => all(fields, n).at(-1);
const str = (fields, n) => { const f = last(fields, n); return f ? fromUtf8.decode(f.value) : ""; };
const strings = (fields, n) => all(fields, n).map((f) => fromUtf8.decode(f.value));
const messages = (fields, n) => all(fields, n).map((f) => readFields(f.value));

// Repeated varint fields (int64, int32, uint32, ...), packed or one per field, as Numbers.
function int64s(fields, n) {
  const out = [];
  for (const f of all(fields, n)) {
    if (f.wireType === 0) { out.push(Number(BigInt.asIntN(64, f.value))); continue; }
    for (let pos = 0; pos < f.value.length;) {
      let result = 0n;
      for (let shift = 0n; ; shift += 7n) {
        if (pos >= f.value.length) throw new Error("truncated packed varint in a protobuf message");
        const byte = f.value[pos++];
        result |= BigInt(byte & 0x7f) << shift;
        if (!(byte & 0x80)) break;
      }
      out.push(Number(BigInt.asIntN(64, result)));
    }
  }
  return out;
}

function fixedValues(fields, n, size, read) { // packed (wire type 2) or one value per field
  const out = [];
  for (const f of all(fields, n)) {
    const view = new DataView(f.value.buffer, f.value.byteOffset, f.value.byteLength);
    for (let offset = 0; offset + size <= f.value.byteLength; offset += size) out.push(read(view, offset));
  }
  return out;
}
const float32s = (fields, n) => fixedValues(fields, n, 4, (v, o) => v.getFloat32(o, true));
const float64s = (fields, n) => fixedValues(fields, n, 8, (v, o) => v.getFloat64(o, true));

// InferParameter: oneof bool 1, int64 2, string 3, double 4, uint64 5.
function parameterValue(fields) {
  if (fields.has(1)) return last(fields, 1).value !== 0n;
  if (fields.has(2)) return Number(BigInt.asIntN(64, last(fields, 2).value));
  if (fields.has(3)) return str(fields, 3);
  if (fields.has(4)) return float64s(fields, 4).at(-1);
  if (fields.has(5)) return Number(last(fields, 5).value);
  return null;
}

function parameterMap(fields, n) { // map<string, InferParameter>: entries {1: key, 2: value}
  const out = {};
  for (const entry of messages(fields, n)) {
    const value = last(entry, 2);
    out[str(entry, 1)] = parameterValue(value ? readFields(value.value) : new Map());
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Tensors: typed contents (InferTensorContents) or raw little-endian bytes, decoded by OIP datatype.

function decodeRaw(bytes, datatype) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const read = {
    FP32: [4, (o) => view.getFloat32(o, true)], FP64: [8, (o) => view.getFloat64(o, true)],
    INT8: [1, (o) => view.getInt8(o)], INT16: [2, (o) => view.getInt16(o, true)], INT32: [4, (o) => view.getInt32(o, true)],
    INT64: [8, (o) => Number(view.getBigInt64(o, true))], UINT8: [1, (o) => view.getUint8(o)],
    UINT16: [2, (o) => view.getUint16(o, true)], UINT32: [4, (o) => view.getUint32(o, true)],
    UINT64: [8, (o) => Number(view.getBigUint64(o, true))], BOOL: [1, (o) => view.getUint8(o) !== 0],
  }[datatype];
  if (datatype === "BYTES") { // each element: 4-byte little-endian length, then the bytes
    const out = [];
    for (let o = 0; o < bytes.length;) { const n = view.getUint32(o, true); out.push(bytes.slice(o + 4, o + 4 + n)); o += 4 + n; }
    return out;
  }
  if (!read) throw new Error(`datatype ${datatype} is not supported by the playground`);
  const [size, get] = read;
  return Array.from({ length: bytes.length / size }, (_, i) => get(i * size));
}

function decodeContents(fields, datatype) {
  switch (datatype) {
    case "BOOL": return int64s(fields, 1).map((v) => v !== 0);
    case "INT8": case "INT16": case "INT32": return int64s(fields, 2);
    case "INT64": return int64s(fields, 3);
    case "UINT8": case "UINT16": case "UINT32": return int64s(fields, 4);
    case "UINT64": return int64s(fields, 5);
    case "FP32": return float32s(fields, 6);
    case "FP64": return float64s(fields, 7);
    case "BYTES": return all(fields, 8).map((f) => f.value);
    default: throw new Error(`datatype ${datatype} has no typed contents`);
  }
}

function tensorMetadata(fields) {
  return { name: str(fields, 1), datatype: str(fields, 2), shape: int64s(fields, 3) };
}

// ---------------------------------------------------------------------------------------------------
// Messages of inference.GRPCInferenceService (field numbers of the KServe V2 / Triton proto).

// inputs: [{name, datatype, shape, data}] with data a flat array (numbers, or strings for BYTES).
function encodeInferRequest({ modelName, modelVersion = "", id = "", inputs }) {
  const w = new Writer();
  w.string(1, modelName);
  w.string(2, modelVersion);
  w.string(3, id);
  for (const input of inputs) {
    const t = new Writer();
    t.string(1, input.name);
    t.string(2, input.datatype);
    t.packedInt64(3, input.shape);
    const contents = new Writer();
    if (input.datatype === "FP32") contents.packedFloat(6, input.data);
    else if (input.datatype === "BYTES") input.data.forEach((s) => contents.lengthDelimited(8, typeof s === "string" ? utf8.encode(s) : s));
    else throw new Error(`the playground sends FP32 and BYTES inputs, not ${input.datatype}`);
    t.message(5, contents);
    w.message(5, t);
  }
  return w.finish();
}

function decodeInferResponse(bytes) {
  const f = readFields(bytes);
  const raw = all(f, 6).map((x) => x.value);
  const outputs = messages(f, 5).map((o, i) => {
    const tensor = tensorMetadata(o);
    tensor.parameters = parameterMap(o, 4);
    tensor.data = raw.length ? decodeRaw(raw[i], tensor.datatype)
      : decodeContents(last(o, 5) ? readFields(last(o, 5).value) : new Map(), tensor.datatype);
    return tensor;
  });
  return { modelName: str(f, 1), modelVersion: str(f, 2), id: str(f, 3), parameters: parameterMap(f, 4), outputs };
}

function decodeModelMetadata(bytes) {
  const f = readFields(bytes);
  return {
    name: str(f, 1), versions: strings(f, 2), platform: str(f, 3),
    inputs: messages(f, 4).map(tensorMetadata), outputs: messages(f, 5).map(tensorMetadata),
  };
}

function decodeServerMetadata(bytes) {
  const f = readFields(bytes);
  return { name: str(f, 1), version: str(f, 2), extensions: strings(f, 3) };
}

// ---------------------------------------------------------------------------------------------------
// Transport.

function frame(message) {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length, false);
  out.set(message, 5);
  return out;
}

function parseTrailers(bytes) {
  const trailers = {};
  for (const line of fromUtf8.decode(bytes).split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) trailers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return trailers;
}

function raiseForStatus(status, message) {
  const code = Number(status);
  if (code !== 0) throw new GrpcWebError(code, decodeURIComponent(message ?? ""));
}

export class GrpcWebClient {
  constructor(baseUrl = "") { this.baseUrl = baseUrl; }

  // One unary call; resolves to the response message's bytes.
  async unary(method, requestBytes) {
    const response = await fetch(`${this.baseUrl}/${SERVICE}/${method}`, {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", "x-user-agent": "slimserve-playground/1" },
      body: frame(requestBytes),
    });
    const headerStatus = response.headers.get("grpc-status");
    if (headerStatus !== null) raiseForStatus(headerStatus, response.headers.get("grpc-message"));
    if (!response.ok) throw new GrpcWebError(14, `HTTP ${response.status} from the server`);
    const body = new Uint8Array(await response.arrayBuffer());
    let message = null;
    let trailers = null;
    for (let pos = 0; pos < body.length;) {
      if (pos + 5 > body.length) throw new GrpcWebError(13, "truncated frame in the response");
      const flags = body[pos];
      const length = new DataView(body.buffer, body.byteOffset + pos + 1, 4).getUint32(0, false);
      const payload = body.subarray(pos + 5, pos + 5 + length);
      if (payload.length !== length) throw new GrpcWebError(13, "truncated frame in the response");
      if (flags & 0x80) trailers = parseTrailers(payload);
      else message = payload;
      pos += 5 + length;
    }
    if (!trailers) throw new GrpcWebError(13, "the response has no trailers (no grpc-status)");
    raiseForStatus(trailers["grpc-status"], trailers["grpc-message"]);
    if (message === null) throw new GrpcWebError(13, "the response has no message");
    return message;
  }

  async serverMetadata() {
    return decodeServerMetadata(await this.unary("ServerMetadata", new Uint8Array()));
  }

  async modelMetadata(name, version = "") {
    const w = new Writer();
    w.string(1, name);
    w.string(2, version);
    return decodeModelMetadata(await this.unary("ModelMetadata", w.finish()));
  }

  async modelInfer(request) {
    return decodeInferResponse(await this.unary("ModelInfer", encodeInferRequest(request)));
  }
}
