// The page: pick an image, make a key here, encrypt here, send only the encrypted image, decrypt the
// label map here. The key lives in this module's memory and in the (collapsed) key box; no request
// carries it, and the Content-Security-Policy lets the page talk to its own origin only.
//
// One run at a time: every run has an id; starting one (a new file, a new scheme, "run again")
// cancels the one in flight, and a run may touch the screen only while it is the current one, so a
// result can only land beside its own image.
import * as cipher from "./cipher.js";
import { decodePNG, encodePNG } from "./png.js";
import { ImageRefused, downscale, readImageFile } from "./imagefile.js";
import { Cancelled, ServerError, postForLabels } from "./transport.js";
import * as jpeg from "./jpeg.js";
import * as arrangement from "./arrange.js";
import * as refiner from "./refine.js";

const $ = (id) => document.getElementById(id);
const STAGES = ["decode", "encrypt", "upload", "segment", "decrypt", "refine", "draw"];
const MULTIPART_SLACK = 2048; // form boundaries, part headers and the scheme field, over the image bytes

let info = null; // GET /v1/info
let picked = null; // {name, img, sourceSize: [H, W]} of the chosen file (img possibly downscaled)
let shown = null; // the run whose result is on screen: {name, img, enc, labels, mask, key, scheme, ...}
let current = null; // the run in flight, or null
let runSeq = 0;
let pendingOffer = null; // {img, note}: what "Downscale and run" will run
let refinerLoad = null; // the server's client refiner (GET /v1/refiner), fetched once when /v1/info offers one
const history = []; // [{id, outcome}] of finished runs, for tests and the status

// -- state and status ------------------------------------------------------------------------------

function setState(state, message) {
  document.body.dataset.state = state;
  if (message !== undefined) $("status").textContent = message;
}

function controlsBusy(busy) {
  $("cancel").disabled = !busy;
  $("scheme").disabled = busy || !info;
  $("transport").disabled = busy;
  $("run").disabled = busy || !picked || !info;
  $("downscale").disabled = busy;
}

function resetStages() {
  for (const li of $("stages").children) {
    li.dataset.status = "pending";
    li.querySelector(".stage-time").textContent = "";
  }
  $("upload-progress").value = 0;
  $("progress").value = 0;
}

/** Mark a stage active/done/skipped/failed; the overall bar counts finished stages. */
function stage(run, name, status, note = "") {
  if (run !== current) return;
  const li = $("stages").querySelector(`[data-stage="${name}"]`);
  li.dataset.status = status;
  if (status === "active") run.stageStart = performance.now();
  const ms = status === "done" ? `${Math.round(performance.now() - run.stageStart)} ms` : "";
  li.querySelector(".stage-time").textContent = [ms, note].filter(Boolean).join(", ");
  const finished = STAGES.filter((s) => ["done", "skipped"].includes($("stages").querySelector(`[data-stage="${s}"]`).dataset.status)).length;
  $("progress").value = finished;
}

// -- runs ------------------------------------------------------------------------------------------

function newRun() {
  if (current) abandon(current);
  const run = { id: ++runSeq, signal: { aborted: false, onabort: null }, t0: performance.now(), stageStart: 0 };
  current = run;
  hideOffers();
  resetStages();
  controlsBusy(true);
  return run;
}

function abandon(run) {
  run.signal.aborted = true;
  if (run.signal.onabort) run.signal.onabort();
  logRun(run, "cancelled");
}

function logRun(run, outcome) {
  history.push({ id: run.id, outcome });
  document.body.dataset.runs = String(history.length);
}

/** Throw Cancelled unless `run` is still the one the page is showing progress for. */
function live(run) {
  if (run !== current || run.signal.aborted) throw new Cancelled("superseded");
}

function finish(run, outcome) {
  if (run !== current) return;
  logRun(run, outcome);
  current = null;
  controlsBusy(false);
}

function cancelCurrent() {
  const run = current;
  if (!run) return;
  const active = $("stages").querySelector('[data-status="active"]');
  if (active) active.dataset.status = "cancelled";
  abandon(run);
  current = null;
  clearResult();
  controlsBusy(false);
  const name = picked ? picked.name : "the image";
  setState("cancelled", `Cancelled: nothing more is sent or drawn for ${name}${picked ? "; “New key, run again” starts over" : ""}.`);
}

// -- reading files ---------------------------------------------------------------------------------

