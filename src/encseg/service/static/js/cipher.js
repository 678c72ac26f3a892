// The encseg cipher, formats v1 and v2, in the browser: WebCrypto HKDF-SHA256 + AES-256-CTR key streams
// and the block-wise steps, written step by step from docs/encryption-format.md. It must reproduce
// every tests/vectors/*.json byte for byte (tests/test_browser.py checks it in chromium).
//
// Images are {width, height, data: Uint8Array(height * width * 3)} (row-major, channel last);
// label maps are {width, height, data: Uint8Array(height * width)}. Keys are Uint8Array(32) and are
// never sent anywhere by this module.

// FORMAT_VERSION: the base format and the version of the encrypted file's metadata object (section 8),
// 1 for every file. A scheme descriptor's own version is the highest of its steps' (v2: block-pixel-shuffle).
export const FORMAT_VERSION = 1;
export const FORMAT_VERSIONS = [1, 2];
export const BLOCK_SCRAMBLE = "block-scramble";
export const PIXEL_SHUFFLE = "pixel-shuffle";
export const BLOCK_PIXEL_SHUFFLE = "block-pixel-shuffle";
export const NEGATIVE_POSITIVE = "negative-positive";
export const CHANNEL_SHUFFLE = "channel-shuffle";
const STEP_NAMES = [BLOCK_SCRAMBLE, PIXEL_SHUFFLE, BLOCK_PIXEL_SHUFFLE, NEGATIVE_POSITIVE, CHANNEL_SHUFFLE];
const STEP_VERSIONS = { [BLOCK_PIXEL_SHUFFLE]: 2 }; // every other step: 1
const GROUPED = [PIXEL_SHUFFLE, BLOCK_PIXEL_SHUFFLE];
const CODES = { bs: BLOCK_SCRAMBLE, ps: PIXEL_SHUFFLE, psb: BLOCK_PIXEL_SHUFFLE, np: NEGATIVE_POSITIVE, cs: CHANNEL_SHUFFLE };
const SALT = new TextEncoder().encode("encseg/v1");
// The six channel orders, lexicographic (section 5): out[c] = in[order[c]].
export const CHANNEL_ORDERS = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
const CS_LIMIT = 4294967292; // 2^32 - (2^32 mod 6)

// -- keys ------------------------------------------------------------------------------------------

export function generateKey() {
  return crypto.getRandomValues(new Uint8Array(32));
}

