// JPEG transport (docs/encryption-format.md section 10): encrypt, then JPEG-encode the ciphertext.
// The label map still decrypts exactly (JPEG changes pixel values, never positions) as long as no
// JPEG operation mixes two cipher blocks: block size a multiple of 8, 4:4:4 (no chroma subsampling),
// baseline SOF0, no APPn beyond JFIF, the metadata in one `encseg\0` COM segment right after APP0.
import encode from "./vendor/jpeg-js-encoder.js";

export const DEFAULT_QUALITY = 90; // encseg's default (section 10.1.6)
const MAX_JSON = 4096; // section 10.2

/** Why the page cannot offer JPEG uploads to this server, or null when it can. */
export function unavailable(info) {
  return Array.isArray(info.transports) && info.transports.includes("jpeg") ? null : "this server does not accept JPEG ciphertexts";
}

/** Why a scheme with block size p cannot travel as JPEG (10.1.1), or null. */
export function blockSizeProblem(p) {
  return p % 8 ? `JPEG transport needs a block size that is a multiple of 8 (this scheme's is ${p})` : null;
}

/** A baseline 4:4:4 JPEG of the RGB ciphertext with the metadata in its `encseg` COM segment. */
export async function encodeCiphertext(rgb, width, height, meta, quality = DEFAULT_QUALITY) {
  if (width % 8 || height % 8) throw new Error(`a JPEG ciphertext has sides that are multiples of 8 (got ${width}x${height})`);
  const json = JSON.stringify(meta);
  if (json.length > MAX_JSON || /[^\x20-\x7e]/.test(json)) throw new Error("the encseg metadata does not fit a COM segment");
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgba[j] = rgb[i];
    rgba[j + 1] = rgb[i + 1];
    rgba[j + 2] = rgb[i + 2];
    rgba[j + 3] = 255;
  }
  const { data } = encode({ width, height, data: rgba, comments: [`encseg\u0000${json}`] }, quality);
  return new Blob([data], { type: "image/jpeg" });
}