async function onFile() {
  const file = $("file").files[0];
  const run = newRun();
  picked = null; // whatever happens next, the old image is gone: clear everything it owned
  clearResult();
  clearCanvas($("original"), "Your image: none yet");
  if (!file) {
    finish(run, "empty");
    setState("ready", "Ready: pick an image.");
    return;
  }
  setState("working", `Reading ${file.name}…`);
  stage(run, "decode", "active");
  let img;
  try {
    img = await readImageFile(file, () => run === current);
    live(run);
  } catch (err) {
    if (err instanceof Cancelled || run !== current) return;
    stage(run, "decode", "failed");
    finish(run, "error");
    setState("error", err instanceof ImageRefused ? err.message : `Cannot read ${file.name} as an image.`);
    return;
  }
  stage(run, "decode", "done", `${img.format} ${img.width}x${img.height}`);
  picked = { name: file.name, img, sourceSize: [img.height, img.width] };
  drawRGB($("original"), img.data, img.width, img.height);
  describe($("original"), `Your image: ${file.name}, ${img.width} by ${img.height} pixels`);
  await segmentRun(run, picked);
}

/** "New key, run again" and scheme changes: a fresh run of the image on screen. */
async function rerun() {
  if (!picked || !info) return;
  const run = newRun();
  clearResult();
  await segmentRun(run, picked);
}

// -- limits ----------------------------------------------------------------------------------------

/** Why the server would refuse an image of this size (its own limits, from /v1/info), or null. */
function limitProblem(img, p) {
  const L = info.limits, H = Math.ceil(img.height / p) * p, W = Math.ceil(img.width / p) * p;
  if (L.max_side && (H > L.max_side || W > L.max_side)) {
    return `${img.width}x${img.height} pixels is over this server's limit of ${L.max_side} pixels per side`;
  }
  if (L.max_pixels && H * W > L.max_pixels) {
    return `${img.width}x${img.height} pixels (${H * W} after padding to ${p}-pixel blocks) is over this server's limit of ${L.max_pixels} pixels`;
  }
  return null;
}

/** The largest size (same aspect) at most `scale` of the image that fits the pixel limits. */
function fittingSize(img, p, scale = 1) {
  const L = info.limits;
  let s = Math.min(scale, 1);
  if (L.max_side) s = Math.min(s, (L.max_side - p) / img.width, (L.max_side - p) / img.height);
  if (L.max_pixels) s = Math.min(s, Math.sqrt(L.max_pixels / (img.width * img.height)));
  for (; s > 0; s *= 0.98) {
    const w = Math.max(1, Math.floor(img.width * s)), h = Math.max(1, Math.floor(img.height * s));
    if (!limitProblem({ width: w, height: h }, p)) return [w, h];
  }
  return [1, 1];
}

function offerDownscale(run, item, problem, scale) {
  const p = selectedScheme().block_size;
  const [w, h] = fittingSize(item.img, p, scale);
  pendingOffer = { w, h, from: item };
  $("limit-text").textContent = `${item.name} cannot be sent: ${problem}. Nothing was sent. The page can shrink it to ${w}x${h} ` +
    "(the segmentation is then of the smaller image).";
  $("downscale").textContent = `Downscale to ${w}x${h} and run`;
  $("limit-offer").hidden = false;
  finish(run, "error");
  setState("error", `${item.name} is too large for this server: ${problem}.`);
}

async function acceptDownscale() {
  const offer = pendingOffer;
  if (!offer || !picked || offer.from !== picked) return;
  const run = newRun();
  clearResult();
  const img = downscale(offer.from.img, offer.w, offer.h);
  picked = { name: offer.from.name, img, sourceSize: offer.from.sourceSize };
  drawRGB($("original"), img.data, img.width, img.height);
  describe($("original"), `Your image: ${picked.name}, downscaled to ${img.width} by ${img.height} pixels`);
  await segmentRun(run, picked);
}

function hideOffers() {
  $("limit-offer").hidden = true;
  $("confirm-plain").hidden = true;
  pendingOffer = null;
}

// -- the plain scheme ------------------------------------------------------------------------------

/** Ask before a plain image leaves the page; resolves on "send", throws Cancelled on "do not send". */
function confirmPlain(run, item) {
  $("confirm-plain-text").textContent = `The scheme “plain” does not encrypt: the server would receive ${item.name} itself, ` +
    "as you see it, and could keep it. Send it unencrypted?";
  $("confirm-plain").hidden = false;
  setState("confirm", `Waiting for you: send ${item.name} unencrypted?`);
  $("send-plain").focus();
  return new Promise((resolve, reject) => {
    const done = (ok) => {
      $("confirm-plain").hidden = true;
      $("send-plain").onclick = $("keep-plain").onclick = null;
      run.signal.onabort = null;
      if (ok && run === current) resolve();
      else reject(new Cancelled(ok ? "superseded" : "declined"));
    };
    $("send-plain").onclick = () => done(true);
    $("keep-plain").onclick = () => done(false);
    run.signal.onabort = () => done(false);
  });
}

// -- one segmentation run ---------------------------------------------------------------------------

function selectedScheme() {
  return cipher.parseScheme($("scheme").value, info.block_size);
}