export function keyToHex(key) {
  return Array.from(key, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function keyFromHex(text) {
  text = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new Error("a key in text form is 64 hex characters");
  return hexToBytes(text);
}

export function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

export const bytesToHex = keyToHex;

// -- schemes (section 3) ---------------------------------------------------------------------------

export function validateScheme(scheme) {
  if (typeof scheme !== "object" || scheme === null) throw new Error("a scheme is a JSON object");
  if (scheme.version !== undefined && !FORMAT_VERSIONS.includes(scheme.version)) throw new Error(`scheme version ${scheme.version} is not 1 or 2`);
  for (const k of Object.keys(scheme)) {
    if (!["version", "block_size", "steps"].includes(k)) throw new Error(`unknown scheme field ${k}`);
  }
  const p = scheme.block_size ?? 16;
  if (!Number.isInteger(p) || p < 1 || p > 256) throw new Error(`block size must be an integer in 1..256`);
  const seen = new Set();
  for (const s of scheme.steps ?? []) {
    if (!STEP_NAMES.includes(s.name)) throw new Error(`unknown step ${s.name}`);
    if (seen.has(s.name)) throw new Error(`step ${s.name} appears twice`);
    seen.add(s.name);
    for (const k of Object.keys(s)) if (!["name", "group"].includes(k)) throw new Error(`unknown step field ${k}`);
    if (s.group !== undefined && s.group !== null) {
      if (!GROUPED.includes(s.name)) throw new Error(`only ${GROUPED.join(" and ")} take a group`);
      if (!Number.isInteger(s.group) || s.group < 1 || p % s.group) throw new Error(`group ${s.group} must divide ${p}`);
    }
  }
  if (seen.has(PIXEL_SHUFFLE) && seen.has(BLOCK_PIXEL_SHUFFLE)) throw new Error(`a scheme has ${PIXEL_SHUFFLE} or ${BLOCK_PIXEL_SHUFFLE}, not both`);
  const version = Math.max(1, ...[...seen].map((name) => STEP_VERSIONS[name] ?? 1));
  if (scheme.version !== undefined && scheme.version < version) throw new Error(`a scheme with ${BLOCK_PIXEL_SHUFFLE} is version 2, not ${scheme.version}`);
  return { version, block_size: p, steps: (scheme.steps ?? []).map((s) => ({ ...s })) };
}

/** A preset or code list ("bs-np-cs", "bs-ps4-np-cs", "plain") -> a scheme object. */
export function parseScheme(text, blockSize = 16) {
  text = text.trim();
  if (text.startsWith("{")) return validateScheme(JSON.parse(text));
  if (text === "plain" || text === "none" || text === "") return validateScheme({ block_size: blockSize, steps: [] });
  const steps = text.split("-").map((code) => {
    const m = /^(bs|psb|ps|np|cs)([0-9]*)$/.exec(code);
    if (!m || (m[2] && !GROUPED.includes(CODES[m[1]]))) throw new Error(`unknown scheme ${text}`);
    return m[2] ? { name: CODES[m[1]], group: parseInt(m[2], 10) } : { name: CODES[m[1]] };
  });
  return validateScheme({ block_size: blockSize, steps });
}

export function schemeName(scheme) {
  const code = Object.fromEntries(Object.entries(CODES).map(([c, name]) => [name, c]));
  return scheme.steps.map((s) => code[s.name] + (s.group ? String(s.group) : "")).join("-") || "plain";
}

// -- key stream (section 5) ------------------------------------------------------------------------

/** HKDF-SHA256(key, salt "encseg/v1", info = step name) -> 32-byte sub-key. */
export async function subkey(key, stepName) {
  const ikm = await crypto.subtle.importKey("raw", key, "HKDF", false, ["deriveBits"]);
  const bits = await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: SALT, info: new TextEncoder().encode(stepName) }, ikm, 256);
  return new Uint8Array(bits);
}

/** The first nbytes of a step's stream: AES-256-CTR(subkey, counter 0) over zero bytes. */
export async function stepStream(key, stepName, nbytes) {
  const sub = await subkey(key, stepName);
  const aes = await crypto.subtle.importKey("raw", sub, { name: "AES-CTR" }, false, ["encrypt"]);
  const out = await crypto.subtle.encrypt(
    { name: "AES-CTR", counter: new Uint8Array(16), length: 128 }, aes, new Uint8Array(nbytes));
  return new Uint8Array(out);
}

/** Indices 0..m-1 sorted by (LE64 word k_i, i): a stable argsort of m words. */
export async function drawPermutation(key, stepName, m) {
  const s = await stepStream(key, stepName, 8 * m);
  const dv = new DataView(s.buffer, s.byteOffset, s.byteLength);
  const lo = new Uint32Array(m), hi = new Uint32Array(m);
  for (let i = 0; i < m; i++) {
    lo[i] = dv.getUint32(8 * i, true);
    hi[i] = dv.getUint32(8 * i + 4, true);
  }
  const idx = Array.from({ length: m }, (_, i) => i);
  idx.sort((a, b) => hi[a] - hi[b] || lo[a] - lo[b] || a - b);
  return Int32Array.from(idx);
}

/** Format v2: n permutations of m, block b's from the LE64 words [b*m, (b+1)*m), flat (row b at b*m). */
export async function drawBlockPermutations(key, n, m) {
  return argsortWordRows(await stepStream(key, BLOCK_PIXEL_SHUFFLE, 8 * n * m), n, m);
}

/** Row by row, indices 0..m-1 (m <= 65536) sorted by (LE64 word, index). A native Float64Array sort on
 * hi * 65536 + i (exact: below 2^48) orders by the high 32 bits and the index; runs of equal high words
 * (rare for key-stream words) are then re-sorted by (low word, index). */
