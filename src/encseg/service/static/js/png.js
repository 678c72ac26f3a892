// Exact PNG in the page: encrypted images and label maps must survive byte for byte, so they do not
// go through a canvas (colour management, premultiplied alpha). 8-bit, non-interlaced; zlib via
// CompressionStream / DecompressionStream("deflate").

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const COLOR_TYPE = { 1: 0, 3: 2, 4: 6 }; // channels -> PNG colour type (grey, RGB, RGBA)
const CHANNELS = { 0: 1, 2: 3, 6: 4 };

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

async function pipe(bytes, stream) {
  const out = await new Response(new Blob([bytes]).stream().pipeThrough(stream)).arrayBuffer();
  return new Uint8Array(out);
}

function chunk(type, body) {
  const out = new Uint8Array(12 + body.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, body.length);
  const typed = new TextEncoder().encode(type);
  out.set(typed, 4);
  out.set(body, 8);
  dv.setUint32(8 + body.length, crc32(out.subarray(4, 8 + body.length)));
  return out;
}

/** PNG bytes of 8-bit pixels (channels 1, 3 or 4), with optional tEXt chunks {keyword: text}. */
export async function encodePNG(data, width, height, channels, text = {}) {
  const ihdr = new Uint8Array(13);
  const dv = new DataView(ihdr.buffer);
  dv.setUint32(0, width);
  dv.setUint32(4, height);
  ihdr.set([8, COLOR_TYPE[channels], 0, 0, 0], 8);
  const row = width * channels;
  const raw = new Uint8Array(height * (row + 1)); // filter type 0 (None) on every row
  for (let y = 0; y < height; y++) raw.set(data.subarray(y * row, (y + 1) * row), y * (row + 1) + 1);
  const parts = [Uint8Array.from(SIGNATURE), chunk("IHDR", ihdr)];
  for (const [k, v] of Object.entries(text)) {
    const body = new Uint8Array([...new TextEncoder().encode(k), 0, ...Array.from(v, (ch) => ch.charCodeAt(0) & 0xff)]);
    parts.push(chunk("tEXt", body));
  }
  parts.push(chunk("IDAT", await pipe(raw, new CompressionStream("deflate"))), chunk("IEND", new Uint8Array(0)));
  return new Blob(parts, { type: "image/png" });
}

/** Decode an 8-bit, non-interlaced grey/RGB/RGBA PNG -> {width, height, channels, data, text}. */
export async function decodePNG(buffer) {
  const b = new Uint8Array(buffer);
  if (!SIGNATURE.every((v, i) => b[i] === v)) throw new Error("not a PNG");
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let pos = 8, width = 0, height = 0, channels = 0;
  const idat = [], text = {};
  while (pos + 8 <= b.length) {
    const len = dv.getUint32(pos), type = String.fromCharCode(...b.subarray(pos + 4, pos + 8));
    const body = b.subarray(pos + 8, pos + 8 + len);
    if (type === "IHDR") {
      width = dv.getUint32(pos + 8);
      height = dv.getUint32(pos + 12);
      const [depth, ctype, , , interlace] = body.subarray(8, 13);
      channels = CHANNELS[ctype];
      if (depth !== 8 || !channels || interlace) throw new Error(`unsupported PNG (depth ${depth}, colour type ${ctype}, interlace ${interlace})`);
    } else if (type === "IDAT") idat.push(body);
    else if (type === "tEXt") {
      const z = body.indexOf(0);
      text[String.fromCharCode(...body.subarray(0, z))] = String.fromCharCode(...body.subarray(z + 1));
    } else if (type === "IEND") break;
    pos += 12 + len;
  }
  const raw = await pipe(new Blob(idat), new DecompressionStream("deflate"));
  const row = width * channels, bpp = channels;
  const out = new Uint8Array(height * row);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (row + 1)], src = raw.subarray(y * (row + 1) + 1, (y + 1) * (row + 1));
    const cur = out.subarray(y * row, (y + 1) * row), prev = y ? out.subarray((y - 1) * row, y * row) : null;
    for (let i = 0; i < row; i++) {
      const a = i >= bpp ? cur[i - bpp] : 0, up = prev ? prev[i] : 0, c = prev && i >= bpp ? prev[i - bpp] : 0;
      let v;
      if (f === 0) v = 0;
      else if (f === 1) v = a;
      else if (f === 2) v = up;
      else if (f === 3) v = (a + up) >> 1;
      else if (f === 4) {
        const p = a + up - c, pa = Math.abs(p - a), pb = Math.abs(p - up), pc = Math.abs(p - c);
        v = pa <= pb && pa <= pc ? a : pb <= pc ? up : c;
      } else throw new Error(`bad PNG filter ${f}`);
      cur[i] = (src[i] + v) & 0xff;
    }
  }
  return { width, height, channels, data: out, text };
}
