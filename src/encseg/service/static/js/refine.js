// The client's refiner (encseg.models.refine.ClientRefiner) in the page: after decryption, a small CNN
// on the decrypted label map alone (one-hot labels and each cell's place on a coarse grid; never the
// image, never the key) corrects the labels. Its weights are public, like the model's: GET /v1/refiner.
//
// `refine` follows ClientRefiner.forward + argmax step by step, as PyTorch computes it on the CPU:
// one-hot (labels >= num_classes: all zero), adaptive_avg_pool2d to the grid (PyTorch's bins and its
// division), torch.linspace coordinates, 3x3 convolutions (zero padding = dilation) with ReLU, bilinear
// upsampling (align_corners=False, PyTorch's source index), the 1x1 fuse plus label_gain * one-hot, and
// the first maximum. Sums run in float64 and every tensor PyTorch stores is rounded to float32 where it
// does, so the logits agree with PyTorch's to float32 rounding (about 1e-7); an argmax can differ only
// where two classes tie to that precision.
//
// One reordering, exact in real arithmetic: the fuse's context half is applied on the coarse grid,
// before the upsampling (bilinear weights sum to one, so bias and weights commute with it). The
// full-resolution work is then 2 x num_classes multiply-adds per pixel, not (width + 2) x num_classes:
// a 1024x2048 map takes a fraction of a second.

const F = Math.fround;
const MAX_WEIGHTS = 4 * 2 ** 20; // as the service's MAX_REFINER_FLOATS

export class RefinerError extends Error {}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(x) {
  const r = Math.round(x); // halves go up
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function intIn(v, lo, hi) {
  return Number.isInteger(v) && v >= lo && v <= hi;
}

function decodeTensor(t, shape, name) {
  if (!t || typeof t.data !== "string" || !Array.isArray(t.shape) || t.shape.length !== shape.length ||
      t.shape.some((v, i) => v !== shape[i])) {
    throw new RefinerError(`tensor ${name}: expected shape [${shape}], got ${t && Array.isArray(t.shape) ? `[${t.shape}]` : "none"}`);
  }
  const n = shape.reduce((a, b) => a * b, 1);
  let bin;
  try {
    bin = atob(t.data);
  } catch {
    throw new RefinerError(`tensor ${name}: not base64`);
  }
  if (bin.length !== 4 * n) throw new RefinerError(`tensor ${name}: ${bin.length} bytes for ${n} float32 values`);
  const view = new DataView(new ArrayBuffer(4 * n));
  for (let i = 0; i < bin.length; i++) view.setUint8(i, bin.charCodeAt(i));
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = view.getFloat32(4 * i, true); // little-endian, whatever this machine is
    if (!Number.isFinite(out[i])) throw new RefinerError(`tensor ${name}: not finite`);
  }
  return out;
}

/** GET /v1/refiner's document -> a refiner ready to run; a RefinerError says what is wrong with it. */
export function parseRefiner(doc, numClasses) {
  if (!doc || typeof doc !== "object" || doc.format !== "encseg-refiner/1" || doc.dtype !== "float32-le") {
    throw new RefinerError("not an encseg-refiner/1 document of float32 weights");
  }
  const c = doc.config || {};
  const ok = intIn(c.num_classes, 1, 255) && intIn(c.width, 1, 1024) && intIn(c.scale, 1, 64) && intIn(c.grid_rows, 0, 4096) &&
    Array.isArray(c.dilations) && c.dilations.length >= 1 && c.dilations.length <= 16 && c.dilations.every((d) => intIn(d, 1, 64));
  if (!ok) throw new RefinerError("its config is out of range");
  if (c.num_classes !== numClasses) throw new RefinerError(`it is for ${c.num_classes} classes, the model has ${numClasses}`);
  const C = c.num_classes, W = c.width, tensors = doc.tensors || {};
  const names = ["label_gain", "fuse.weight", "fuse.bias"];
  const layers = [];
  let total = 1 + C * (W + C) + C;
  [1, ...c.dilations].forEach((dilation, i) => {
    const cin = i === 0 ? C + 2 : W;
    total += W * cin * 9 + W;
    if (total > MAX_WEIGHTS) throw new RefinerError("it has too many weights");
    layers.push({
      cin, cout: W, dilation,
      weight: decodeTensor(tensors[`context.${2 * i}.weight`], [W, cin, 3, 3], `context.${2 * i}.weight`),
      bias: decodeTensor(tensors[`context.${2 * i}.bias`], [W], `context.${2 * i}.bias`),
    });
    names.push(`context.${2 * i}.weight`, `context.${2 * i}.bias`);
  });
  const extra = Object.keys(tensors).filter((n) => !names.includes(n));
  if (extra.length) throw new RefinerError(`unexpected tensor ${extra[0].slice(0, 40)}`);
  return {
    config: { num_classes: C, width: W, scale: c.scale, dilations: [...c.dilations], grid_rows: c.grid_rows },
    layers,
    fuseWeight: decodeTensor(tensors["fuse.weight"], [C, W + C, 1, 1], "fuse.weight"),
    fuseBias: decodeTensor(tensors["fuse.bias"], [C], "fuse.bias"),
    labelGain: decodeTensor(tensors.label_gain, [], "label_gain")[0],
  };
}