function isTrained(scheme) {
  return info.schemes.some((s) => cipher.schemeName(cipher.validateScheme(s)) === cipher.schemeName(scheme) &&
    (s.block_size ?? 16) === scheme.block_size);
}

async function segmentRun(run, item) {
  const { img, name } = item;
  let key = null;
  try {
    const scheme = selectedScheme();
    const plain = scheme.steps.length === 0;
    const wantJpeg = !$("transport-box").hidden && $("transport").value === "jpeg";
    const jpegProblem = wantJpeg ? jpeg.blockSizeProblem(scheme.block_size) : null;
    const transport = wantJpeg && !jpegProblem ? "jpeg" : "png";
    // format v3 (section 13): a JPEG of a pixel-shuffled scheme travels with every group sorted, when the
    // server's model is order-free inside the groups (it lists "sorted" in /v1/info arrangements)
    const group = arrangement.arrangementGroup(scheme);
    const wantSorted = transport === "jpeg" && group !== null && arrangement.serverSorts(info);
    const problem = limitProblem(img, scheme.block_size);
    if (problem) return offerDownscale(run, item, problem, 1);
    if (plain) {
      await confirmPlain(run, item);
      live(run);
    }
    setState("working", plain ? `Preparing ${name} (scheme plain: not encrypted)…` : `Encrypting ${name} with a fresh key (scheme ${cipher.schemeName(scheme)})…`);
    stage(run, "encrypt", "active");
    key = cipher.generateKey();
    run.key = key;
    const enc = await cipher.encrypt(img, key, scheme);
    live(run);
    // what travels: the ciphertext, or (v3) the ciphertext with each group's pixels sorted; the order
    // itself is recomputed from enc when the answer comes back, never kept or sent
    const wireFor = async (arranged) => {
      const sent = arranged ? arrangement.arrange(enc, enc.scheme) : enc;
      const meta = arranged ? arrangement.arrangedMeta(enc.scheme, enc.originalSize)
        : { version: 1, scheme: enc.scheme, original_size: enc.originalSize };
      const upload = transport === "jpeg"
        ? await jpeg.encodeCiphertext(sent.data, sent.width, sent.height, meta, jpeg.DEFAULT_QUALITY)
        : await encodePNG(sent.data, sent.width, sent.height, 3, { encseg: JSON.stringify(meta) });
      return { sorted: arranged, sent, upload };
    };
    let wire = await wireFor(wantSorted);
    live(run);
    stage(run, "encrypt", plain ? "skipped" : "done", `${plain ? "not encrypted (plain), " : ""}${transport.toUpperCase()}${wire.sorted ? " sorted" : ""} ${kb(wire.upload.size)}`);
    const limit = info.limits.max_body_bytes;
    if (limit && wire.upload.size + MULTIPART_SLACK > limit) {
      const scale = Math.sqrt((limit - MULTIPART_SLACK) / wire.upload.size) * 0.95;
      const orJpeg = transport === "png" && !$("transport-box").hidden ? " (or choose “Upload as: JPEG”, several times smaller)" : "";
      return offerDownscale(run, item, `the ${plain ? "" : "encrypted "}image is ${kb(wire.upload.size)} as ${transport.toUpperCase()}, over the server's upload limit of ${kb(limit)}${orJpeg}`, scale);
    }

    const send = (w) => {
      stage(run, "upload", "active");
      setState("working", `Uploading ${plain ? "the unencrypted" : "the encrypted"} image (${kb(w.upload.size)}${w.sorted ? ", pixels sorted in each block" : ""})…`);
      const form = new FormData();
      form.append("image", w.upload, transport === "jpeg" ? "encrypted.jpg" : "encrypted.png");
      form.append("scheme", JSON.stringify(enc.scheme));
      return postForLabels("/v1/segment", form, {
        signal: run.signal,
        onUploadProgress: (f) => { if (run === current) $("upload-progress").value = Math.round(100 * f); },
        onUploaded: () => {
          if (run !== current) return;
          $("upload-progress").value = 100;
          stage(run, "upload", "done");
          stage(run, "segment", "active");
          setState("working", "The server is segmenting the image…");
        },
      });
    };
    let resp, sortRefused = false;
    try {
      resp = await send(wire);
    } catch (err) {
      // /v1/info names the model's arrangements, not each scheme's: a model order-free only inside smaller
      // groups than this scheme's refuses the sorted image (422). Then the ciphertext goes unarranged.
      if (!(wire.sorted && err instanceof ServerError && err.status === 422)) throw err;
      live(run);
      sortRefused = true;
      wire = await wireFor(false);
      live(run);
      resp = await send(wire);
    }
    live(run);
    if ($("stages").querySelector('[data-stage="upload"]').dataset.status !== "done") stage(run, "upload", "done");
    stage(run, "segment", "done");

    stage(run, "decrypt", "active");
    setState("working", "Decrypting the label map here…");
    const labels = await decodePNG(resp.bytes);
    if (labels.channels !== 1 || labels.width !== enc.width || labels.height !== enc.height) {
      throw new ServerError(`The server answered a ${labels.width}x${labels.height} label map for a ${enc.width}x${enc.height} image.`);
    }
    // an answer to an arranged upload is in arranged geometry: back to the ciphertext's, then decrypt
    const inEncrypted = wire.sorted ? arrangement.restoreLabels(labels, enc, enc.scheme) : labels;
    const mask = await cipher.decryptMask(inEncrypted, key, enc.scheme, enc.originalSize);
    live(run);
    stage(run, "decrypt", "done");

    // the client's refiner, when the server ships one: it sees the decrypted labels only (never the key or image)
    let refined = null, refineProblem = null;
    if (refinerLoad) {
      stage(run, "refine", "active");
      setState("working", "Refining the labels here…");
      const model = await refinerLoad;
      live(run);
      if (model instanceof Error) refineProblem = model.message;
      else refined = refiner.refine(model, mask);
      let changed = 0;
      if (refined) for (let i = 0; i < mask.data.length; i++) changed += mask.data[i] !== refined.data[i];
      stage(run, "refine", refined ? "done" : "skipped", refined ? `${(100 * changed / mask.data.length).toFixed(1)}% of labels changed` : "refiner unusable");
    } else {
      stage(run, "refine", "skipped", "the server ships no refiner");
    }

    stage(run, "draw", "active");
    const header = resp.headers["x-encseg-trained-for-scheme"];
    const trained = header === null ? isTrained(scheme) : header === "true";
    const result = { id: run.id, name, img, enc, sent: wire.sent, labels, mask, refined, refineProblem, key, scheme: enc.scheme, plain, trained, transport,
      arrangement: wire.sorted ? arrangement.SORTED : arrangement.NONE, group, sortRefused, jpegProblem, sourceSize: item.sourceSize };
    const downloads = await buildDownloads(result);
    live(run);
    show(result, downloads); // synchronous from here: nothing can interleave
    stage(run, "draw", "done");
    finish(run, "done");
    setState("done", doneMessage(result, performance.now() - run.t0));
  } catch (err) {
    if (key && (!shown || shown.key !== key)) key.fill(0);
    if (err instanceof Cancelled || run !== current) {
      if (err instanceof Cancelled && err.message === "declined" && run === current) {
        finish(run, "cancelled");
        setState("cancelled", `Not sent: ${name} stays in this page. Pick an encrypting scheme to segment it.`);
      }
      return;
    }
    const active = $("stages").querySelector('[data-status="active"]');
    if (active) active.dataset.status = "failed";
    clearResult();
    finish(run, "error");
    if (err instanceof ServerError && err.status === 413) {
      $("limit-text").textContent = `${err.message} The page can shrink the image to fit.`;
      const p = selectedScheme().block_size;
      const [w, h] = fittingSize(item.img, p, 0.7);
      pendingOffer = { w, h, from: item };
      $("downscale").textContent = `Downscale to ${w}x${h} and run`;
      $("limit-offer").hidden = false;
    }
    setState("error", err instanceof ServerError ? err.message : `Something went wrong in the page: ${err.message || err}`);
  }
}

