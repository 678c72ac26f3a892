"""The privacy-accuracy frontier: `encseg experiment --budget cpu-frontier`.

For every offered scheme, the model built to be invariant to that scheme's key-dependent choices
(`SETRConfig.invariances`) is trained with a fresh key per sample and scored with a fresh key per
validation image; the scheme's privacy figures come from an `encseg attack` record
(`results.json`). One table and one scatter chart (privacy against mIoU) go to docs/results.md, and
the default scheme is the most accurate one that meets the privacy goals.

Every run of a budget gets about the same wall time on one CPU thread: `steps_factor` scales the
steps by how much faster a model trains per step than plain SETR-PUP (measured without contention,
docs/training.md; the default scheme's model in training beside plain SETR, docs/benchmarks.md). With the
budget's `refine_steps`, each run (and plain SETR, the reference) also gets the client's refiner
(encseg.models.refine), scored in a column of its own: it runs after decryption on the client, so it
changes no privacy figure. All figures are on the procedural street benchmark, not Cityscapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

INVARIANT = {"decoder": "token", "position_embedding": False, "canonical": True}


@dataclass(frozen=True)
class Candidate:
    """One frontier run: a model family trained per-image on one scheme, scored on `schemes`."""

    name: str
    label: str  # what the table calls the model
    train: str  # "none" | "shared" | "per-image"
    scheme: str | None
    evals: tuple[tuple[str, str | None], ...]
    model: dict = field(default_factory=dict)  # SETRConfig overrides
    steps_factor: float = 1.0


def _pi(*schemes: str) -> tuple[tuple[str, str | None], ...]:
    return tuple(("per-image", s) for s in schemes)


ALL_SCHEMES = ("np-cs", "ps4-np-cs", "psb4-np-cs", "bs-np-cs", "bs-ps4-np-cs", "bs-psb4-np-cs", "bs-ps-np-cs",
               "bs-psb-np-cs", "bs-np-cs/32")  # fmt: skip  ("/32": 32-px cipher blocks over 16-px patches)


def split_scheme(s: str) -> tuple[str, int | None]:
    """"bs-np-cs/32" -> ("bs-np-cs", 32); "bs-np-cs" -> ("bs-np-cs", None) (the model's block size)."""
    name, _, block = s.partition("/")
    return name, int(block) if block else None

CANDIDATES = (
    Candidate("setr-plain", "SETR (plain)", "none", None, (("none", None),) + _pi(*ALL_SCHEMES[:-1])),
    Candidate("canon-pup-np-cs", "SETR-PUP + canonical blocks", "per-image", "np-cs", _pi("np-cs"),
              {"canonical": True}),
    Candidate("sorted4-pos-ps4-np-cs", "sorted 4x4 + canonical, positions", "per-image", "ps4-np-cs",
              _pi("ps4-np-cs", "psb4-np-cs"), INVARIANT | {"position_embedding": True, "pixel_group": 4}),
    Candidate("inv-bs-np-cs", "key-invariant token + canonical", "per-image", "bs-np-cs", _pi("bs-np-cs"),
              INVARIANT, 1.25),
    Candidate("sorted4-bs-ps4-np-cs", "key-invariant sorted 4x4 + canonical", "per-image", "bs-ps4-np-cs",
              _pi("bs-ps4-np-cs", "bs-psb4-np-cs"), INVARIANT | {"pixel_group": 4}),
    # probe WL (docs/training.md): colour head, decoder width 128, luma-first sort. 0.81: steps/s against plain
    # SETR-PUP training beside it, two runs at a time (session 8, after the slot decoder's rewrite; docs/benchmarks.md)
    Candidate("sorted16wl-bs-psb-np-cs", "key-invariant sorted (luma) + colour head + wide decoder + canonical",
              "per-image", "bs-psb-np-cs", _pi("bs-psb-np-cs", "bs-ps-np-cs"),
              INVARIANT | {"pixel_group": 16, "colour_head": 8, "channels": 128, "luma_sort": True}, 0.81),
    Candidate("inv32-bs-np-cs", "key-invariant token + canonical, 32-px blocks", "per-image", "bs-np-cs/32",
              _pi("bs-np-cs/32"), INVARIANT | {"cipher_block": 32, "block_position": True}, 1.25),
)  # fmt: skip


# -- privacy figures --------------------------------------------------------------------------------

def load_privacy(path: Path) -> dict[str, dict]:
    """Per scheme name, the attack record's figures (see encseg.attacks), or {} without a record."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    rows = data.get("schemes", data) if isinstance(data, dict) else data
    out = {}
    for r in rows if isinstance(rows, list) else rows.values():
        if isinstance(r, dict) and "scheme" in r:
            out[r["scheme"]] = r
    return out


def privacy_summary(rec: dict | None) -> dict:
    """The frontier's privacy columns from one scheme's attack record (None where the record lacks them)."""
    if not rec:
        return {}
    f = rec.get("frontier") or rec

    def pick(*names):
        for n in names:
            if f.get(n) is not None:
                return f[n]
        return None

    return {
        "direct_x_chance": pick("direct_x_chance", "jigsaw_direct_x_chance", "direct_ratio"),
        "neighbour": pick("neighbour", "jigsaw_neighbour", "neighbour_comparison"),
        "leakage": pick("max_leakage", "leakage_max", "semantic_leakage_max"),
        "position_probe": pick("position_probe_x_chance", "position_probe"),
        "goals": f.get("goals") or rec.get("goals"),
    }


def passes(p: dict) -> bool | None:
    goals = p.get("goals")
    if not isinstance(goals, dict) or not goals:
        return None
    return all(bool(v) for v in goals.values())


# -- the frontier table and chart -----------------------------------------------------------------

def plain_miou(records: list[dict]) -> float | None:
    """Plain SETR's mIoU on plain images (the frontier's reference), or None before that run exists."""
    return next((x["miou"] for r in records if r["name"] == "setr-plain" for x in r["results"] if x["test"] == "none"), None)


def refined_miou(record: dict | None, scheme: str | None) -> float | None:
    """A run's mIoU with the client's refiner after decryption (the experiment's refiner stage), where
    the run has one for `scheme` (None: plain images)."""
    r = (record or {}).get("refined")
    return r["miou"] if isinstance(r, dict) and r.get("scheme") == scheme and r.get("miou") is not None else None


def plain_refined(records: list[dict]) -> float | None:
    """Plain SETR on plain images with the same refiner stage: the reference for the refined column."""
    return next((refined_miou(r, None) for r in records if r["name"] == "setr-plain"), None)


def frontier_rows(records: list[dict], privacy: dict[str, dict]) -> list[dict]:
    """Per scheme: the best per-image-key model and mIoU (and with the client's refiner, where that run
    has one), the plain SETR's mIoU on it, privacy figures."""
    plain = plain_miou(records)
    rows = []
    for s in ALL_SCHEMES:
        best = None
        for r in records:
            if r["train"] != "per-image":
                continue
            for x in r["results"]:
                if x["test"] == "per-image" and x["scheme"] == s and (best is None or x["miou"] > best[1]):
                    best = (r, x["miou"])
        p = privacy_summary(privacy.get(s))
        refined = refined_miou(best[0], s) if best else None
        rows.append({
            "scheme": s, "model": best[0]["model"] if best else None, "run": best[0]["name"] if best else None,
            "miou": best[1] if best else None, "ratio": (best[1] / plain) if best and plain else None,
            "refined": refined, "refined_ratio": (refined / plain) if refined is not None and plain else None,
            "format": 2 if "psb" in s else 1, "passes": passes(p), **p,
        })  # fmt: skip
    return rows


def goals_met(r: dict) -> int:
    goals = r.get("goals")
    return sum(bool(v) for v in goals.values()) if isinstance(goals, dict) else -1


def choose_default(rows: list[dict]) -> dict | None:
    """The most accurate scheme that meets every privacy goal; when none does, the scheme that meets
    the most goals (the most accurate among those), marked `all_goals: False`. None without a record."""
    scored = [r for r in rows if r["miou"] is not None and r["passes"] is not None]
    if not scored:
        return None
    ok = [r for r in scored if r["passes"]]
    if ok:
        return max(ok, key=lambda r: r["miou"]) | {"all_goals": True}
    return max(scored, key=lambda r: (goals_met(r), r["miou"])) | {"all_goals": False}


def _f(v, fmt="{:.1f}") -> str:
    return "—" if v is None else fmt.format(v)


def frontier_table(rows: list[dict], plain: float | None, plain_ref: float | None = None) -> list[str]:
    lines = [
        "| scheme | format | best per-image-key model | mIoU | x plain | + client refiner | x plain | "
        "jigsaw direct (x chance) | neighbour | max semantic leakage | position probe (x chance) | privacy goals |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        verdict = {True: "**pass**", False: "fail", None: "—"}[r["passes"]]
        lines.append(
            f"| `{r['scheme']}` | v{r['format']} | {r['model'] or '—'} | {_f(r['miou'])} | {_f(r['ratio'], '{:.2f}')} | "
            f"{_f(r.get('refined'))} | {_f(r.get('refined_ratio'), '{:.2f}')} | "
            f"{_f(r.get('direct_x_chance'))} | {_f(r.get('neighbour'), '{:.1%}') if r.get('neighbour') is not None else '—'} | "
            f"{_f(r.get('leakage'), '{:.2f}')} | {_f(r.get('position_probe'), '{:.1f}')} | {verdict} |"
        )
    if plain is not None:
        lines += ["", f"Plain SETR-PUP on plain images (the reference): **{plain:.1f}** mIoU"
                  + (f"; with the same refiner stage on its labels: {plain_ref:.1f}." if plain_ref is not None else ".")]
    if any(r.get("refined") is not None for r in rows):
        lines += ["", "\"+ client refiner\": the same run's decrypted label maps through the client's refiner "
                  "(`encseg.models.refine`: a small CNN over the decrypted labels and pixel positions, trained on the "
                  "model's own decrypted training labels, run by the client after decryption; the server's input and "
                  "output, and so the privacy columns, are unchanged). \"x plain\" divides by plain SETR without a refiner."]
    return lines


def draw_frontier(rows: list[dict], plain: float | None, path: Path) -> None:
    """Scatter: semantic leakage (privacy, lower is better) across, per-image-key mIoU up; goal band shaded."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, left, right, top, bottom = 900, 560, 80, 40, 60, 70
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    try:
        font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    except TypeError:
        font = small = ImageFont.load_default()
    pw, ph = W - left - right, H - top - bottom
    pts = [r for r in rows if r["miou"] is not None]
    ymax = max([plain or 0] + [r["miou"] for r in pts] + [10]) * 1.15
    xs = [r["leakage"] for r in pts if r.get("leakage") is not None]
    xmax = max([1.0] + xs) * 1.05
    X = lambda v: left + pw * max(0.0, v) / xmax  # noqa: E731
    Y = lambda v: top + ph * (1 - v / ymax)  # noqa: E731
    dr.rectangle([X(0), top, X(0.10), Y(0)], fill=(225, 245, 225))  # leakage goal <= 0.10
    for t in range(0, int(ymax) + 1, 10):
        dr.line([(left, Y(t)), (left + pw, Y(t))], fill=(230, 230, 230))
        dr.text((left - 8, Y(t)), str(t), fill="black", font=small, anchor="rm")
    for i in range(0, 11, 2):
        v = xmax * i / 10
        dr.text((X(v), Y(0) + 8), f"{v:.2f}", fill="black", font=small, anchor="mt")
    dr.line([(left, top), (left, Y(0)), (left + pw, Y(0))], fill="black")
    dr.text((12, 14), "Privacy-accuracy frontier on the procedural street benchmark (not Cityscapes)", fill="black", font=font)
    dr.text((left + pw / 2, H - 24), "max semantic leakage of the attacks (0 = nothing a segmenter can use; goal <= 0.10, shaded)",
            fill="black", font=small, anchor="mm")  # fmt: skip
    dr.text((14, top - 22), "per-image-key mIoU", fill="black", font=small)
    if plain is not None:
        for x in range(left, left + pw, 12):
            dr.line([(x, Y(plain)), (min(x + 6, left + pw), Y(plain))], fill=(200, 40, 40), width=2)
        dr.text((left + pw - 4, Y(plain) - 4), f"plain SETR {plain:.1f}", fill=(200, 40, 40), font=small, anchor="rb")
        dr.line([(left, Y(0.8 * plain)), (left + pw, Y(0.8 * plain))], fill=(240, 170, 170))
        dr.text((left + pw * 0.55, Y(0.8 * plain) - 4), "0.8 x plain (goal)", fill=(200, 90, 90), font=small, anchor="mb")
    missing = [r["scheme"] for r in pts if r.get("leakage") is None]
    if missing:
        dr.text((left + 8, top + 4), "not shown (no attack figures): " + ", ".join(missing), fill=(90, 90, 90), font=small)
    placed: list[tuple[float, float, float]] = []  # (x0, x1, y) of every label drawn

    def lift(x: float, y: float, side: str, text: str) -> float:
        w = dr.textlength(text, font=small)
        x0, x1 = (x - 9 - w, x - 9) if side == "left" else (x + 9, x + 9 + w)
        ly = y
        while any(abs(ly - py) < 14 and x0 < px1 and px0 < x1 for px0, px1, py in placed):
            ly -= 15  # lift a label that would overlap one already drawn
        placed.append((x0, x1, ly))
        return ly

    for r in sorted(pts, key=lambda r: (r.get("leakage") is None, r.get("leakage") or 0)):
        if r.get("leakage") is None:
            continue
        x, y = X(r["leakage"]), Y(r["miou"])
        colour = {True: (40, 150, 60), False: (200, 60, 40), None: (120, 120, 120)}[r["passes"]]
        if r.get("refined") is not None:  # the same run with the client's refiner: a ring above its dot
            yr = Y(r["refined"])
            dr.line([(x, y), (x, yr)], fill=colour, width=2)
            dr.ellipse([x - 6, yr - 6, x + 6, yr + 6], outline=colour, width=3)
            side = "left" if x - left > 140 else "right"  # ring labels left of the line where there is room
            text = f"+ refiner ({r['refined']:.1f})"
            lr = lift(x, yr, side, text)
            dr.text((x - 9, lr) if side == "left" else (x + 9, lr), text, fill=colour, font=small,
                    anchor="rm" if side == "left" else "lm")  # fmt: skip
        ly = lift(x, y, "right", f"{r['scheme']} ({r['miou']:.1f})")
        dr.ellipse([x - 6, y - 6, x + 6, y + 6], fill=colour, outline="black")
        if ly != y:
            dr.line([(x + 6, y), (x + 9, ly)], fill=(120, 120, 120))
        dr.text((x + 9, ly), f"{r['scheme']} ({r['miou']:.1f})", fill="black", font=small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_frontier_report(budget, records: list[dict], data_root: Path, path: Path, chart: Path, privacy_path: Path,
                          wall: str, demo_line: list[str], command: str | None = None) -> dict | None:  # fmt: skip
    """docs/results.md for the frontier budget; returns the chosen default row (or None)."""
    from encseg.engine.experiment import augmentation_text, streets_meta

    privacy = load_privacy(privacy_path)
    plain = plain_miou(records)
    rows = frontier_rows(records, privacy)
    default = choose_default(rows)
    meta = streets_meta(data_root)
    cfg = records[0]["config"]
    d, o = cfg["data"], cfg["optim"]
    L = [
        "# Results: the privacy-accuracy frontier of per-image keys",
        "",
        f"**Benchmark: the procedural street scenes of `encseg data streets` (Cityscapes classes and layout), not "
        f"Cityscapes.** {budget.n_train} training and {budget.n_val} validation scenes of {budget.size[0]}x{budget.size[1]} "
        f"pixels, generator version {meta.get('generator_version', '?')}, seed {budget.data_seed} (the standard "
        "validation split: never used to choose anything; choices were made on a second validation set of seed 1, "
        "[training.md](training.md#probes-per-image-keys-without-the-accuracy-loss)). mIoU (%) with the Cityscapes "
        "protocol. Every encrypted training sample and every validation image gets its own fresh key; predictions "
        "are decrypted with that key before scoring.",
        "",
        "Each scheme is scored with the model built to be invariant to it by construction "
        "(`SETRConfig.invariances`, proved by tests/test_invariance.py): canonical blocks undo NP and CS without a key, "
        "no absolute position embedding plus token-wise decoding commutes with block scrambling, and the sorted patch "
        "embedding with sorted-slot decoding commutes with pixel shuffling (v1 one permutation per image, v2 one per "
        f"block). Privacy figures: the attack record `{privacy_path}` (`encseg attack`, held-out 256x512 scenes; "
        "[security.md](security.md)).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    L += frontier_table(rows, plain, plain_refined(records))
    L += ["", f"![privacy-accuracy frontier]({chart.name})", ""]
    if default is not None and default["all_goals"]:
        L += [f"**Default scheme: `{default['scheme']}`**, the most accurate scheme that meets every privacy goal: "
              f"{default['miou']:.1f} mIoU with per-image keys, {default['ratio']:.2f}x plain SETR "
              + (f"(server alone); {default['refined']:.1f} mIoU, {default['refined_ratio']:.2f}x, with the client's "
                 "refiner after decryption " if default.get("refined") is not None else "")
              + "(goal >= 0.8x; stretch: within 1.0 mIoU)."]  # fmt: skip
    elif default is not None:
        failed = [k for k, v in (default.get("goals") or {}).items() if not v]
        L += [f"**No scheme meets every privacy goal.** The default is `{default['scheme']}`, the scheme that meets the "
              f"most of them (fails: {', '.join(failed)}), and the most accurate of those: {default['miou']:.1f} mIoU "
              f"with per-image keys, {default['ratio']:.2f}x plain SETR (goal >= 0.8x: not met). "
              "[security.md](security.md) says what still falls."]  # fmt: skip
    else:
        L += [f"No attack record at `{privacy_path}`: privacy columns are empty and no default is chosen."]
    plain_on = {x["scheme"]: x["miou"] for r in records if r["name"] == "setr-plain" for x in r["results"] if x["test"] == "per-image"}
    if plain_on:
        L += ["", "The plain SETR on per-image-key ciphertexts (no key-aware training): "
              + ", ".join(f"`{k}` {v:.1f}" for k, v in plain_on.items()) + "."]
    command = command or f"encseg experiment --budget {budget.name} --privacy {privacy_path}"
    L += ["", "## How these numbers were made", "", "```", command, "```", "",
          f"Budget `{budget.name}`: each run trains from scratch on one CPU thread, or one GPU process where the machine "
          f"line below names a GPU, with the same steps ({augmentation_text(d)}, batch "
          f"{cfg['run']['batch_size']}, {o['name']} lr {o['lr']}, poly, {o['warmup_steps']} warm-up steps, "
          f"{o.get('class_weights', 'none')} class weights), vit-tiny-6 encoder with patch 16, decoder width "
          f"{cfg['model']['channels']}; plain SETR-PUP trains {budget.steps} steps and every other run the steps that take "
          "about the same wall time (faster models get more: factor in the run table).", "", wall, "",
          "| run | model | trained on | steps | machine | train s | results (per-image keys unless plain) | + client refiner |",
          "|---|---|---|---:|---|---:|---|---|"]
    for r in records:
        res = "; ".join(f"{x['scheme'] or 'plain'}: {x['miou']:.1f}" for x in r["results"])
        ref = r.get("refined")
        ref_text = (f"{ref['scheme'] or 'plain'}: {ref['miou_server']:.1f} -> {ref['miou']:.1f} ({ref['steps']} steps)"
                    if isinstance(ref, dict) else "—")
        L.append(f"| {r['name']} | {r['model']} | {r['scheme'] or 'plain'} ({r['train']}) | {r['steps']} | "
                 f"{r.get('machine') or '—'} | {r['train_seconds']:.0f} | {res} | {ref_text} |")
    L += demo_line
    L += ["", "The paper-style table of the previous experiment (`--budget cpu-small`: SETR plain, shared-key and "
          "per-image-key, without canonical blocks) is kept in [results-cpu-small.md](results-cpu-small.md).", ""]
    path.write_text("\n".join(L))
    draw_frontier(rows, plain, chart)
    keep = ("name", "model", "train", "scheme", "steps", "train_seconds", "results", "refined", "machine", "config")
    (path.parent / "frontier.json").write_text(json.dumps({
        "plain": plain, "rows": rows, "default": default, "privacy": str(privacy_path), "wall": wall,
        "records": [{k: r.get(k) for k in keep} for r in records],  # what `--rescore` rebuilds this report from
    }, indent=2) + "\n")  # fmt: skip
    return default


def load_rescore(path: Path) -> tuple[list[dict], str]:
    """(run records, wall-time line) of an earlier frontier report's frontier.json, for rebuilding the
    report against another attack record without training anything."""
    from encseg.errors import UserError

    try:
        data = json.loads(Path(path).read_text())
        records, wall = data["records"], data["wall"]
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) and "results" in r for r in records):
            raise ValueError("no run records")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a frontier.json with run records ({type(exc).__name__}: {exc})"[:300]) from None
    return records, str(wall)
