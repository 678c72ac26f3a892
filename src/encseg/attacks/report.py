"""Write the attack suite's results: report.md, results.json, one PNG grid per scheme (plain,
encrypted, each attack's reconstruction of the first victim) and the learned inverse's learning
curves (inverse_curves.png). Nothing here measures anything (see encseg.attacks.suite)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from encseg.cipher import DEFAULT_SCHEME

ATTACK_LABELS = {
    "ciphertext": "ciphertext as sent",
    "jigsaw": "jigsaw solver",
    "ps-leak+jigsaw": "PS leak + jigsaw",
    "probe-placement": "model probe placement",
    "model-jigsaw": "jigsaw on model features",
    "inverse": "learned inverse, per-image keys",
    "inverse-shared": "learned inverse, shared key",
    "known-pair": "known pairs, shared key",
}
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0)]


def save_grid(path: Path, images: list[np.ndarray], labels: list[str], scale: float = 1.0) -> None:
    """Stack images vertically (resized by `scale`), each under a one-line label; saved as a
    256-colour PNG (small enough to keep in the repository)."""
    h, w = images[0].shape[:2]
    h, w = max(int(h * scale), 1), max(int(w * scale), 1)
    bar = 14
    canvas = Image.new("RGB", (w, len(images) * (h + bar)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (img, label) in enumerate(zip(images, labels)):
        y = k * (h + bar)
        draw.text((3, y + 1), label, fill="black")
        im = Image.fromarray(img)
        canvas.paste(im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR), (0, y + bar))
    canvas.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def draw_curves(path: Path, summaries: list[dict], baseline: float | None) -> None:
    """Held-out luminance SSIM of each learned inverse against seconds of training, one panel per
    setting (per-image keys, shared key), with the content-free baseline as a dashed line."""
    W, H, pad = 960, 420, 56
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    curves = {m: [(s["scheme"], s["inverse"][m]["curve"]) for s in summaries if m in s.get("inverse", {})]
              for m in ("per-image", "shared")}
    vals = [r["val_ssim_lum"] for m in curves.values() for _, c in m for r in c if r.get("val_ssim_lum") is not None]
    if baseline is not None:
        vals.append(baseline)
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    lo, hi = lo - 0.02, hi + 0.02
    t_max = max([r["seconds"] for m in curves.values() for _, c in m for r in c] or [1.0]) or 1.0
    pw = (W - 3 * pad) // 2
    for k, (mode, items) in enumerate(curves.items()):
        x0, y0, y1 = pad + k * (pw + pad), pad, H - pad
        dr.rectangle([x0, y0, x0 + pw, y1], outline=(0, 0, 0))
        dr.text((x0, 12), f"learned inverse, {'per-image keys' if mode == 'per-image' else 'one shared key'}: "
                          "held-out SSIM (luminance)", fill="black")
        dr.text((x0 + pw // 2 - 40, H - pad + 22), "training seconds", fill="black")
        for t in np.linspace(0, t_max, 5):
            x = x0 + pw * t / t_max
            dr.text((x - 8, y1 + 4), f"{t:.0f}", fill="black")
        for v in np.linspace(lo, hi, 5):
            y = y1 - (y1 - y0) * (v - lo) / (hi - lo)
            dr.text((x0 - 40, y - 6), f"{v:.2f}", fill="black")

        def xy(t, v, x0=x0, y0=y0, y1=y1):
            return x0 + pw * t / t_max, y1 - (y1 - y0) * (v - lo) / (hi - lo)

        if baseline is not None:
            for t in np.linspace(0, t_max, 40)[::2]:
                dr.line([xy(t, baseline), xy(min(t + t_max / 40, t_max), baseline)], fill=(120, 120, 120), width=1)
        for j, (name, c) in enumerate(items):
            colour = _PALETTE[j % len(_PALETTE)]
            pts = [xy(r["seconds"], r["val_ssim_lum"]) for r in c if r.get("val_ssim_lum") is not None]
            if len(pts) > 1:
                dr.line(pts, fill=colour, width=2)
            dr.text((x0 + 6, y0 + 6 + 12 * j), name, fill=colour)
        if baseline is not None:
            dr.text((x0 + pw - 150, y0 + 6), "--- content-free mean image", fill=(120, 120, 120))
    img.save(path, optimize=True)


def _finite(x):
    """JSON-safe copy: numpy scalars to Python, inf/nan to None."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _mark(v) -> str:
    return "n/a" if v is None else ("pass" if v else "**fail**")


