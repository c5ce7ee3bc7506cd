// Drives the playground page in headless Chromium (Debian's /usr/bin/chromium through playwright-core,
// which never downloads a browser), submits one input, and prints what the page shows as one JSON line.
//
// Usage: node playground_check.js '<json>' where the JSON holds
//   {url, screenshot, digit: LABEL}              pick the sample digit LABEL and predict,
//   {url, screenshot, stroke: [[x, y], ...]}     draw a stroke (grid cells, 0..7) on the empty grid, or
//   {url, screenshot, texts: [A, B]}             embed two texts
// With `burst: true` it then also presses "×8 at once". Prints {server, model, mode, shown: {...}, latency,
// batchSize, status, consoleErrors}; for digits, shown also holds the grid's values as the page sent them,
// and after a burst, burstBatchSizes holds the batch size of each of its eight answers.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const TIMEOUT_MS = 60000;

// Press at the first cell's centre, move through the others, release: the page predicts on release.
async function drawStroke(page, cells) {
  const box = await page.locator("#digit-canvas").boundingBox();
  const centre = ([x, y]) => [box.x + ((x + 0.5) * box.width) / 8, box.y + ((y + 0.5) * box.height) / 8];
  await page.mouse.move(...centre(cells[0]));
  await page.mouse.down();
  for (const cell of cells.slice(1)) await page.mouse.move(...centre(cell), { steps: 4 });
  await page.mouse.up();
}

async function main() {
  const spec = JSON.parse(process.argv[2]);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "slimserve-chromium-")); // a fresh --user-data-dir
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1200, height: 820 },
  });
  const consoleErrors = [];
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(TIMEOUT_MS);
    page.on("console", (message) => { if (message.type() === "error") consoleErrors.push(message.text()); });
    page.on("pageerror", (error) => consoleErrors.push(String(error)));
    await page.goto(spec.url);
    await page.waitForSelector("body[data-ready='true']");
    const text = (selector) => page.locator(selector).textContent();
    const waitForAnswer = () => page.waitForFunction(() => {
      const status = document.getElementById("status").textContent;
      return status === "OK" || document.getElementById("status").classList.contains("error");
    });

    let mode;
    let shown;
    if (spec.texts) {
      mode = "text";
      await page.fill("#text-a", spec.texts[0]);
      await page.fill("#text-b", spec.texts[1]);
      await page.click("#embed");
      await waitForAnswer();
      shown = { cosine: await text("#cosine"), embeddingA: await text("#embedding-a"), embeddingB: await text("#embedding-b") };
    } else {
      mode = "digits";
      if (spec.stroke) await drawStroke(page, spec.stroke);
      else await page.click(`#samples button[data-label='${spec.digit}']`);
      await waitForAnswer();
      shown = {
        label: await text("#predicted-label"),
        probabilities: await page.locator("#probabilities li span").allTextContents(),
        pixels: (await page.locator("#digit-canvas").getAttribute("data-pixels")).split(",").map(Number),
      };
    }
    const answer = { latency: await text("#latency"), batchSize: await text("#batch-size"), status: await text("#status") };
    let burstBatchSizes = null;
    if (spec.burst) {
      await page.evaluate(() => { document.getElementById("status").textContent = "sending"; });
      await page.click("#burst");
      await waitForAnswer();
      burstBatchSizes = (await text("#batch-size")).split(", ");
    }
    const result = {
      server: await text("#server-info"),
      model: await text("#model-name"),
      signature: await page.locator("#signature tbody tr").allTextContents(),
      mode,
      shown,
      ...answer,
      burstBatchSizes,
      consoleErrors,
    };
    await page.screenshot({ path: spec.screenshot, fullPage: true });
    console.log(JSON.stringify(result));
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(`playground check failed: ${error.stack || error}`);
  process.exit(1);
});
