// The playground page: reads the served model's metadata over gRPC-Web, then offers the input form that
// fits it (an 8x8 digit grid for a [-1, 64] FP32 model, two texts for a BYTES model) and shows each answer
// with its latency and the batch size the server ran it in (response parameter `batch_size`).
import { GrpcWebClient, GrpcWebError } from "./grpc-web-client.js";

const client = new GrpcWebClient();
const $ = (id) => document.getElementById(id);
const GRID = 8;
const MAX_PIXEL = 16; // load_digits' scale
const SHOWN_EMBEDDING_VALUES = 8;
const BURST = 8;

let model = null; // ModelMetadata

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showCall(started, responses) {
  $("latency").textContent = `${(performance.now() - started).toFixed(1)} ms`;
  const sizes = responses.map((r) => r.parameters.batch_size ?? "–");
  $("batch-size").textContent = sizes.join(", ");
  setStatus("OK");
}

async function call(run) {
  const buttons = document.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    await run();
  } catch (error) {
    setStatus(error instanceof GrpcWebError ? error.message : `error: ${error.message}`, true);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// Row-major [rows, ...] data split into one flat array per row.
function rows(tensor) {
  const count = tensor.shape[0];
  const width = tensor.data.length / count;
  return Array.from({ length: count }, (_, i) => tensor.data.slice(i * width, (i + 1) * width));
}

// ------------------------------------------------------------------------------------------ digits
const pixels = new Float32Array(GRID * GRID);

function drawGrid(canvas, values) {
  const ctx = canvas.getContext("2d");
  const cell = canvas.width / GRID;
  for (let i = 0; i < GRID * GRID; i++) {
    const shade = Math.round(255 * (1 - values[i] / MAX_PIXEL));
    ctx.fillStyle = `rgb(${shade},${shade},${shade})`;
    ctx.fillRect((i % GRID) * cell, Math.floor(i / GRID) * cell, cell, cell);
  }
}

// Draws the grid being edited and publishes its values (data-pixels), what the next Predict sends.
function showPixels() {
  const canvas = $("digit-canvas");
  drawGrid(canvas, pixels);
  canvas.dataset.pixels = Array.from(pixels).join(",");
}

function paint(event) {
  const canvas = $("digit-canvas");
  const box = canvas.getBoundingClientRect();
  const col = Math.floor(((event.clientX - box.left) / box.width) * GRID);
  const row = Math.floor(((event.clientY - box.top) / box.height) * GRID);
  if (col < 0 || row < 0 || col >= GRID || row >= GRID) return;
  pixels[row * GRID + col] = MAX_PIXEL;
  // A soft brush: neighbours darken a little, like the pen strokes in the training images.
  for (const [dr, dc] of [[0, 1], [0, -1], [1, 0], [-1, 0]]) {
    const r = row + dr, c = col + dc;
    if (r >= 0 && c >= 0 && r < GRID && c < GRID) pixels[r * GRID + c] = Math.min(MAX_PIXEL, pixels[r * GRID + c] + 4);
  }
  showPixels();
}

// The model's output as probabilities: as is when it says it holds them, else the softmax of its logits.
function probabilities(values, outputName) {
  if (outputName.toLowerCase().includes("prob")) return values;
  const top = Math.max(...values); // softmax of logits, shifted for stability
  const exps = values.map((v) => Math.exp(v - top));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}

// Three decimals, or scientific notation for the tiny probabilities of classes far from the answer.
const formatProbability = (p) => (p >= 0.001 || p === 0 ? p.toFixed(3) : p.toExponential(1));

// The scores are the FP32 output (logits or probabilities); the label is the model's own INT64 output when
// it has one, else the most probable class.
function showDigit(outputs) {
  const scores = outputs.find((o) => o.datatype === "FP32");
  const label = outputs.find((o) => o.datatype === "INT64");
  const probs = probabilities(Array.from(rows(scores)[0]), scores.name);
  const best = label ? label.data[0] : probs.indexOf(Math.max(...probs));
  $("predicted-label").textContent = String(best);
  const list = $("probabilities");
  list.replaceChildren(...probs.map((p, label) => {
    const item = document.createElement("li");
    item.dataset.label = String(label);
    item.classList.toggle("top", label === best);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    const text = document.createElement("span");
    text.textContent = formatProbability(p);
    item.append(bar, text);
    return item;
  }));
}

function digitRequest() {
  const input = model.inputs[0];
  return {
    modelName: model.name,
    inputs: [{ name: input.name, datatype: "FP32", shape: [1, GRID * GRID], data: Array.from(pixels) }],
  };
}

async function predict(times = 1) {
  const started = performance.now();
  const responses = await Promise.all(Array.from({ length: times }, () => client.modelInfer(digitRequest())));
  showDigit(responses[0].outputs);
  showCall(started, responses);
}

function setUpDigits(samples) {
  $("digits-panel").hidden = false;
  const canvas = $("digit-canvas");
  showPixels();
  let drawing = false;
  canvas.addEventListener("pointerdown", (e) => { drawing = true; canvas.setPointerCapture(e.pointerId); paint(e); });
  canvas.addEventListener("pointermove", (e) => { if (drawing) paint(e); });
  canvas.addEventListener("pointerup", () => { drawing = false; call(() => predict()); });
  $("clear").addEventListener("click", () => { pixels.fill(0); showPixels(); });
  $("predict").addEventListener("click", () => call(() => predict()));
  $("burst").addEventListener("click", () => call(() => predict(BURST)));
  for (const sample of samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.label = String(sample.label);
    button.title = `a held-out ${sample.label}`;
    const thumb = document.createElement("canvas");
    thumb.width = thumb.height = GRID * 5;
    drawGrid(thumb, sample.pixels);
    button.append(thumb);
    button.addEventListener("click", () => {
      pixels.set(sample.pixels);
      showPixels();
      call(() => predict());
    });
    $("samples").append(button);
  }
}

// ------------------------------------------------------------------------------------------ text
function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb);
}