function kb(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1e3))} KB`;
}

function doneMessage(r, ms) {
  const parts = [`Done in ${Math.round(ms)} ms: ${r.name}, scheme ${cipher.schemeName(r.scheme)}.`];
  if (r.plain) parts.push("The server received your image UNENCRYPTED (scheme plain): it saw the image itself.");
  else parts.push(`The server received only the encrypted image${transportNote(r)} shown in the second panel, and no key.`);
  if (r.jpegProblem) parts.push(`Sent as PNG: ${r.jpegProblem}.`);
  if (r.sortRefused) parts.push("The server does not take this scheme's pixels sorted, so they went in the cipher's order.");
  if (r.refined) parts.push("This page refined the decrypted labels with the server's refiner (untick “refine on this device” for the server's own).");
  if (r.refineProblem) parts.push(`The server's refiner could not be used (${r.refineProblem}): these are the server's labels.`);
  if (!r.trained) parts.push(`Warning: the model was not trained for ${cipher.schemeName(r.scheme)}, so expect a poor segmentation.`);
  const [h0, w0] = r.sourceSize;
  if (h0 !== r.img.height || w0 !== r.img.width) parts.push(`The image was downscaled from ${w0}x${h0} to ${r.img.width}x${r.img.height}.`);
  return parts.join(" ");
}

/** How the ciphertext travelled, for the status line: "", " (as JPEG)", or the sorted arrangement. */
function transportNote(r) {
  if (r.transport !== "jpeg") return "";
  if (r.arrangement !== arrangement.SORTED) return " (as JPEG)";
  const unit = r.group === r.scheme.block_size ? "block" : "group";
  return ` (as JPEG, pixels sorted inside each ${r.group}x${r.group} ${unit}, format v3)`;
}

// -- drawing ---------------------------------------------------------------------------------------

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
  enlargeButton(canvas).disabled = false;
}

function clearCanvas(canvas, label) {
  canvas.width = 0;
  canvas.height = 0;
  describe(canvas, label);
  enlargeButton(canvas).disabled = true;
}

function describe(canvas, label) {
  canvas.setAttribute("aria-label", label);
  canvas.textContent = label;
}

function enlargeButton(canvas) {
  return document.querySelector(`button.enlarge[data-canvas="${canvas.id}"]`);
}

function colourise(labels, palette) {
  const out = new Uint8Array(labels.length * 3);
  for (let i = 0; i < labels.length; i++) {
    const c = palette[labels[i]] || [0, 0, 0];
    out[3 * i] = c[0];
    out[3 * i + 1] = c[1];
    out[3 * i + 2] = c[2];
  }
  return out;
}

function blend(rgb, labels, palette, alpha) {
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

function opacity() {
  return Number($("opacity").value) / 100;
}

function maskOnly() {
  return document.querySelector('input[name="view"]:checked').value === "mask";
}

/** The labels the result panel, legend, pointer and downloads show: refined here, unless the box is unticked. */
function onScreen(r) {
  return r.refined && $("refine").checked ? r.refined : r.mask;
}

function drawResultPanel() {
  if (!shown) return;
  const { img } = shown, mask = onScreen(shown);
  const data = maskOnly() ? colourise(mask.data, info.palette) : blend(img.data, mask.data, info.palette, opacity());
  drawRGB($("overlay"), data, img.width, img.height);
  describe($("overlay"), `Segmentation of ${shown.name}${mask === shown.refined ? ", refined here," : ""}${maskOnly() ? " (mask only)" : ` over the image at ${Math.round(100 * opacity())}% opacity`}: ${shown.summary}`);
}

function classShares(mask) {
  const counts = new Uint32Array(info.classes.length);
  for (const v of mask) if (v < counts.length) counts[v]++;
  return counts;
}

function showLegend(counts, total) {
  $("legend").replaceChildren(...info.classes.map((name, i) => {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.setAttribute("aria-hidden", "true");
    sw.style.backgroundColor = `rgb(${info.palette[i].join(",")})`;
    const present = counts && counts[i];
    const pct = present ? 100 * counts[i] / total : 0;
    li.append(sw, present ? `${name} ${pct < 0.05 ? "<0.1" : pct.toFixed(1)}%` : name);
    if (present) li.classList.add("present");
    else if (counts) li.setAttribute("aria-label", `${name}: not found`);
    return li;
  }));
}

async function buildDownloads(r) {
  const stemName = stem(r.name), mask = onScreen(r);
  const colour = colourise(mask.data, info.palette);
  return {
    mask: [await encodePNG(mask.data, mask.width, mask.height, 1), `${stemName}_mask.png`],
    colour: [await encodePNG(colour, mask.width, mask.height, 3), `${stemName}_mask_colour.png`],
    overlay: [await encodePNG(blend(r.img.data, mask.data, info.palette, opacity()), r.img.width, r.img.height, 3), `${stemName}_overlay.png`],
  };
}

/** The result panel, legend and summary for the labels on screen (refined or the server's). */
function showLabels(r) {
  const mask = onScreen(r);
  const counts = classShares(mask.data), total = mask.data.length;
  const top = [...counts.keys()].filter((i) => counts[i]).sort((a, b) => counts[b] - counts[a]).slice(0, 4);
  r.summary = top.map((i) => `${info.classes[i]} ${(100 * counts[i] / total).toFixed(0)}%`).join(", ") || "no class";
  $("overlay-caption").textContent = mask === r.refined ? "Segmentation, decrypted and refined here" : "Segmentation, decrypted here";
  drawResultPanel();
  showLegend(counts, total);
}

/** The "refine on this device" box: redraw with the other labels, and make the downloads follow. */
async function onRefineToggle() {
  const r = shown;
  if (!r || !r.refined) return;
  showLabels(r);
  const downloads = await buildDownloads(r);
  if (shown !== r) return;
  setDownloads(downloads);
}

/** Put a finished run on screen (synchronous, so a run's pieces land together or not at all). */
function show(r, downloads) {
  forgetKey();
  shown = r;
  const sorted = r.arrangement === arrangement.SORTED;
  drawRGB($("encrypted"), r.sent.data, r.sent.width, r.sent.height); // what was sent: arranged, if it was
  $("encrypted-caption").textContent = r.plain ? "What the server saw: your image, NOT encrypted"
    : sorted ? `What the server sees (encrypted, pixels sorted in each ${r.group === r.scheme.block_size ? "block" : "group"})`
    : "What the server sees (encrypted)";
  describe($("encrypted"), r.plain ? `The image sent to the server, not encrypted: ${r.name}`
    : sorted ? `The encrypted image sent to the server, with the pixels of each ${r.group} by ${r.group} group sorted: ` +
      `blocks of colour ramps, ${r.sent.width} by ${r.sent.height} pixels`
    : `The encrypted image sent to the server: blocks of noise, ${r.enc.width} by ${r.enc.height} pixels`);
  drawRGB($("server-labels"), colourise(r.labels.data, info.palette), r.labels.width, r.labels.height);
  $("server-labels-caption").textContent = sorted ? "What the server answers (labels on the sorted image it received)"
    : "What the server answers (labels in encrypted geometry)";
  describe($("server-labels"), sorted ? "The server's answer: class colours on the sorted encrypted image it saw"
    : "The server's answer: class colours in encrypted geometry, scrambled like the image it saw");
  showLabels(r);
  setDownloads(downloads);
  if (!r.plain) {
    $("key-hex").textContent = cipher.keyToHex(r.key);
    $("key-box").hidden = false;
  }
  $("view").dataset.ready = "true";
}

/** Remove every trace of the result on screen: panels, legend, downloads, key, hover text. */
function clearResult() {
  forgetKey();
  shown = null;
  clearCanvas($("encrypted"), "The image the server sees: none yet");
  clearCanvas($("server-labels"), "The server's answer: none yet");
  clearCanvas($("overlay"), "The segmentation: none yet");
  $("overlay-caption").textContent = "Segmentation, decrypted here";
  $("encrypted-caption").textContent = "What the server sees";
  $("server-labels-caption").textContent = "What the server answers (labels in encrypted geometry)";
  if (info) showLegend(null);
  for (const id of ["download-mask", "download-colour", "download-overlay"]) {
    const a = $(id);
    if (a.href) URL.revokeObjectURL(a.href);
    a.removeAttribute("href");
    a.hidden = true;
  }
  $("hover").textContent = "Point at the segmentation to see the class under the pointer.";
  delete $("view").dataset.ready;
}

function stem(name) {
  return name.replace(/\.[^.]*$/, "") || "image";
}

/** The three result downloads (buildDownloads' {mask, colour, overlay}). */
function setDownloads(downloads) {
  setDownload($("download-mask"), ...downloads.mask);
  setDownload($("download-colour"), ...downloads.colour);
  setDownload($("download-overlay"), ...downloads.overlay);
}

function setDownload(a, blob, name) {
  if (a.href) URL.revokeObjectURL(a.href);
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.hidden = false;
}

function forgetKey() {
  if (shown && shown.key) shown.key.fill(0);
  $("key-hex").textContent = "";
  $("key-box").hidden = true;
  $("key-box").open = false;
}

// -- pointer, zoom, view controls -------------------------------------------------------------------

/** The class under the pointer on a label-bearing canvas, as "x, y: name". */
function classAt(canvas, event) {
  if (!shown || !canvas.width) return null;
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor(((event.clientX - rect.left) / rect.width) * canvas.width);
  const y = Math.floor(((event.clientY - rect.top) / rect.height) * canvas.height);
  if (x < 0 || y < 0 || x >= canvas.width || y >= canvas.height) return null;
  const source = canvas.dataset.labels === "server" ? shown.labels : onScreen(shown);
  if (source.width !== canvas.width || source.height !== canvas.height) return null;
  const v = source.data[y * source.width + x];
  const where = shown.arrangement === arrangement.SORTED ? " (on the sorted image the server saw)" : " (in encrypted geometry)";
  return `(${x}, ${y}): ${info.classes[v] ?? `label ${v}`}${canvas.dataset.labels === "server" ? where : ""}`;
}

function openZoom(id) {
  const src = $(id);
  if (!src.width) return;
  const dst = $("zoom-canvas");
  dst.width = src.width;
  dst.height = src.height;
  dst.getContext("2d").drawImage(src, 0, 0);
  dst.dataset.labels = id === "overlay" ? "mask" : id === "server-labels" ? "server" : "";
  const scale = Math.max(1, Math.min(4, Math.floor((window.innerWidth * 0.9) / src.width)));
  dst.style.width = `${src.width * scale}px`;
  const caption = src.closest("figure").querySelector("figcaption span").textContent;
  $("zoom-title").textContent = caption;
  describe(dst, src.getAttribute("aria-label"));
  $("zoom-hover").textContent = dst.dataset.labels ? "Point at the image to see the class under the pointer." : "";
  $("zoom").showModal();
}

// -- the model statement and the scheme list -----------------------------------------------------

function modelStatement() {
  const m = info.model, t = m.trained_on || {}, cfg = m.config || {};
  const arch = cfg.encoder ? `a SETR segmentation model (${cfg.encoder} encoder, ${cfg.decoder} decoder)` : "a segmentation model";
  const trainedFor = info.scheme_names.join(", ") || "?";
  const keys = { "per-image": "a fresh key for every training image", shared: "one shared key", none: "plain images" }[m.key_mode];
  const schemes = info.scheme_names.length > 1 ? "schemes" : "scheme";
  const parts = [`This server runs ${m.name}, ${arch} with ${m.num_classes} classes, trained for ${schemes} ${trainedFor}${keys ? ` with ${keys}` : ""}.`];
  if (t.benchmark) {
    const scene = t.scene_size ? `, ${t.scene_size[0]}x${t.scene_size[1]} scenes` : "";
    const gen = t.generator_version != null ? `, generator v${t.generator_version}` : "";
    parts.push(`It was trained on ${t.benchmark}${gen}${scene}: synthetic street scenes that use the Cityscapes classes, not Cityscapes photographs.`);
  } else {
    parts.push("The server does not say what data it was trained on: do not assume it is a Cityscapes model.");
  }
  if (typeof t.val_miou_per_image_keys === "number") {
    parts.push(`Its validation mIoU on that benchmark, with a fresh key per test image, is ${t.val_miou_per_image_keys.toFixed(1)}%: a small demonstration model, expect rough masks on real photographs.`);
  } else {
    parts.push("It reports no validation score.");
  }
  const refined = info.refiner && info.refiner.val_miou_refined;
  if (typeof refined === "number") {
    const where = t.benchmark ? "on the same benchmark, not on Cityscapes" : "on a benchmark the server does not name: not a Cityscapes score";
    parts.push(`With the client's refiner, which this page runs on the decrypted labels (not the image, not the key), it is ${refined.toFixed(1)}%, ${where}.`);
  }
  return parts.join(" ");
}