export function argsortWordRows(bytes, n, m) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Int32Array(n * m), lo = new Uint32Array(m), hi = new Uint32Array(m), keys = new Float64Array(m);
  const byLow = (a, b) => lo[a] - lo[b] || a - b;
  for (let b = 0; b < n; b++) {
    for (let i = 0; i < m; i++) {
      lo[i] = dv.getUint32(8 * (b * m + i), true);
      hi[i] = dv.getUint32(8 * (b * m + i) + 4, true);
      keys[i] = hi[i] * 65536 + i;
    }
    keys.sort();
    const row = out.subarray(b * m, (b + 1) * m);
    for (let i = 0; i < m; i++) row[i] = keys[i] % 65536;
    for (let i = 0, j; i < m; i = j) {
      for (j = i + 1; j < m && hi[row[j]] === hi[row[i]]; j++);
      if (j - i > 1) row.set(Array.from(row.subarray(i, j)).sort(byLow), i);
    }
  }
  return out;
}

/** One bit per block: bit 0 of the LE32 word b. */
export async function drawNegateBits(key, n) {
  const s = await stepStream(key, NEGATIVE_POSITIVE, 4 * n);
  const out = new Uint8Array(n);
  for (let b = 0; b < n; b++) out[b] = s[4 * b] & 1; // bit 0 of a little-endian word is in its first byte
  return out;
}

/** One channel-order index per block from LE32 words, dropping u >= 2^32 - 4. */
export async function drawChannelOrders(key, n) {
  for (let m = n + 8; ; m *= 2) { // the stream is prefix-stable: asking for more is safe
    const s = await stepStream(key, CHANNEL_SHUFFLE, 4 * m);
    const dv = new DataView(s.buffer, s.byteOffset, s.byteLength);
    const out = new Uint8Array(n);
    let k = 0;
    for (let i = 0; i < m && k < n; i++) {
      const u = dv.getUint32(4 * i, true);
      if (u < CS_LIMIT) out[k++] = u % 6;
    }
    if (k === n) return out;
  }
}

/** The p*p gather of a pixel-shuffle step (a group q applies a q*q permutation in every sub-block). */
export function pixelGather(perm, p, q) {
  if (q === p) return perm;
  const out = new Int32Array(p * p);
  for (let r = 0; r < p; r++) {
    for (let c = 0; c < p; c++) {
      const s = perm[(r % q) * q + (c % q)];
      out[r * p + c] = (Math.floor(r / q) * q + Math.floor(s / q)) * p + Math.floor(c / q) * q + (s % q);
    }
  }
  return out;
}

/** Every draw a key makes for a scheme and an nh x nw grid, keyed by step name (as in the vectors). */
export async function makeDraws(key, scheme, n, { geometryOnly = false } = {}) {
  const p = scheme.block_size;
  const draws = {};
  for (const step of scheme.steps) {
    if (step.name === BLOCK_SCRAMBLE) draws[step.name] = await drawPermutation(key, BLOCK_SCRAMBLE, n);
    else if (step.name === PIXEL_SHUFFLE) {
      const q = step.group || p;
      draws[step.name] = await drawPermutation(key, PIXEL_SHUFFLE, q * q);
    } else if (step.name === BLOCK_PIXEL_SHUFFLE) {
      const q = step.group || p;
      draws[step.name] = await drawBlockPermutations(key, n, q * q);
    } else if (geometryOnly) continue;
    else if (step.name === NEGATIVE_POSITIVE) draws[step.name] = await drawNegateBits(key, n);
    else if (step.name === CHANNEL_SHUFFLE) draws[step.name] = await drawChannelOrders(key, n);
  }
  return draws;
}

// -- padding and blocks (section 4) ----------------------------------------------------------------

