// Reading an image file the way docs/encryption-format.md section 11 says a client must, so that this
// page and the Python client (encseg.cipher.io.decode_image) see the same pixels: PNG, JPEG, GIF,
// WebP or BMP; 8 bits per channel; no alpha channel or transparent colour; not CMYK; EXIF
// orientation applied; grey and palette images expanded to RGB; no colour-profile conversion.
// The header is read before anything is decoded, so a refused or oversized file costs nothing.

/** The page decodes at most this many pixels, the Python client's default read limit (64 Mi). */
export const MAX_DECODE_PIXELS = 64 * 1024 * 1024;

export class ImageRefused extends Error {}

const u16be = (b, i) => (b[i] << 8) | b[i + 1];
const u32be = (b, i) => ((b[i] << 24) >>> 0) + (b[i + 1] << 16) + (b[i + 2] << 8) + b[i + 3];
const u16le = (b, i) => b[i] | (b[i + 1] << 8);
const u32le = (b, i) => (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16)) + ((b[i + 3] << 24) >>> 0);
const ascii = (b, i, n) => String.fromCharCode(...b.subarray(i, i + n));

const ALPHA = "it has an alpha channel or a transparent colour: flatten it onto a background first";

function png(b) {
  let pos = 8, w = 0, h = 0;
  while (pos + 8 <= b.length) {
    const len = u32be(b, pos), type = ascii(b, pos + 4, 4);
    if (type === "IHDR") {
      w = u32be(b, pos + 8);
      h = u32be(b, pos + 12);
      const depth = b[pos + 16], ctype = b[pos + 17];
      if (depth === 16) return { w, h, refuse: "it is a 16-bit PNG: the cipher works on 8-bit RGB; convert it first" };
      if (ctype === 4 || ctype === 6) return { w, h, refuse: ALPHA };
    } else if (type === "tRNS") return { w, h, refuse: ALPHA };
    else if (type === "IDAT" || type === "IEND") break;
    pos += 12 + len;
  }
  return { w, h };
}

function jpeg(b) {
  let pos = 2;
  while (pos + 4 <= b.length) {
    if (b[pos] !== 0xff) return { w: 0, h: 0 };
    const m = b[pos + 1];
    if (m === 0xff) { pos++; continue; } // fill byte
    if (m === 0xd8 || m === 0x01 || (m >= 0xd0 && m <= 0xd7)) { pos += 2; continue; }
    const len = u16be(b, pos + 2);
    // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      const precision = b[pos + 4], h = u16be(b, pos + 5), w = u16be(b, pos + 7), nf = b[pos + 9];
      if (precision !== 8) return { w, h, refuse: `it is a ${precision}-bit JPEG: the cipher works on 8-bit RGB` };
      if (nf === 4) return { w, h, refuse: "it is a CMYK JPEG: convert it to 8-bit RGB first" };
      return { w, h };
    }
    if (m === 0xda || m === 0xd9) break;
    pos += 2 + len;
  }
  return { w: 0, h: 0 };
}

function gif(b) {
  const w = u16le(b, 6), h = u16le(b, 8), flags = b[10];
  let pos = 13 + (flags & 0x80 ? 3 * (2 << (flags & 7)) : 0);
  while (pos < b.length) { // extensions up to the first image: a graphic control block may declare transparency
    if (b[pos] === 0x2c || b[pos] === 0x3b) break;
    if (b[pos] !== 0x21) break;
    if (b[pos + 1] === 0xf9 && b[pos + 3] & 1) return { w, h, refuse: ALPHA };
    pos += 2;
    while (pos < b.length && b[pos]) pos += b[pos] + 1; // sub-blocks
    pos++;
  }
  return { w, h };
}

function webp(b) {
  const kind = ascii(b, 12, 4);
  if (kind === "VP8X") {
    const w = 1 + (b[24] | (b[25] << 8) | (b[26] << 16)), h = 1 + (b[27] | (b[28] << 8) | (b[29] << 16));
    return b[20] & 0x10 ? { w, h, refuse: ALPHA } : { w, h };
  }
  if (kind === "VP8L") {
    const bits = u32le(b, 21);
    const w = 1 + (bits & 0x3fff), h = 1 + ((bits >>> 14) & 0x3fff);
    return (bits >>> 28) & 1 ? { w, h, refuse: ALPHA } : { w, h };
  }
  if (kind === "VP8 ") return { w: u16le(b, 26) & 0x3fff, h: u16le(b, 28) & 0x3fff };
  return { w: 0, h: 0 };
}

