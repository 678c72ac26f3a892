// Format v3 (docs/encryption-format.md section 13): the sorted arrangement. A scheme with a pixel-shuffle
// or block-pixel-shuffle step fills every q x q group of the ciphertext with a key-dependent order of
// its pixels; a server whose model is order-free inside those groups gives the same answer for any
// order, so a JPEG upload sends every group's pixels sorted (a smooth ramp, a fraction of the bytes).
// The server's label map comes back in that arranged geometry and restoreLabels moves it back, from
// the ciphertext the page still holds. The order is computed here, used, and dropped: it is never
// stored, sent or logged. It must reproduce every tests/vectors/arranged/*.json (tests/test_browser.py).
//
// Images are {width, height, data: Uint8Array(height * width * 3)}; label maps {width, height, data}.
import { BLOCK_PIXEL_SHUFFLE, PIXEL_SHUFFLE, validateScheme } from "./cipher.js";

export const NONE = "none";
export const SORTED = "sorted";
export const ARRANGED_VERSION = 3; // the metadata object's version for an arranged file (13.4)

/** The side q of the groups whose order the scheme makes meaningless, or null (no pixel shuffling). */
export function arrangementGroup(scheme) {
  for (const s of scheme.steps) if (s.name === PIXEL_SHUFFLE || s.name === BLOCK_PIXEL_SHUFFLE) return s.group || scheme.block_size;
  return null;
}

/** Whether this server takes arranged uploads (GET /v1/info `arrangements`, 13.4). */
export function serverSorts(info) {
  return Array.isArray(info.arrangements) && info.arrangements.includes(SORTED);
}

/** The metadata object of an arranged file, in the member order of 13.4. */
export function arrangedMeta(scheme, originalSize) {
  return { version: ARRANGED_VERSION, scheme, original_size: originalSize, arrangement: SORTED };
}

/**
 * Section 13.1: sources[t] is the (flat, row-major) ciphertext pixel that goes to arranged pixel t.
 * In every q x q group the pixels are sorted by (K_j, j), K = (299 R + 587 G + 114 B) * 2^24 + R * 2^16
 * + G * 2^8 + B. The sort runs on one exact double per pixel: (L * 2^16 + R * 2^8 + G) * 2^16 + j, with
 * L the luminance. That orders exactly as (K_j, j): given L, R and G, B = (L - 299 R - 587 G) / 114 is
 * determined, so (L, R, G) orders as (L, R, G, B) does; the value is below 255000 * 2^32 + 2^32 < 2^53,
 * and j < q * q <= 65536 (p <= 256) is its low 16 bits.
 */
export function arrangementSources(enc, scheme) {
  scheme = validateScheme(scheme);
  const p = scheme.block_size, q = arrangementGroup(scheme);
  if (q === null) throw new Error("the sorted arrangement needs a scheme with pixel shuffling (ps or psb)");
  const { width: W, height: H, data } = enc;
  if (H % p || W % p) throw new Error(`a ${W}x${H} ciphertext is not a multiple of the block size ${p}`);
  if (data.length !== H * W * 3) throw new Error("the ciphertext is not RGB of its size");
  const m = q * q, r = p / q;
  const slots = new Int32Array(m), keys = new Float64Array(m), sources = new Int32Array(H * W);
  for (let by = 0; by < H / p; by++) {
    for (let bx = 0; bx < W / p; bx++) {
      for (let gy = 0; gy < r; gy++) {
        for (let gx = 0; gx < r; gx++) {
          const y0 = by * p + gy * q, x0 = bx * p + gx * q;
          for (let j = 0; j < m; j++) {
            const i = (y0 + Math.floor(j / q)) * W + x0 + (j % q);
            const R = data[3 * i], G = data[3 * i + 1], B = data[3 * i + 2];
            slots[j] = i;
            keys[j] = ((299 * R + 587 * G + 114 * B) * 65536 + R * 256 + G) * 65536 + j;
          }
          keys.sort(); // a typed array sorts numerically
          for (let t = 0; t < m; t++) sources[slots[t]] = slots[keys[t] % 65536];
        }
      }
    }
  }
  return sources;
}

/** The arranged image A: the ciphertext with every group's pixels sorted (13.1). */
export function arrange(enc, scheme) {
  const sources = arrangementSources(enc, scheme), src = enc.data;
  const out = new Uint8Array(src.length);
  for (let t = 0; t < sources.length; t++) {
    const s = 3 * sources[t];
    out[3 * t] = src[s];
    out[3 * t + 1] = src[s + 1];
    out[3 * t + 2] = src[s + 2];
  }
  return { data: out, width: enc.width, height: enc.height };
}

/** Section 13.2: a label map the server computed on arrange(enc), in enc's (encrypted) geometry. */
export function restoreLabels(labels, enc, scheme) {
  if (labels.width !== enc.width || labels.height !== enc.height || labels.data.length !== enc.width * enc.height) {
    throw new Error(`a ${labels.width}x${labels.height} label map does not fit a ${enc.width}x${enc.height} ciphertext`);
  }
  const sources = arrangementSources(enc, scheme);
  const out = new Uint8Array(labels.data.length);
  for (let t = 0; t < sources.length; t++) out[sources[t]] = labels.data[t];
  return { data: out, width: labels.width, height: labels.height };
}