/** Pad bottom/right to multiples of p: edge replication, or a constant `fill`. c = channels. */
export function padToBlocks(data, height, width, c, p, fill = null) {
  const H = Math.ceil(height / p) * p, W = Math.ceil(width / p) * p;
  if (H === height && W === width) return { data: data.slice(), height: H, width: W };
  const out = new Uint8Array(H * W * c);
  if (fill !== null) out.fill(fill);
  for (let y = 0; y < H; y++) {
    if (fill !== null && y >= height) break;
    const sy = Math.min(y, height - 1);
    for (let x = 0; x < W; x++) {
      if (fill !== null && x >= width) break;
      const sx = Math.min(x, width - 1);
      for (let k = 0; k < c; k++) out[(y * W + x) * c + k] = data[(sy * width + sx) * c + k];
    }
  }
  return { data: out, height: H, width: W };
}

// Image <-> block-major layout: block b (row-major), then position j (row-major), then channels.
function toBlocks(data, H, W, c, p) {
  const nw = W / p, out = new Uint8Array(data.length);
  let o = 0;
  for (let by = 0; by < H / p; by++)
    for (let bx = 0; bx < nw; bx++)
      for (let r = 0; r < p; r++) {
        const start = ((by * p + r) * W + bx * p) * c;
        out.set(data.subarray(start, start + p * c), o);
        o += p * c;
      }
  return out;
}

function fromBlocks(blocks, H, W, c, p) {
  const nw = W / p, out = new Uint8Array(blocks.length);
  let o = 0;
  for (let by = 0; by < H / p; by++)
    for (let bx = 0; bx < nw; bx++)
      for (let r = 0; r < p; r++) {
        out.set(blocks.subarray(o, o + p * c), ((by * p + r) * W + bx * p) * c);
        o += p * c;
      }
  return out;
}

// -- the steps on block-major data (c channels per pixel) -------------------------------------------

function gatherBlocks(blocks, perm, size, inverse) {
  const out = new Uint8Array(blocks.length);
  for (let i = 0; i < perm.length; i++) {
    const [dst, src] = inverse ? [perm[i], i] : [i, perm[i]];
    out.set(blocks.subarray(src * size, (src + 1) * size), dst * size);
  }
  return out;
}

function gatherPixels(blocks, gather, n, pp, c, inverse) {
  const out = new Uint8Array(blocks.length);
  for (let b = 0; b < n; b++) {
    const base = b * pp * c;
    for (let j = 0; j < pp; j++) {
      const [dst, src] = inverse ? [gather[j], j] : [j, gather[j]];
      for (let k = 0; k < c; k++) out[base + dst * c + k] = blocks[base + src * c + k];
    }
  }
  return out;
}

// block b (at its position when the step runs) is gathered by its own permutation, perms[b*q*q ...]
function gatherBlockPixels(blocks, perms, n, p, q, c, inverse) {
  const pp = p * p, m = q * q, out = new Uint8Array(blocks.length);
  for (let b = 0; b < n; b++) {
    const g = pixelGather(perms.subarray(b * m, (b + 1) * m), p, q), base = b * pp * c;
    for (let j = 0; j < pp; j++) {
      const dst = base + (inverse ? g[j] : j) * c, src = base + (inverse ? j : g[j]) * c;
      for (let k = 0; k < c; k++) out[dst + k] = blocks[src + k];
    }
  }
  return out;
}

function negate(blocks, bits, pp) {
  for (let b = 0; b < bits.length; b++) {
    if (!bits[b]) continue;
    const start = b * pp * 3, end = start + pp * 3;
    for (let i = start; i < end; i++) blocks[i] = 255 - blocks[i];
  }
  return blocks;
}

function reorderChannels(blocks, orders, pp, inverse) {
  const out = new Uint8Array(blocks.length);
  for (let b = 0; b < orders.length; b++) {
    const o = CHANNEL_ORDERS[orders[b]];
    for (let j = 0; j < pp; j++) {
      const i = (b * pp + j) * 3;
      for (let c = 0; c < 3; c++) {
        if (inverse) out[i + o[c]] = blocks[i + c];
        else out[i + c] = blocks[i + o[c]];
      }
    }
  }
  return out;
}