function bmp(b) {
  const header = u32le(b, 14), w = Math.abs(u32le(b, 18) | 0), h = Math.abs(u32le(b, 22) | 0);
  const bpp = u16le(b, 28), compression = u32le(b, 30);
  if (bpp === 32 && (compression === 3 || compression === 6) && header >= 56 && u32le(b, 54 + 12)) {
    return { w, h, refuse: ALPHA };
  }
  return { w, h };
}

/** The format, size and (if any) the reason to refuse a file, from its first bytes alone. */
export function sniff(bytes) {
  const b = bytes;
  let format = null, facts = { w: 0, h: 0 };
  if (b.length >= 24 && [137, 80, 78, 71, 13, 10, 26, 10].every((v, i) => b[i] === v)) [format, facts] = ["PNG", png(b)];
  else if (b.length >= 4 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) [format, facts] = ["JPEG", jpeg(b)];
  else if (b.length >= 13 && /^GIF8[79]a$/.test(ascii(b, 0, 6))) [format, facts] = ["GIF", gif(b)];
  else if (b.length >= 30 && ascii(b, 0, 4) === "RIFF" && ascii(b, 8, 4) === "WEBP") [format, facts] = ["WebP", webp(b)];
  else if (b.length >= 54 && ascii(b, 0, 2) === "BM") [format, facts] = ["BMP", bmp(b)];
  return { format, width: facts.w, height: facts.h, refuse: facts.refuse || null };
}

/** Only the start of a file is needed to sniff it (JPEG headers can sit behind a large EXIF block). */
const HEAD_BYTES = 256 * 1024;

/**
 * Read a File as {width, height, data: RGB bytes, format}, or throw ImageRefused with a one-line reason.
 * `isCurrent()` is asked after each await, so a newer pick can abandon this read early.
 */
export async function readImageFile(file, isCurrent = () => true) {
  if (!file.size) throw new ImageRefused(`${file.name} is empty`);
  const head = new Uint8Array(await file.slice(0, HEAD_BYTES).arrayBuffer());
  const facts = sniff(head);
  if (!facts.format) {
    throw new ImageRefused(`${file.name} is not a PNG, JPEG, GIF, WebP or BMP image`);
  }
  if (facts.refuse) throw new ImageRefused(`${file.name} is refused: ${facts.refuse}`);
  if (facts.width * facts.height > MAX_DECODE_PIXELS) {
    throw new ImageRefused(`${file.name} is ${facts.width}x${facts.height} = ${facts.width * facts.height} pixels, ` +
      `over the page's limit of ${MAX_DECODE_PIXELS} (the Python client's too)`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new ImageRefused(`${file.name} could not be decoded as a ${facts.format} image (damaged or truncated?)`);
  }
  try {
    if (!isCurrent()) return null;
    const { width, height } = bitmap;
    const ctx = new OffscreenCanvas(width, height).getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const rgba = ctx.getImageData(0, 0, width, height).data;
    const data = new Uint8Array(width * height * 3);
    for (let i = 0, j = 0; j < rgba.length; i += 3, j += 4) {
      if (rgba[j + 3] !== 255) throw new ImageRefused(`${file.name} is refused: ${ALPHA}`);
      data[i] = rgba[j];
      data[i + 1] = rgba[j + 1];
      data[i + 2] = rgba[j + 2];
    }
    return { width, height, data, format: facts.format };
  } finally {
    bitmap.close();
  }
}

/** An RGB image resampled to width x height (the user asked for it: a smaller upload, not exact). */
export function downscale(img, width, height) {
  const src = new OffscreenCanvas(img.width, img.height);
  const rgba = new ImageData(img.width, img.height);
  for (let i = 0, j = 0; i < img.data.length; i += 3, j += 4) {
    rgba.data[j] = img.data[i];
    rgba.data[j + 1] = img.data[i + 1];
    rgba.data[j + 2] = img.data[i + 2];
    rgba.data[j + 3] = 255;
  }
  src.getContext("2d").putImageData(rgba, 0, 0);
  const dst = new OffscreenCanvas(width, height);
  const ctx = dst.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(src, 0, 0, width, height);
  const out = ctx.getImageData(0, 0, width, height).data;
  const data = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; j < out.length; i += 3, j += 4) data.set(out.subarray(j, j + 3), i);
  return { width, height, data, format: img.format };
}
