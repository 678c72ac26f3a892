// The page: pick an image, make a key here, encrypt here, send only the encrypted PNG, decrypt the
// label map here. The key lives in this module's memory and in the (collapsed) key box; no request
// carries it.
import * as cipher from "./cipher.js";
import { decodePNG, encodePNG } from "./png.js";

const $ = (id) => document.getElementById(id);
let info = null; // GET /v1/info
let picked = null; // {name, img: {width, height, data}} of the chosen file
let last = null; // {key, mask, encrypted, labels, scheme} of the last run, for downloads and tests

function setState(state, message) {
  document.body.dataset.state = state;
  if (message !== undefined) $("status").textContent = message;
}

function drawRGB(canvas, data, width, height) {
  canvas.width = width;
  canvas.height = height;
  const rgba = new ImageData(width, height);
  for (let i = 0, j = 0; i < data.length; i += 3, j += 4) {
    rgba.data[j] = data[i];
    rgba.data[j + 1] = data[i + 1];
    rgba.data[j + 2] = data[i + 2];
    rgba.data[j + 3] = 255;
  }
  canvas.getContext("2d").putImageData(rgba, 0, 0);
}

function colourise(labels, palette) {
  const out = new Uint8Array(labels.length * 3);
  for (let i = 0; i < labels.length; i++) {
    const c = palette[labels[i]] || [0, 0, 0];
    out.set(c, 3 * i);
  }
  return out;
}

function overlay(rgb, labels, palette, alpha = 0.5) {
  const out = new Uint8Array(rgb.length);
  for (let i = 0; i < labels.length; i++) {
    const c = palette[labels[i]];
    for (let k = 0; k < 3; k++) {
      const v = rgb[3 * i + k];
      out[3 * i + k] = c ? Math.round((1 - alpha) * v + alpha * c[k]) : v;
    }
  }
  return out;
}

/** Read any image the browser can decode as 8-bit RGB (transparent pixels over white). */
async function readImage(file) {
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, bitmap.width, bitmap.height);
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const data = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let i = 0, j = 0; j < rgba.length; i += 3, j += 4) data.set(rgba.subarray(j, j + 3), i);
  return { width: bitmap.width, height: bitmap.height, data };
}

function selectedScheme() {
  return cipher.parseScheme($("scheme").value, info.block_size);
}

function showLegend(mask) {
  const counts = new Uint32Array(info.classes.length);
  if (mask) for (const v of mask) if (v < counts.length) counts[v]++;
  const total = mask ? mask.length : 1;
  $("legend").replaceChildren(...info.classes.map((name, i) => {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = `rgb(${info.palette[i].join(",")})`;
    li.append(sw, mask && counts[i] ? `${name} ${(100 * counts[i] / total).toFixed(1)}%` : name);
    if (counts[i]) li.classList.add("present");
    return li;
  }));
}

/** Encrypt `img` under `key` (a fresh one if absent), segment remotely, decrypt. Returns the result. */
export async function segment(img, scheme, key = cipher.generateKey()) {
  const enc = await cipher.encrypt(img, key, scheme);
  const meta = { version: 1, scheme: enc.scheme, original_size: enc.originalSize };
  const png = await encodePNG(enc.data, enc.width, enc.height, 3, { encseg: JSON.stringify(meta) });
  const form = new FormData();
  form.append("image", png, "encrypted.png");
  form.append("scheme", JSON.stringify(enc.scheme));
  const resp = await fetch("/v1/segment", { method: "POST", body: form });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail; } catch { /* not JSON */ }
    throw new Error(`the server refused the image (HTTP ${resp.status}): ${detail}`);
  }
  const labels = await decodePNG(await resp.arrayBuffer());
  if (labels.channels !== 1 || labels.width !== enc.width || labels.height !== enc.height) {
    throw new Error(`unexpected label map ${labels.width}x${labels.height}x${labels.channels}`);
  }
  const mask = await cipher.decryptMask(labels, key, enc.scheme, enc.originalSize);
  return { key, enc, labels, mask, scheme: enc.scheme };
}