/** Apply the steps (forward, in list order) or their inverses (in reverse order) to block data. */
function runSteps(blocks, scheme, draws, n, c, inverse) {
  const p = scheme.block_size, pp = p * p;
  const steps = inverse ? [...scheme.steps].reverse() : scheme.steps;
  for (const step of steps) {
    const d = draws[step.name];
    if (step.name === BLOCK_SCRAMBLE) blocks = gatherBlocks(blocks, d, pp * c, inverse);
    else if (step.name === PIXEL_SHUFFLE) blocks = gatherPixels(blocks, pixelGather(d, p, step.group || p), n, pp, c, inverse);
    else if (step.name === BLOCK_PIXEL_SHUFFLE) blocks = gatherBlockPixels(blocks, d, n, p, step.group || p, c, inverse);
    else if (c === 1) continue; // label maps: only the geometry moves
    else if (step.name === NEGATIVE_POSITIVE) blocks = negate(blocks, d, pp);
    else if (step.name === CHANNEL_SHUFFLE) blocks = reorderChannels(blocks, d, pp, inverse);
  }
  return blocks;
}

// -- the public operations (sections 6, 7) ---------------------------------------------------------

/** Encrypt an RGB image -> {data, width, height (padded), originalSize: [H, W], scheme, draws}. */
export async function encrypt(img, key, scheme) {
  scheme = validateScheme(scheme);
  const p = scheme.block_size;
  const pad = padToBlocks(img.data, img.height, img.width, 3, p);
  const n = (pad.height / p) * (pad.width / p);
  const draws = await makeDraws(key, scheme, n);
  const blocks = runSteps(toBlocks(pad.data, pad.height, pad.width, 3, p), scheme, draws, n, 3, false);
  return { data: fromBlocks(blocks, pad.height, pad.width, 3, p), width: pad.width, height: pad.height,
    originalSize: [img.height, img.width], scheme, draws };
}

/** The exact inverse of encrypt, cropped to originalSize. */
export async function decrypt(enc, key) {
  const scheme = validateScheme(enc.scheme), p = scheme.block_size;
  const n = (enc.height / p) * (enc.width / p);
  const draws = await makeDraws(key, scheme, n);
  const full = fromBlocks(runSteps(toBlocks(enc.data, enc.height, enc.width, 3, p), scheme, draws, n, 3, true),
    enc.height, enc.width, 3, p);
  const [h, w] = enc.originalSize;
  return { data: crop(full, enc.height, enc.width, 3, enc.originalSize), width: w, height: h };
}

/** Move a label map into encrypted geometry (padding filled with `fill`, 255 = ignore). */
export async function encryptMask(mask, key, scheme, fill = 255) {
  scheme = validateScheme(scheme);
  const p = scheme.block_size;
  const pad = padToBlocks(mask.data, mask.height, mask.width, 1, p, fill);
  const n = (pad.height / p) * (pad.width / p);
  const draws = await makeDraws(key, scheme, n, { geometryOnly: true });
  const blocks = runSteps(toBlocks(pad.data, pad.height, pad.width, 1, p), scheme, draws, n, 1, false);
  return { data: fromBlocks(blocks, pad.height, pad.width, 1, p), width: pad.width, height: pad.height };
}

/** Undo the geometry of a label map in encrypted geometry and crop it to originalSize [H, W]. */
export async function decryptMask(labels, key, scheme, originalSize) {
  scheme = validateScheme(scheme);
  const p = scheme.block_size, { width: W, height: H } = labels;
  if (H % p || W % p) throw new Error(`label map ${H}x${W} is not a multiple of the block size ${p}`);
  const n = (H / p) * (W / p);
  const draws = await makeDraws(key, scheme, n, { geometryOnly: true });
  const full = fromBlocks(runSteps(toBlocks(labels.data, H, W, 1, p), scheme, draws, n, 1, true), H, W, 1, p);
  return { data: crop(full, H, W, 1, originalSize), width: originalSize[1], height: originalSize[0] };
}

function crop(data, H, W, c, [h, w]) {
  if (h === H && w === W) return data;
  const out = new Uint8Array(h * w * c);
  for (let y = 0; y < h; y++) out.set(data.subarray(y * W * c, (y * W + w) * c), y * w * c);
  return out;
}
