// The demo page: wgnn's JavaScript API (wgnn.js, built by web/build.sh) on the shipped CIFAR-10
// CNN and a NusaX sentiment model. `window.demo` is what tests/browser.rs drives.
import init, { Model, Tokenizer } from "./wgnn.js";

const CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
const NUSAX = ["neutral", "positive", "negative"];
const RECORD = 3073; // CIFAR-10 binary record: 1 label byte + 32*32*3 pixel planes

const $ = (id) => document.getElementById(id);
const state = { image: null, imageName: "", text: null, textName: "", tokenizer: null, testImages: null, pageStart: performance.now() };

function showError(where, e) {
  $(where).textContent = e ? `error: ${e.message ?? e}` : "";
}

function status() {
  const lines = [];
  if (state.image) lines.push(`image model: ${state.imageName} on ${state.image.backend}`);
  if (state.text) lines.push(`text model: ${state.textName} on ${state.text.backend}`);
  if (state.loadMs !== undefined) lines.push(`page ready in ${state.loadMs.toFixed(0)} ms (wasm + models)`);
  $("status").textContent = lines.join("\n") || "no model loaded";
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function loadImageModel(bytes, name) {
  const model = await Model.load(bytes, { backend: $("backend").value, name });
  const input = model.info().inputs[0];
  if (!input || input.shape.length !== 3 || input.shape[2] !== 3) {
    throw new Error(`${name}: the image demo needs a model taking (N, H, W, 3) images, this one takes ${JSON.stringify(input?.shape)}`);
  }
  state.image?.free();
  state.image = model;
  state.imageName = name;
  $("model-name").textContent = `${name}: ${model.info().params.toLocaleString()} parameters, input ${input.shape.join("×")}`;
  status();
}

async function loadTextModel(bytes, name) {
  const model = await Model.load(bytes, { backend: $("backend").value, name });
  state.text?.free();
  state.text = model;
  state.textName = name;
  const info = model.info();
  $("text-model-name").textContent = info.text_vectorization
    ? `${name}: TextVectorization, ${info.text_vectorization.vocabulary_size} tokens`
    : `${name}: takes token ids (pick its tokenizer.json)`;
  status();
}

function softmaxIfLogits(row) {
  const sum = row.reduce((a, b) => a + b, 0);
  if (row.every((v) => v >= 0) && Math.abs(sum - 1) < 1e-3) return row;
  const m = Math.max(...row);
  const e = row.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function bars(probs, names, k) {
  const order = probs.map((p, i) => i).sort((a, b) => probs[b] - probs[a]).slice(0, k);
  const div = document.createElement("div");
  div.className = "bars";
  for (const i of order) {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.dataset.label = names[i] ?? `class ${i}`;
    bar.dataset.p = probs[i];
    bar.innerHTML = `<span class="label"></span><span class="track"><span class="fill"></span></span><span class="p"></span>`;
    bar.querySelector(".label").textContent = names[i] ?? `class ${i}`;
    bar.querySelector(".fill").style.width = `${(100 * probs[i]).toFixed(1)}%`;
    bar.querySelector(".p").textContent = probs[i].toFixed(3);
    div.append(bar);
  }
  return { div, top: order[0] };
}

// images: [{ pixels: Float32Array (H*W*3, NHWC, [0, 1]), canvas, truth? }]
async function classifyImages(images) {
  showError("error", null);
  if (!state.image) throw new Error("no image model loaded");
  const [h, w, c] = state.image.info().inputs[0].shape;
  const batch = new Float32Array(images.length * h * w * c);
  images.forEach((im, i) => batch.set(im.pixels, i * h * w * c));
  const t0 = performance.now();
  const out = await state.image.predict(batch, [images.length, h, w, c]);
  const ms = performance.now() - t0;
  const classes = out.shape[1];
  const names = classes === 10 ? CIFAR10 : [];
  $("results").replaceChildren();
  const rows = [];
  images.forEach((im, i) => {
    const probs = Array.from(out.data.subarray(i * classes, (i + 1) * classes));
    const card = document.createElement("div");
    card.className = "result";
    const { div, top } = bars(probs, names, 3);
    if (im.truth !== undefined) {
      const t = document.createElement("div");
      t.className = `truth ${top === im.truth ? "ok" : "bad"}`;
      t.textContent = `true: ${CIFAR10[im.truth]}`;
      div.append(t);
    }
    card.append(im.canvas, div);
    $("results").append(card);
    rows.push(probs);
  });
  const perImage = ms / images.length;
  $("timing").textContent = `${images.length} image(s) in ${ms.toFixed(1)} ms: ${perImage.toFixed(2)} ms per image (${(1000 / perImage).toFixed(1)} images/s) on ${state.image.backend}`;
  return { probs: rows, ms, shape: out.shape };
}

function canvasFromRgb(pixels, h, w) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let p = 0; p < h * w; p++) {
    for (let ch = 0; ch < 3; ch++) img.data[4 * p + ch] = Math.round(pixels[3 * p + ch] * 255);
    img.data[4 * p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

async function imageFromFile(file) {
  const [h, w] = state.image.info().inputs[0].shape;
  const bitmap = await createImageBitmap(file);
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, w, h);
  const data = ctx.getImageData(0, 0, w, h).data;
  const pixels = new Float32Array(h * w * 3);
  for (let p = 0; p < h * w; p++) for (let ch = 0; ch < 3; ch++) pixels[3 * p + ch] = data[4 * p + ch] / 255;
  return { pixels, canvas };
}

// CIFAR-10 records -> NHWC pixels / 255, as wgnn's loader decodes them.
function testImage(index) {
  const rec = state.testImages.subarray(index * RECORD, (index + 1) * RECORD);
  const pixels = new Float32Array(32 * 32 * 3);
  for (let p = 0; p < 1024; p++) for (let ch = 0; ch < 3; ch++) pixels[3 * p + ch] = rec[1 + ch * 1024 + p] / 255;
  return { pixels, canvas: canvasFromRgb(pixels, 32, 32), truth: rec[0], index };
}

async function classifyTestImages(count = 8, start) {
  if (!state.testImages) throw new Error("this build has no CIFAR-10 test images (web/build.sh copies them when WGNN_DATA is set)");
  const total = state.testImages.length / RECORD;
  const first = start ?? Math.floor(Math.random() * Math.max(1, total - count));
  const images = [];
  for (let i = first; i < Math.min(total, first + count); i++) images.push(testImage(i));
  return classifyImages(images);
}

async function classifyText(texts) {
  showError("text-error", null);
  if (!state.text) throw new Error("no text model loaded");
  const hasVectorizer = !!state.text.info().text_vectorization;
  if (!hasVectorizer && !state.tokenizer) throw new Error(`${state.textName} takes token ids: pick its tokenizer.json`);
  const t0 = performance.now();
  const out = hasVectorizer ? await state.text.predictText(texts) : await state.text.predictTokenized(texts, state.tokenizer);
  const ms = performance.now() - t0;
  const k = out.shape[1];
  $("sentiments").replaceChildren();
  const rows = [];
  texts.forEach((text, i) => {
    const raw = Array.from(out.data.subarray(i * k, (i + 1) * k));
    const div = document.createElement("div");
    div.className = "sentence";
    const q = document.createElement("div");
    q.textContent = text;
    div.append(q, bars(softmaxIfLogits(raw), k === 3 ? NUSAX : [], k).div);
    $("sentiments").append(div);
    rows.push(raw);
  });
  $("text-timing").textContent = `${texts.length} sentence(s) in ${ms.toFixed(1)} ms on ${state.text.backend}`;
  return { outputs: rows, ms };
}

async function onFiles(files) {
  try {
    const list = Array.from(files);
    const model = list.find((f) => /\.(keras|h5)$/i.test(f.name));
    if (model) await loadImageModel(new Uint8Array(await model.arrayBuffer()), model.name);
    const images = list.filter((f) => f.type.startsWith("image/"));
    if (images.length) await classifyImages(await Promise.all(images.map(imageFromFile)));
  } catch (e) {
    showError("error", e);
  }
}

function wire() {
  const drop = $("image-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); onFiles(e.dataTransfer.files); });
  $("image-files").addEventListener("change", (e) => onFiles(e.target.files));
  $("model-file").addEventListener("change", (e) => onFiles(e.target.files));
  $("test-images").addEventListener("click", () => classifyTestImages(8).catch((e) => showError("error", e)));
  $("text-model-file").addEventListener("change", async (e) => {
    const f = e.target.files[0];
    if (f) loadTextModel(new Uint8Array(await f.arrayBuffer()), f.name).catch((err) => showError("text-error", err));
  });
  $("tokenizer-file").addEventListener("change", async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    try {
      state.tokenizer?.free();
      state.tokenizer = Tokenizer.fromJson(await f.text());
    } catch (err) {
      showError("text-error", err);
    }
  });
  $("classify-text").addEventListener("click", () => {
    const texts = $("text").value.split("\n").map((s) => s.trim()).filter(Boolean);
    classifyText(texts).catch((e) => showError("text-error", e));
  });
  $("backend").addEventListener("change", () => reloadModels().catch((e) => showError("error", e)));
}

let lastImage = null, lastText = null;
async function reloadModels() {
  if (lastImage) await loadImageModel(lastImage.bytes, lastImage.name);
  if (lastText) await loadTextModel(lastText.bytes, lastText.name);
}

async function main() {
  $("webgpu").textContent = navigator.gpu ? "navigator.gpu: present" : "navigator.gpu: absent (auto runs on the CPU)";
  await init();
  wire();
  lastImage = { bytes: await fetchBytes("models/cifar10_base.keras"), name: "cifar10_base.keras" };
  await loadImageModel(lastImage.bytes, lastImage.name);
  try {
    lastText = { bytes: await fetchBytes("models/nusax_textvec_bilstm.keras"), name: "nusax_textvec_bilstm.keras" };
    await loadTextModel(lastText.bytes, lastText.name);
  } catch (e) {
    showError("text-error", e);
  }
  try {
    state.testImages = await fetchBytes("cifar10_test.bin");
  } catch {
    $("test-images-span").hidden = true;
  }
  state.loadMs = performance.now() - state.pageStart;
  status();
  if (state.testImages) await classifyTestImages(8, 0);
  if (state.text) $("classify-text").click();
}

const ready = main().catch((e) => { showError("error", e); throw e; });
window.demo = { ready, state, classifyImages, classifyTestImages, classifyText, Model, Tokenizer };