def write_report(out: Path, summaries: list[dict], meta: dict) -> Path:
    """report.md and results.json in `out`."""
    (out / "results.json").write_text(json.dumps(_finite({"meta": meta, "schemes": summaries}), indent=1) + "\n")
    inv = meta["inverse"]
    seg = meta.get("segmenter")
    L = [
        "# encseg attack report", "",
        f"Command: `{meta['command']}`", "",
        f"Victims: {meta['images']} held-out scenes of the procedural street benchmark (`encseg.data.streets`, split "
        f"`test`, seed {meta['seed']}), {meta['size'][0]}x{meta['size'][1]}, each under its own fresh key. "
        "Not Cityscapes: numbers describe this benchmark only. The attacker's own scenes come from another seed "
        f"({meta['attacker_seed']}), never a victim's.",
        f"Learned inverse: U-Net width {inv['width']}, depth {inv['depth']}, batch {inv['batch']}, "
        f"{inv['minutes']:g} min per model (shared key: {meta['shared_inverse_minutes']:g} min), pairs made on the fly "
        f"(pool of {inv['pool']} scenes, a new one every {inv['render_every']} step(s)), canonicalised input "
        f"{'on' if inv['canonical'] else 'off'} for NP/CS schemes.",
        f"Semantic leakage: plain segmenter `{seg}` (mIoU {_f(meta.get('miou_plain'))} on the plain victims, "
        f"{_f(meta.get('miou_baseline'))} on the content-free mean image)." if seg else
        "Semantic leakage: not measured (no `--segmenter`).",
        f"Machine: {meta['machine']}; torch threads {meta['threads']}; wall time {meta['seconds']:.0f} s "
        f"({meta['seconds'] / 60:.1f} min).", "",
        "## Privacy goals per scheme", "",
        "Direct / neighbour: the best jigsaw solver (MGC compatibility, after the PS-leak step where it applies, "
        "and with the model's features as compatibility); leakage: the largest over every per-image-key attack "
        "(named), the position probe's reassembly included; probe: exact-cell accuracy of the position probe on the "
        "model's features, in multiples of chance (its controls are in the probe section below).", "",
        "| scheme | direct (x chance) | neighbour | max leakage (attack) | probe (x chance) | shared key broken | "
        "direct <= 2x | neighbour <= 0.10 | leakage <= 0.10 | goals |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        f, g = s["frontier"], s["goals"]
        tag = " (default)" if s["scheme"] == DEFAULT_SCHEME else " (no encryption)" if s["scheme"] == "plain" else ""
        dc = f"{_f(f['direct_x_chance'], 1)}x" if s["scrambles_blocks"] else "not scrambled"
        nc = _f(f["neighbour"]) if s["scrambles_blocks"] else "not scrambled"
        leak = f"{_f(f['max_leakage'])} ({f['max_leakage_attack']})" if f["max_leakage"] is not None else "n/a"
        probe = f"{_f(f['position_probe_x_chance'], 1)}x" if f["position_probe_x_chance"] is not None else "n/a"
        ok = all(bool(v) for v in g.values())
        L.append(f"| {s['scheme']}{tag} | {dc} | {nc} | {leak} | {probe} | {'yes' if f['shared_key_broken'] else 'no'} | "
                 f"{_mark(g['direct<=2x_chance'])} | {_mark(g['neighbour<=0.10'])} | {_mark(g['leakage<=0.10'])} | "
                 f"{'**all met**' if ok else 'not met'} |")
    L += ["", "## Every attack", "",
          "Leakage = (mIoU(reconstructions) - mIoU(mean image)) / (mIoU(plain) - mIoU(mean image)); SSIM-Y: "
          "luminance SSIM; SSIM: RGB mean; direct / neighbour: block placement (1 = blocks not scrambled).", "",
          "| scheme | attack | setting | leakage | mIoU | SSIM-Y | SSIM | PSNR dB | direct | neighbour |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for name, a in s["attacks"].items():
            L.append(f"| {s['scheme']} | {ATTACK_LABELS.get(name, name)} | {a['setting']} | {_f(a.get('leakage'))} | "
                     f"{_f(a.get('miou'))} | {_f(a['ssim_lum'])} | {_f(a['ssim'])} | {_f(a['psnr'], 1)} | "
                     f"{_f(a.get('direct'))} | {_f(a.get('neighbour'))} |")
    ps_rows = [s for s in summaries if s.get("ps_leak")]
    if ps_rows:
        L += ["", "## The pixel-shuffle leak", "",
              "Adjacencies: fraction of the plain layout's neighbouring pixel positions that the estimate from one "
              "ciphertext puts side by side (blind to the 8 symmetries of the square); exact: positions at their "
              "cell under the best symmetry. Per-block schemes (psb): averaged over blocks.", "",
              "| scheme | adjacencies recovered | exact | seconds per image | jigsaw direct after | neighbour after |",
              "|---|---|---|---|---|---|"]
        for s in ps_rows:
            a = s["attacks"].get("ps-leak+jigsaw", {})
            L.append(f"| {s['scheme']} | {_f(s['ps_leak']['adjacency'])} | {_f(s['ps_leak']['exact'])} | "
                     f"{_f(s['ps_leak']['seconds'], 1)} | {_f(a.get('direct'))} | {_f(a.get('neighbour'))} |")
    pr_rows = [s for s in summaries if s.get("probe")]
    if pr_rows:
        L += ["", "## The model as attacker", "",
              "A linear probe on the frozen model's last-layer token features (averaged per cipher block), trained on "
              f"{meta['probe_scenes']} attacker scenes under fresh keys, predicts each block's original row and column; "
              "controls: the same probe on ciphertext-only block statistics (canonical 4x4 cell means and quantiles), "
              "and on the model's own output per block (its class probabilities, which the server sees by design).", "",
              "| scheme | model | row acc (chance) | col acc (chance) | exact (chance) | x chance | "
              "control: ciphertext stats x chance | control: model's labels x chance |",
              "|---|---|---|---|---|---|---|---|"]
        for s in pr_rows:
            a, c = s["probe"]["accuracy"], s["probe"]
            L.append(f"| {s['scheme']} | `{c['model']}` | {_f(a['row'])} ({_f(a['chance_row'])}) | "
                     f"{_f(a['col'])} ({_f(a['chance_col'])}) | {_f(a['exact'], 4)} ({_f(a['chance_exact'], 4)}) | "
                     f"{_f(c['exact_x_chance'], 1)} | {_f(c['control_exact_x_chance'], 1)} | "
                     f"{_f(c.get('label_exact_x_chance'), 1)} |")
    L += ["", "## Learned inverse: budget used", "",
          "![learning curves](inverse_curves.png)", "",
          "| scheme | setting | steps | pairs | distinct scenes | seconds | first held-out SSIM-Y | last held-out SSIM-Y |",
          "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for mode, r in s.get("inverse", {}).items():
            c = [x.get("val_ssim_lum") for x in r["curve"] if x.get("val_ssim_lum") is not None]
            L.append(f"| {s['scheme']} | {mode} | {r['steps']} | {r['pairs']} | {r['scenes']} | {r['seconds']:.0f} | "
                     f"{_f(c[0] if c else None)} | {_f(c[-1] if c else None)} |")
    L += ["", "## Statistics that survive every key", "",
          "| scheme | key space log2 (capped) | block var corr | block abs-mean corr | block mean corr | colour hist. distance |",
          "|---|---|---|---|---|---|"]
    for s in summaries:
        st = s["stats"]
        L.append(f"| {s['scheme']} | {s['keyspace_bits']:.0f} ({s['keyspace_bits_capped']:.0f}) | {_f(st['block_var_corr'])} | "
                 f"{_f(st['block_abs_mean_corr'])} | {_f(st['block_mean_corr'])} | {_f(st['histogram_distance'])} |")
    L += ["", "## How to read this", "",
          "- Every reconstruction that is right only up to a global colour state (NP/CS) or, after the PS leak on "
          "full PS, a global flip, is scored as the best of those few variants against the plain image (an attacker "
          "can look at all of them): an upper bound on what it recovers.",
          "- *shared key broken*: a known-pair or learned-inverse attack under one key reaches PSNR >= 30 dB or "
          "leakage >= 0.5 on the victims. It should be broken: that is why encseg draws a fresh key per image.",
          "- The `plain` row is the calibration: no key, every attack sees the image.",
          "", "## Grids", ""]
    L += [f"- `{s['scheme'].replace('/', '_')}.png`" for s in summaries]
    L.append("")
    path = out / "report.md"
    path.write_text("\n".join(L))
    return path