async function run() {
  if (!picked || !info) return;
  const { img } = picked;
  const scheme = selectedScheme();
  const p = scheme.block_size;
  const pixels = Math.ceil(img.height / p) * p * Math.ceil(img.width / p) * p;
  if (pixels > info.limits.max_pixels) {
    setState("error", `The image is too large for this server (${pixels} pixels after padding, limit ${info.limits.max_pixels}).`);
    return;
  }
  forgetKey();
  $("run").disabled = true;
  setState("working", `Encrypting ${picked.name} with a fresh key (scheme ${cipher.schemeName(scheme)})…`);
  try {
    const t0 = performance.now();
    const r = await segment(img, scheme);
    const { enc, labels, mask, key } = r;
    drawRGB($("encrypted"), enc.data, enc.width, enc.height);
    drawRGB($("server-labels"), colourise(labels.data, info.palette), labels.width, labels.height);
    drawRGB($("overlay"), overlay(img.data, mask.data, info.palette), img.width, img.height);
    showLegend(mask.data);
    last = r;
    $("key-hex").textContent = cipher.keyToHex(key);
    $("key-box").hidden = false;
    const maskPng = await encodePNG(mask.data, mask.width, mask.height, 1);
    setDownload($("download-mask"), maskPng, `${stem(picked.name)}_mask.png`);
    const ovl = overlay(img.data, mask.data, info.palette);
    setDownload($("download-overlay"), await encodePNG(ovl, img.width, img.height, 3), `${stem(picked.name)}_overlay.png`);
    setState("done", `Done in ${Math.round(performance.now() - t0)} ms. The server saw only the encrypted image.`);
  } catch (err) {
    setState("error", String(err.message || err));
  } finally {
    $("run").disabled = false;
  }
}

function stem(name) {
  return name.replace(/\.[^.]*$/, "") || "image";
}

function setDownload(a, blob, name) {
  if (a.href) URL.revokeObjectURL(a.href);
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.hidden = false;
}

function forgetKey() {
  if (last && last.key) last.key.fill(0);
  $("key-hex").textContent = "";
  $("key-box").hidden = true;
  $("key-box").open = false;
}

/** The last run, for tests and downloads: key hex, decrypted mask and encrypted image (hex). */
export function lastResult() {
  if (!last) return null;
  return {
    key: $("key-hex").textContent,
    width: last.mask.width,
    height: last.mask.height,
    mask: cipher.bytesToHex(last.mask.data),
    encrypted: cipher.bytesToHex(last.enc.data),
    scheme: last.scheme,
  };
}

async function init() {
  try {
    const resp = await fetch("/v1/info");
    if (!resp.ok) throw new Error(`GET /v1/info answered ${resp.status}`);
    info = await resp.json();
  } catch (err) {
    setState("error", `Cannot reach the server: ${err.message || err}`);
    return;
  }
  if (!crypto.subtle) {
    setState("error", "WebCrypto is unavailable: open this page over https or from localhost.");
    return;
  }
  const options = [];
  for (const s of info.schemes) options.push([JSON.stringify(s), `${cipher.schemeName(s)} (trained)`]);
  for (const name of Object.keys(info.presets)) {
    if (!info.scheme_names.includes(name)) options.push([name, name]);
  }
  $("scheme").replaceChildren(...options.map(([value, label]) => new Option(label, value)));
  $("model-info").textContent = `${info.model.name}, ${info.classes.length} classes, block size ${info.block_size}`;
  showLegend(null);
  $("file").addEventListener("change", async () => {
    const file = $("file").files[0];
    if (!file) return;
    try {
      picked = { name: file.name, img: await readImage(file) };
    } catch (err) {
      setState("error", `Cannot read ${file.name} as an image.`);
      return;
    }
    drawRGB($("original"), picked.img.data, picked.img.width, picked.img.height);
    await run();
  });
  $("run").addEventListener("click", run);
  $("scheme").addEventListener("change", run);
  $("forget-key").addEventListener("click", forgetKey);
  setState("ready", "Ready: pick an image.");
}

init();