function fillSchemes() {
  const trained = info.schemes.map((s) => cipher.validateScheme(s));
  const trainedNames = trained.map(cipher.schemeName);
  const group = (label, options) => {
    const g = document.createElement("optgroup");
    g.label = label;
    g.append(...options);
    return g;
  };
  const trainedOpts = trained.map((s) => new Option(`${cipher.schemeName(s)} (trained for)`, JSON.stringify(s)));
  const others = Object.keys(info.presets).filter((n) => !trainedNames.includes(n))
    .map((n) => new Option(n === "plain" ? "plain: NOT encrypted (not trained for)" : `${n} (not trained for)`, n));
  $("scheme").replaceChildren(group("The model was trained for", trainedOpts), ...(others.length ? [group("Not trained for: expect a poor result", others)] : []));
  // the server names its default (the lead may change it); the page never hard-codes one
  $("scheme").selectedIndex = Math.max(0, trainedNames.indexOf(info.default_scheme));
  schemeNote();
}

function schemeNote() {
  const scheme = selectedScheme();
  const note = $("scheme-note");
  note.classList.remove("warn");
  if (scheme.steps.length === 0) {
    note.textContent = "plain sends your image as it is: the server sees it. You will be asked before anything is sent.";
    note.classList.add("warn");
  } else if (!isTrained(scheme)) {
    note.textContent = `The model was not trained for ${cipher.schemeName(scheme)}: the server will segment it, but expect a poor result.`;
    note.classList.add("warn");
  } else {
    note.textContent = `${cipher.schemeName(scheme)}: ${info.presets[cipher.schemeName(scheme)] ?? "a scheme the model was trained for"}.`;
  }
}