const preview = (values) => `[${Array.from(values.slice(0, SHOWN_EMBEDDING_VALUES), (v) => v.toFixed(4)).join(", ")}, …] (${values.length} values)`;

async function embed() {
  const input = model.inputs[0];
  const texts = [$("text-a").value, $("text-b").value];
  const shape = input.shape.length > 1 ? [texts.length, 1] : [texts.length];
  const started = performance.now();
  const response = await client.modelInfer({
    modelName: model.name, inputs: [{ name: input.name, datatype: "BYTES", shape, data: texts }],
  });
  const [a, b] = rows(response.outputs[0]);
  $("embedding-a").textContent = preview(a);
  $("embedding-b").textContent = preview(b);
  $("cosine").textContent = cosine(a, b).toFixed(4);
  showCall(started, [response]);
}

function setUpText() {
  $("text-panel").hidden = false;
  $("embed").addEventListener("click", () => call(embed));
}

// ------------------------------------------------------------------------------------------ start
function showModel(server, metadata) {
  $("server-info").textContent = `${server.name} ${server.version} · gRPC-Web from this page`;
  $("model-name").textContent = metadata.name;
  $("model-version").textContent = metadata.versions.join(", ") || "–";
  $("model-platform").textContent = metadata.platform || "–";
  const body = document.querySelector("#signature tbody");
  body.replaceChildren(...[["in", metadata.inputs], ["out", metadata.outputs]].flatMap(([kind, tensors]) =>
    tensors.map((t) => {
      const row = document.createElement("tr");
      for (const text of [kind, t.name, t.datatype, `[${t.shape.join(", ")}]`]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    })));
}

async function loadConfig() {
  for (;;) { // the model may still be loading: the server answers 503 until it is ready
    const response = await fetch("/playground/config.json");
    if (response.ok) return response.json();
    setStatus("waiting for the model to load…");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function start() {
  const config = await loadConfig();
  const [server, metadata] = await Promise.all([client.serverMetadata(), client.modelMetadata(config.model)]);
  model = metadata;
  showModel(server, metadata);
  const input = metadata.inputs[0];
  if (metadata.inputs.length === 1 && input.datatype === "BYTES") setUpText();
  else if (metadata.inputs.length === 1 && input.datatype === "FP32" && input.shape.at(-1) === GRID * GRID) setUpDigits(config.samples);
  else setStatus(`the playground has no form for inputs ${metadata.inputs.map((t) => `${t.name} ${t.datatype}`).join(", ")}`, true);
  document.body.dataset.ready = "true";
  if (!$("status").classList.contains("error")) setStatus("ready");
}

call(start);