/** Fetch the server's refiner once (same origin). */
export async function fetchRefiner(numClasses, url = "/v1/refiner") {
  const resp = await fetch(url);
  if (!resp.ok) throw new RefinerError(`GET ${url} answered HTTP ${resp.status}`);
  return parseRefiner(await resp.json(), numClasses);
}

/** The coarse grid's size, as ClientRefiner.forward picks it. */
export function gridSize(config, h, w) {
  if (config.grid_rows) return [config.grid_rows, Math.max(1, roundHalfEven((config.grid_rows * w) / h))];
  return [Math.max(1, Math.floor(h / config.scale)), Math.max(1, Math.floor(w / config.scale))];
}

/** torch.linspace(-1, 1, n) in float32 (its kernel: from the start for the first half, from the end after,
 * each value one fused multiply-add; n = 1 gives [-1]). */
export function linspace(n) {
  const out = new Float32Array(n);
  if (n === 1) {
    out[0] = -1;
    return out;
  }
  const step = F(2 / (n - 1)), half = n >> 1;
  for (let i = 0; i < n; i++) out[i] = i < half ? F(-1 + step * i) : F(1 - step * (n - 1 - i)); // exact in float64, one rounding
  return out;
}

/** F.adaptive_avg_pool2d of the one-hot map to [C, lh, lw]: bins [floor(i*H/out), ceil((i+1)*H/out)).
 * PyTorch's channels-last kernel (the one-hot is channels-last) divides the vectorised channels by the
 * bin's area and the remaining ones by its height, then its width. */
function pool(labels, h, w, C, lh, lw) {
  const out = new Float32Array(C * lh * lw);
  const cols = new Int32Array(w * C);
  const vec = C - (C % 8); // channels in whole 8-float vectors (AVX2; 16-float AVX-512 splits 19 classes the same)
  for (let i = 0; i < lh; i++) {
    const r0 = Math.floor((i * h) / lh), r1 = Math.ceil(((i + 1) * h) / lh);
    cols.fill(0);
    for (let y = r0; y < r1; y++) {
      const row = y * w;
      for (let x = 0; x < w; x++) {
        const l = labels[row + x];
        if (l < C) cols[x * C + l]++;
      }
    }
    for (let j = 0; j < lw; j++) {
      const c0 = Math.floor((j * w) / lw), c1 = Math.ceil(((j + 1) * w) / lw);
      const kh = r1 - r0, kw = c1 - c0;
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let x = c0; x < c1; x++) s += cols[x * C + c];
        out[(c * lh + i) * lw + j] = c < vec ? F(s / (kh * kw)) : F(F(s / kh) / kw);
      }
    }
  }
  return out;
}

/** A 3x3 convolution (zero padding = dilation) + ReLU on [cin, h, w] -> [cout, h, w], float32 out. */
function conv3x3Relu(input, h, w, layer) {
  const { cin, cout, dilation: d, weight, bias } = layer;
  const out = new Float32Array(cout * h * w);
  const acc = new Float64Array(h * w);
  for (let o = 0; o < cout; o++) {
    acc.fill(bias[o]);
    for (let i = 0; i < cin; i++) {
      const src = i * h * w;
      for (let ky = 0; ky < 3; ky++) {
        const dy = (ky - 1) * d;
        for (let kx = 0; kx < 3; kx++) {
          const dx = (kx - 1) * d;
          const k = weight[((o * cin + i) * 3 + ky) * 3 + kx];
          if (k === 0) continue;
          for (let y = Math.max(0, -dy); y < Math.min(h, h - dy); y++) {
            const a = y * w, b = src + (y + dy) * w + dx;
            for (let x = Math.max(0, -dx); x < Math.min(w, w - dx); x++) acc[a + x] += k * input[b + x];
          }
        }
      }
    }
    const base = o * h * w;
    for (let p = 0; p < h * w; p++) {
      const v = F(acc[p]);
      out[base + p] = v > 0 ? v : 0;
    }
  }
  return out;
}