function setUpTransport() {
  const why = jpeg.unavailable(info);
  $("transport-box").hidden = Boolean(why);
  const note = () => {
    const j = $("transport").value === "jpeg";
    const problem = j ? jpeg.blockSizeProblem(selectedScheme().block_size) : null;
    $("transport-note").hidden = !j;
    const group = arrangement.arrangementGroup(selectedScheme());
    const sorts = group !== null && arrangement.serverSorts(info);
    $("transport-note").textContent = !j ? "" : problem ? `${problem}: PNG is used.`
      : `JPEG (quality ${jpeg.DEFAULT_QUALITY}, 4:4:4, no chroma subsampling): a smaller upload, and the label map still ` +
        "decrypts exactly; the server's copy of the encrypted image is lossy, and a model trained on PNG ciphertexts can score " +
        "noticeably lower on it (docs/benchmarks.md measures the shipped demo model)." +
        (sorts ? ` This server's model ignores the order of the pixels inside each ${group}x${group} group, so the page sends ` +
          "each group's pixels sorted (format v3): the same answer, a smaller upload, and the key's shuffle is not in it." : "");
  };
  $("transport").addEventListener("change", () => { note(); rerun(); });
  $("scheme").addEventListener("change", note);
}

// -- for tests -------------------------------------------------------------------------------------

/** The result on screen: key hex, decrypted mask and encrypted image (hex), the image's name. */
export function lastResult() {
  if (!shown) return null;
  return {
    id: shown.id,
    name: shown.name,
    key: $("key-hex").textContent,
    width: shown.mask.width,
    height: shown.mask.height,
    imageWidth: shown.img.width,
    imageHeight: shown.img.height,
    mask: cipher.bytesToHex(shown.mask.data), // the decrypted server answer, before any refining
    refined: shown.refined ? cipher.bytesToHex(shown.refined.data) : null,
    onScreen: cipher.bytesToHex(onScreen(shown).data),
    encrypted: cipher.bytesToHex(shown.enc.data),
    sent: cipher.bytesToHex(shown.sent.data), // what the server received before JPEG coding (arranged, if it was)
    scheme: shown.scheme,
    trained: shown.trained,
    transport: shown.transport,
    arrangement: shown.arrangement,
  };
}

/** The decoded image the page holds (RGB hex), to compare with the Python client's reading. */
export function pickedImage() {
  if (!picked) return null;
  return { name: picked.name, width: picked.img.width, height: picked.img.height, data: cipher.bytesToHex(picked.img.data) };
}

export function runHistory() {
  return history.map((h) => ({ ...h }));
}

// -- start -----------------------------------------------------------------------------------------