/** Bilinear source indices and weights for `outSize` from `inSize` (align_corners=False), as PyTorch:
 * scale = in/out in float32, src = scale * (dst + 0.5) - 0.5 clamped at 0, i1 = i0 + 1 except at the edge. */
function bilinearTaps(inSize, outSize) {
  const scale = F(inSize / outSize);
  const i0 = new Int32Array(outSize), i1 = new Int32Array(outSize);
  const l0 = new Float32Array(outSize), l1 = new Float32Array(outSize);
  for (let d = 0; d < outSize; d++) {
    let src = F(scale * (d + 0.5) - 0.5);
    if (src < 0) src = 0;
    const i = Math.floor(src);
    i0[d] = i;
    i1[d] = i < inSize - 1 ? i + 1 : i;
    l1[d] = F(src - i);
    l0[d] = F(1 - l1[d]);
  }
  return { i0, i1, l0, l1 };
}

/** Refine one decrypted label map {width, height, data: Uint8Array} -> the refined map (same shape). */
export function refine(model, labels) {
  const { num_classes: C, width: Wd } = model.config;
  const h = labels.height, w = labels.width, lab = labels.data;
  if (!(h >= 1 && w >= 1 && lab.length === h * w)) throw new RefinerError("the label map's size does not match its data");
  const [lh, lw] = gridSize(model.config, h, w);
  const n = lh * lw;

  // the coarse grid: class fractions, then the rows' and columns' coordinates
  let x = new Float32Array((C + 2) * n);
  x.set(pool(lab, h, w, C, lh, lw));
  const ys = linspace(lh), xs = linspace(lw);
  for (let i = 0; i < lh; i++) {
    for (let j = 0; j < lw; j++) {
      x[C * n + i * lw + j] = ys[i];
      x[(C + 1) * n + i * lw + j] = xs[j];
    }
  }
  for (const layer of model.layers) x = conv3x3Relu(x, lh, lw, layer);

  // the fuse's context half, on the grid: g[(i * lw + j) * C + c] = bias[c] + sum_k fuse[c][k] * ctx[k][i][j]
  const g = new Float64Array(n * C);
  const fw = model.fuseWeight, K = Wd + C;
  for (let c = 0; c < C; c++) {
    for (let p = 0; p < n; p++) {
      let s = model.fuseBias[c];
      for (let k = 0; k < Wd; k++) s += fw[c * K + k] * x[k * n + p];
      g[p * C + c] = s;
    }
  }
  // its one-hot half and the label's own vote, per label value (255 and other unknown labels: nothing)
  const vote = new Float64Array(256 * C);
  for (let l = 0; l < Math.min(C, 256); l++) {
    for (let c = 0; c < C; c++) vote[l * C + c] = fw[c * K + Wd + l] + (c === l ? model.labelGain : 0);
  }

  // upsample to the label map, bilinear: along the width once per grid row (cached), then the height per pixel
  const tx = bilinearTaps(lw, w), ty = bilinearTaps(lh, h);
  const rowCache = new Map();
  const gridRow = (i) => {
    let r = rowCache.get(i);
    if (r) return r;
    r = new Float64Array(w * C);
    for (let X = 0; X < w; X++) {
      const a = (i * lw + tx.i0[X]) * C, b = (i * lw + tx.i1[X]) * C, w0 = tx.l0[X], w1 = tx.l1[X];
      for (let c = 0; c < C; c++) r[X * C + c] = w0 * g[a + c] + w1 * g[b + c];
    }
    if (rowCache.size > 3) rowCache.delete(rowCache.keys().next().value); // rows are visited in order
    rowCache.set(i, r);
    return r;
  };
  const out = new Uint8Array(h * w);
  for (let Y = 0; Y < h; Y++) {
    const r0 = gridRow(ty.i0[Y]), r1 = gridRow(ty.i1[Y]), a0 = ty.l0[Y], a1 = ty.l1[Y];
    for (let X = 0; X < w; X++) {
      const p = Y * w + X, v = lab[p] * C, q = X * C;
      let best = -Infinity, arg = 0;
      for (let c = 0; c < C; c++) {
        const s = a0 * r0[q + c] + a1 * r1[q + c] + vote[v + c];
        if (s > best) { // the first maximum, as torch.argmax
          best = s;
          arg = c;
        }
      }
      out[p] = arg;
    }
  }
  return { width: w, height: h, data: out };
}