async function init() {
  try {
    const resp = await fetch("/v1/info");
    if (!resp.ok) throw new Error(`GET /v1/info answered HTTP ${resp.status}`);
    info = await resp.json();
  } catch (err) {
    setState("error", `Cannot reach the server at ${location.origin} (${err instanceof TypeError ? "no answer" : err.message}): is it running? Reload the page when it is.`);
    return;
  }
  if (!crypto.subtle) {
    setState("error", "WebCrypto is unavailable: open this page over https or from localhost.");
    return;
  }
  fillSchemes();
  setUpTransport();
  $("model-statement").textContent = modelStatement();
  $("model-info").textContent = `${info.model.name}, ${info.classes.length} classes, block size ${info.block_size}`;
  // the cipher versions the server accepts (format_versions; an older server reports only format_version)
  // (v3, the sorted arrangement, is named when the server takes arranged uploads: /v1/info arrangements)
  const versions = [...(info.format_versions ?? [info.format_version])];
  if (arrangement.serverSorts(info) && !versions.includes(arrangement.ARRANGED_VERSION)) versions.push(arrangement.ARRANGED_VERSION);
  $("format-version").textContent = versions.map((v) => `v${v}`).join(", ");
  showLegend(null);
  if (info.refiner) { // fetched once, in the background; a run waits for it only if it is not there yet
    $("refine-box").hidden = false;
    refinerLoad = refiner.fetchRefiner(info.classes.length).catch((err) => new Error(err.message || String(err)));
  }
  $("refine").addEventListener("change", onRefineToggle);
  $("file").addEventListener("change", onFile);
  $("run").addEventListener("click", rerun);
  $("cancel").addEventListener("click", cancelCurrent);
  $("scheme").addEventListener("change", () => { schemeNote(); rerun(); });
  $("downscale").addEventListener("click", acceptDownscale);
  $("forget-key").addEventListener("click", forgetKey);
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = `${$("opacity").value}%`;
    drawResultPanel();
  });
  $("opacity").addEventListener("change", refreshOverlayDownload);
  for (const r of document.querySelectorAll('input[name="view"]')) r.addEventListener("change", drawResultPanel);
  $("overlay").dataset.labels = "mask";
  $("server-labels").dataset.labels = "server";
  for (const [canvas, out] of [[$("overlay"), $("hover")], [$("server-labels"), $("hover")], [$("zoom-canvas"), $("zoom-hover")]]) {
    canvas.addEventListener("mousemove", (e) => {
      const text = canvas.dataset.labels ? classAt(canvas, e) : null;
      if (text) out.textContent = `Under the pointer ${text}`;
    });
  }
  for (const b of document.querySelectorAll("button.enlarge")) b.addEventListener("click", () => openZoom(b.dataset.canvas));
  for (const id of ["original", "encrypted", "server-labels", "overlay"]) $(id).addEventListener("click", () => openZoom(id));
  $("zoom-close").addEventListener("click", () => $("zoom").close());
  controlsBusy(false);
  setState("ready", "Ready: pick an image.");
}

async function refreshOverlayDownload() {
  const r = shown;
  if (!r) return;
  const png = await encodePNG(blend(r.img.data, onScreen(r).data, info.palette, opacity()), r.img.width, r.img.height, 3);
  if (shown === r) setDownload($("download-overlay"), png, `${stem(r.name)}_overlay.png`);
}

init();
