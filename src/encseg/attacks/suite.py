"""Plan and run the attack suite: every attack on every scheme, on held-out street scenes, each victim
under its own fresh key (except the shared-key attacks, whose point is one key). The report
(Markdown, JSON, PNGs) is written by `encseg.attacks.report`.

Attacks on a scheme (Kerckhoffs: the attacker knows the scheme and never the key):
- ciphertext: the encrypted image itself, as the server sees it (the null attack);
- jigsaw: the block solver (MGC, 12 NP x CS states per block) on the ciphertext;
- ps-leak+jigsaw: for pixel-shuffle schemes, the PS permutation estimated from the ciphertext's own
  statistics and undone, then the block solver (`encseg.attacks.psleak`);
- probe-placement / model-jigsaw: the model as attacker (`encseg.attacks.probe`), given a model;
- inverse (per-image keys): the learned inverse at the attacker's budget (`encseg.attacks.inverse`);
- shared key: one known pair set (`encseg.attacks.known_pair`) and the learned inverse under one key.
Each reconstruction is scored by SSIM (RGB mean and luminance), PSNR and, given a plain segmenter,
semantic leakage (`encseg.attacks.leakage`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from encseg.attacks import jigsaw, metrics, probe, psleak, stats
from encseg.attacks.inverse import InverseConfig, invert, train_inverse
from encseg.attacks.known_pair import recover_key
from encseg.cipher import Key, Scheme, encrypt, make_plan

ATTACKER_SEED_OFFSET = 1_000_003  # the attacker's scenes: another seed than the benchmark's, never a victim
NC_GOAL, DC_GOAL_X_CHANCE, LEAKAGE_GOAL = 0.10, 2.0, 0.10
SHARED_PSNR_BROKEN, SHARED_LEAKAGE_BROKEN = 30.0, 0.5
PER_IMAGE_ATTACKS = ("ciphertext", "jigsaw", "ps-leak+jigsaw", "probe-placement", "model-jigsaw", "inverse")
SHARED_ATTACKS = ("known-pair", "inverse-shared")
PLACEMENT_ATTACKS = ("jigsaw", "ps-leak+jigsaw", "probe-placement", "model-jigsaw")
# The jigsaw goals (direct <= 2x chance, neighbour <= 10%, after the PS-leak step where it applies) are
# judged on the jigsaw solvers, whatever their compatibility measure; the position probe's placement is
# reported beside them in multiples of chance (with its controls) and judged, like every attack, by its
# semantic leakage.
JIGSAW_ATTACKS = ("jigsaw", "ps-leak+jigsaw", "model-jigsaw")
_FLIPS = (lambda a: a, np.fliplr, np.flipud, lambda a: np.flipud(np.fliplr(a)))


@dataclass
class SuiteConfig:
    images: int = 20
    size: tuple[int, int] = (256, 512)
    seed: int = 0
    inverse: InverseConfig = field(default_factory=InverseConfig)
    shared_inverse_minutes: float | None = None  # None: the same budget as the per-image inverse
    val_images: int = 4  # attacker's held-out scenes for the learning curves
    baseline_scenes: int = 32  # attacker's scenes averaged into the content-free baseline
    known_pairs: int = 4  # known (plain, encrypted) pairs under the shared key
    probe_scenes: int = 48  # attacker's scenes the position probe and the compatibility learn from
    probe_steps: int = 300
    compat_steps: int = 200
    models: dict[str, str] = field(default_factory=dict)  # scheme label -> checkpoint path
    segmenter: str | None = None  # plain SETR checkpoint for the semantic leakage
    grid_scale: float = 0.5  # size of the PNG grids relative to the scenes


@dataclass
class SchemeSpec:
    """A scheme as named on the command line: `bs-np-cs`, or `bs-np-cs/32` for 32-px cipher blocks."""

    label: str
    scheme: Scheme

    @classmethod
    def parse(cls, text: str, block_size: int) -> "SchemeSpec":
        name, _, block = text.strip().partition("/")
        scheme = Scheme.parse(name, block_size=int(block) if block else block_size)
        return cls(text.strip() if block else scheme.name, scheme)


class Scenes:
    """Benchmark scenes: the victims (split `test` of the benchmark seed, with labels) and the
    attacker's own (another seed; the first few kept in memory, the rest rendered when asked)."""

    def __init__(self, seed: int, size: tuple[int, int], keep: int = 64) -> None:
        from encseg.data.streets import render_scene, scene_seed

        self._render, self._seed = render_scene, scene_seed
        self.seed, self.size, self.keep = seed, size, keep
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def victim(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._render(self._seed(self.seed, "test", i), self.size)

    def attacker(self, i: int, split: str = "train") -> np.ndarray:
        k = (split, i)
        if k in self._cache:
            return self._cache[k]
        img = self._render(self._seed(self.seed + ATTACKER_SEED_OFFSET, split, i), self.size)[0]
        if i < self.keep:
            self._cache[k] = img
        return img


@dataclass
class Context:
    """What every scheme's evaluation shares: victims, the attacker's scenes, the scorers."""

    cfg: SuiteConfig
    scenes: Scenes
    victims: list[np.ndarray]
    labels: list[np.ndarray]
    baseline: np.ndarray
    segmenter: object | None
    seg_labels: list[np.ndarray]
    miou_plain: float | None
    miou_baseline: float | None
    tick: Callable[[str, float], None]


def make_context(cfg: SuiteConfig, tick: Callable[[str, float], None] = lambda s, f: None) -> Context:
    """Render the victims and the attacker's baseline; score the segmenter on plain and baseline."""
    scenes = Scenes(cfg.seed, cfg.size)
    victims, labels = zip(*(scenes.victim(i) for i in range(cfg.images)))
    baseline = np.mean([scenes.attacker(i) for i in range(cfg.baseline_scenes)], axis=0).round().astype(np.uint8)
    seg = seg_labels = m_plain = m_base = None
    if cfg.segmenter:
        from encseg.attacks.leakage import Segmenter, miou

        seg = Segmenter(cfg.segmenter)
        seg_labels = [seg.labels(lab) for lab in labels]
        m_plain = miou(seg, list(victims), seg_labels)
        m_base = miou(seg, [baseline] * len(victims), seg_labels)
    return Context(cfg, scenes, list(victims), list(labels), baseline, seg, seg_labels, m_plain, m_base, tick)


# -- the block-placement attacks ---------------------------------------------------------------------------

def _steps(scheme: Scheme) -> set[str]:
    return {s.name for s in scheme.steps}


def _colour(scheme: Scheme) -> bool:
    return bool(_steps(scheme) & {"negative-positive", "channel-shuffle"})


def _global_colour(img: np.ndarray, g: int) -> np.ndarray:
    return jigsaw.apply_transform(img[None], g)[0] if g else img


def _best_variant(recon: np.ndarray, plain: np.ndarray, src: np.ndarray | None, colour: bool, flips: bool,
                  block_flips: int = 0):
    """The attacker's answer is right up to one global colour state (NP/CS) and, after the PS leak
    on full PS, one flip: of the whole image when the block solver placed the blocks (`flips`), of
    every block in place when a probe did (`block_flips` = the block size). Of those few pictures
    keep the one closest to the plain image (an attacker can look at them all, so this is an upper
    bound). Returns (image, direct, neighbour)."""
    best = None
    if block_flips:
        variants = [(_transpose_blocks(recon, block_flips, s), _FLIPS[0]) for s in range(4)]
    else:
        variants = [(np.ascontiguousarray(f(recon)), f) for f in (_FLIPS if flips else _FLIPS[:1])]
    for base, f in variants:
        for g in range(12) if colour else (0,):
            v = _global_colour(base, g)
            err = np.abs(v.astype(np.int16) - plain).mean()
            if best is None or err < best[0]:
                best = (err, v, f)
    _, img, f = best
    if src is None:
        return img, 1.0, 1.0
    s = f(src)
    return img, metrics.direct_comparison(s), metrics.neighbour_comparison(s)


def _solve(img: np.ndarray, p: int, scrambled: bool, colour: bool):
    """(solution, features) of the solver that fits: placement (BS) or colour states only."""
    R, C = img.shape[0] // p, img.shape[1] // p
    blocks = jigsaw.split_blocks(img, p)
    if not scrambled and not colour:
        return None, None
    feats = jigsaw.compute_features(blocks, colour)
    sol = jigsaw.solve(blocks, (R, C), extended=colour, fixed_positions=not scrambled, features=feats)
    return sol, feats


def _transpose_blocks(img: np.ndarray, p: int, sym: int) -> np.ndarray:
    """Apply one of the 8 symmetries of the square (psleak.symmetries' order) to every block."""
    H, W = img.shape[:2]
    b = jigsaw.split_blocks(img, p)
    if sym >= 4:
        b = b.swapaxes(1, 2)
    if sym % 4 in (1, 3):
        b = b[:, :, ::-1]
    if sym % 4 in (2, 3):
        b = b[:, ::-1]
    return jigsaw.join_blocks(np.ascontiguousarray(b), (H // p, W // p))


def jigsaw_attack(enc: np.ndarray, scheme: Scheme, plain: np.ndarray, block_src: np.ndarray | None):
    """The block solver on the ciphertext. Returns (reconstruction, direct, neighbour, seconds)."""
    p = scheme.block_size
    scrambled = "block-scramble" in _steps(scheme)
    t0 = time.perf_counter()
    sol, _ = _solve(enc, p, scrambled, _colour(scheme))
    seconds = time.perf_counter() - t0
    if sol is None:
        return enc.copy(), 1.0, 1.0, seconds
    src = block_src[sol.placement] if block_src is not None else sol.placement
    recon, dc, nc = _best_variant(sol.render(jigsaw.split_blocks(enc, p)), plain, src if scrambled else None,
                                  _colour(scheme), False)
    return recon, dc, nc, seconds


def ps_leak_attack(enc: np.ndarray, scheme: Scheme, plain: np.ndarray, plan) -> dict:
    """Estimate the PS permutation(s), undo them, run the solver. With full PS the layout is right up
    to a symmetry of the block: with BS, every block transposed or not is solved and the answer whose
    adjacencies are most often mutual best buddies kept (a choice from the ciphertext alone; flips of
    every block are flips of the whole image, left to `_best_variant`); without BS, the 8 symmetries
    are tried on the fixed grid the same way."""
    t = psleak.target_of(scheme)
    p = scheme.block_size
    scrambled = "block-scramble" in _steps(scheme)
    colour = _colour(scheme)
    t0 = time.perf_counter()
    est = psleak.estimate(enc, t)
    truth = psleak.true_permutations(plan, t)
    out = {"adjacency": psleak.adjacency_recovered(est, truth, t.q), "exact": psleak.exact_recovered(est, truth, t.q)}
    base = psleak.unshuffle(enc, t, est)
    full = t.q == p
    cands = [base] if not full else [_transpose_blocks(base, p, s) for s in ((0, 4) if scrambled else range(8))]
    best = None
    for cand in cands:
        sol, feats = _solve(cand, p, scrambled, colour)
        cost = -jigsaw.buddy_agreement(sol, feats) if sol is not None and len(cands) > 1 else 0.0
        if best is None or cost < best[0]:
            best = (cost, cand, sol)
    _, base, sol = best
    src = None
    if sol is not None:
        recon = sol.render(jigsaw.split_blocks(base, p))
        if scrambled:
            src = plan.block_src[sol.placement]
    else:
        recon = base
    recon, dc, nc = _best_variant(recon, plain, src, colour, full and scrambled)
    out.update(recon=recon, direct=dc, neighbour=nc, base=base, seconds=time.perf_counter() - t0)
    return out


def _colour_fix(img: np.ndarray, p: int, colour: bool) -> np.ndarray:
    """Solve the per-block colour states of an image whose blocks are in place."""
    if not colour:
        return img
    sol, _ = _solve(img, p, False, True)
    return sol.render(jigsaw.split_blocks(img, p))


# -- one scheme --------------------------------------------------------------------------------------------

def _score(recon: np.ndarray, plain: np.ndarray) -> dict:
    return {"ssim": metrics.ssim(recon, plain), "ssim_lum": metrics.ssim_luminance(recon, plain),
            "psnr": metrics.psnr(recon, plain)}


@dataclass
class SchemeRun:
    """Everything measured on one scheme (summarised by `summarise`)."""

    label: str
    scheme: Scheme
    rows: list[dict] = field(default_factory=list)  # per victim
    recons: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per attack, per victim
    inverse: dict[str, dict] = field(default_factory=dict)  # per mode: steps, pairs, curve, ...
    probe: dict | None = None
    model: str | None = None
    first_enc: np.ndarray | None = None
    seconds: float = 0.0


def _model_attack(run: SchemeRun, ctx: Context, path: str, encs: list[np.ndarray], plans: list, bases: list[np.ndarray]):
    """Position probe and learned compatibility from the model's features (see encseg.attacks.probe)."""
    scheme, p = run.scheme, run.scheme.block_size
    H, W = ctx.cfg.size
    grid = (H // p, W // p)
    n = grid[0] * grid[1]
    model, _, _ = probe.load_model(path)

    def featurise(imgs):
        return probe.token_features(model, imgs, p)

    def attacker_pair(img):
        key = Key.generate()
        enc = encrypt(img, key, scheme).data
        return enc, probe.block_sources(make_plan(key, scheme, *grid), n)

    def src_of(plan):
        return probe.block_sources(plan, n)

    feats, srcs = probe.attacker_features(featurise, ctx.scenes.attacker, ctx.cfg.probe_scenes, attacker_pair)
    ctx.tick(run.label, 0.05)
    D = feats.shape[-1]
    pr = probe.train_probe(feats.reshape(-1, D), srcs.ravel(), grid, steps=ctx.cfg.probe_steps)
    test_feats = np.concatenate([featurise([e]) for e in encs])  # (B, N, D)
    test_src = np.stack([src_of(pl) for pl in plans])
    acc = probe.probe_accuracy(pr, test_feats.reshape(-1, D), test_src.ravel())
    # the control: the same probe on ciphertext-only block statistics
    sfeats, ssrcs = probe.attacker_features(lambda ims: probe.block_statistics(ims, p), ctx.scenes.attacker,
                                            ctx.cfg.probe_scenes, attacker_pair)
    ctrl = probe.train_probe(sfeats.reshape(-1, sfeats.shape[-1]), ssrcs.ravel(), grid, steps=ctx.cfg.probe_steps)
    tstat = probe.block_statistics(encs, p)
    acc_ctrl = probe.probe_accuracy(ctrl, tstat.reshape(-1, tstat.shape[-1]), test_src.ravel())
    # the second control: the model's own label output per block (what the server sees by design)
    lfeats, lsrcs = probe.attacker_features(lambda ims: probe.label_features(model, ims, p), ctx.scenes.attacker,
                                            ctx.cfg.probe_scenes, attacker_pair)
    lprobe = probe.train_probe(lfeats.reshape(-1, lfeats.shape[-1]), lsrcs.ravel(), grid, steps=ctx.cfg.probe_steps)
    tlab = np.concatenate([probe.label_features(model, [e], p) for e in encs])
    acc_lab = probe.probe_accuracy(lprobe, tlab.reshape(-1, tlab.shape[-1]), test_src.ravel())
    run.probe = {"model": path, "accuracy": acc, "control_accuracy": acc_ctrl, "label_accuracy": acc_lab,
                 "exact_x_chance": acc["exact"] / acc["chance_exact"],
                 "control_exact_x_chance": acc_ctrl["exact"] / acc_ctrl["chance_exact"],
                 "label_exact_x_chance": acc_lab["exact"] / acc_lab["chance_exact"]}
    ctx.tick(run.label, 0.05)
    if not probe.scheme_scrambles(scheme):
        return
    compat = probe.train_compatibility(feats, srcs, grid, steps=ctx.cfg.compat_steps)
    colour = _colour(scheme)
    full_ps = (t := psleak.target_of(scheme)) is not None and t.q == p
    for i, (enc, plan, base) in enumerate(zip(encs, plans, bases)):
        plain = ctx.victims[i]
        placement = probe.probe_placement(pr, test_feats[i])
        placed = jigsaw.join_blocks(jigsaw.split_blocks(base, p)[placement.ravel()], grid)
        rec, dc, nc = _best_variant(_colour_fix(placed, p, colour), plain, plan.block_src[placement], colour, False,
                                    p if full_ps else 0)
        run.rows[i].update({f"probe-placement_{k}": v for k, v in _score(rec, plain).items()},
                           **{"probe-placement_direct": dc, "probe-placement_neighbour": nc})
        run.recons.setdefault("probe-placement", []).append(rec)
        sol = probe.solve_with(compat, test_feats[i], jigsaw.split_blocks(base, p), grid)
        placed = sol.render(jigsaw.split_blocks(base, p))
        rec, dc, nc = _best_variant(_colour_fix(placed, p, colour), plain, plan.block_src[sol.placement], colour, False,
                                    p if full_ps else 0)
        run.rows[i].update({f"model-jigsaw_{k}": v for k, v in _score(rec, plain).items()},
                           **{"model-jigsaw_direct": dc, "model-jigsaw_neighbour": nc})
        run.recons.setdefault("model-jigsaw", []).append(rec)


def evaluate_scheme(spec: SchemeSpec, ctx: Context) -> SchemeRun:
    """Every attack on one scheme."""
    t_start = time.perf_counter()
    scheme, cfg = spec.scheme, ctx.cfg
    p = scheme.block_size
    H, W = cfg.size
    grid = (H // p, W // p)
    run = SchemeRun(spec.label, scheme)
    target = psleak.target_of(scheme)
    encs, plans, bases = [], [], []
    for i, img in enumerate(ctx.victims):
        key = Key.generate()
        enc = encrypt(img, key, scheme).data
        plan = make_plan(key, scheme, *grid)  # ground truth, for scoring only
        del key
        row = {f"ciphertext_{k}": v for k, v in _score(enc, img).items()}
        run.recons.setdefault("ciphertext", []).append(enc)
        recon, dc, nc, secs = jigsaw_attack(enc, scheme, img, plan.block_src)
        row.update({f"jigsaw_{k}": v for k, v in _score(recon, img).items()},
                   jigsaw_direct=dc, jigsaw_neighbour=nc, jigsaw_seconds=secs)
        run.recons.setdefault("jigsaw", []).append(recon)
        base = enc
        if target is not None:
            ps = ps_leak_attack(enc, scheme, img, plan)
            base = ps["base"]
            row.update({f"ps-leak+jigsaw_{k}": v for k, v in _score(ps["recon"], img).items()},
                       **{"ps-leak+jigsaw_direct": ps["direct"], "ps-leak+jigsaw_neighbour": ps["neighbour"],
                          "ps_adjacency": ps["adjacency"], "ps_exact": ps["exact"], "ps_seconds": ps["seconds"]})
            run.recons.setdefault("ps-leak+jigsaw", []).append(ps["recon"])
        leak = stats.block_leakage(img, enc, plan.block_src, p)
        row.update(block_mean_corr=leak["mean"], block_abs_mean_corr=leak["abs_mean"], block_var_corr=leak["var"],
                   histogram_distance=stats.histogram_distance(img, enc),
                   pixel_adjacency_leak=stats.pixel_adjacency_leak(enc, p, plan.pixel_src, plan.block_pixel_src))
        run.rows.append(row)
        encs.append(enc)
        plans.append(plan)
        bases.append(base)
        ctx.tick(spec.label, 0.25 / len(ctx.victims))
    run.first_enc = encs[0]

    path = cfg.models.get(spec.label)
    if path:
        run.model = path
        _model_attack(run, ctx, path, encs, plans, bases)
    ctx.tick(spec.label, 0.05)

    val = [ctx.scenes.attacker(i, "val") for i in range(cfg.val_images)]
    shared_key = Key.generate()
    modes = ("per-image", "shared") if scheme.steps else ("per-image",)
    for mode in modes:
        icfg = cfg.inverse
        if mode == "shared" and cfg.shared_inverse_minutes is not None:
            icfg = InverseConfig(**{**icfg.__dict__, "minutes": cfg.shared_inverse_minutes})
        share = 0.3 if len(modes) == 2 else 0.6
        last = [0.0]

        def tick(frac, share=share, last=last):
            ctx.tick(spec.label, share * (frac - last[0]))
            last[0] = frac

        res = train_inverse(ctx.scenes.attacker, scheme, mode, icfg, val, shared_key=shared_key, tick=tick)
        name = "inverse" if mode == "per-image" else "inverse-shared"
        for i, img in enumerate(ctx.victims):
            enc = encs[i] if mode == "per-image" else encrypt(img, shared_key, scheme).data
            rec = invert(res.model, enc)
            run.rows[i].update({f"{name}_{k}": v for k, v in _score(rec, img).items()})
            run.recons.setdefault(name, []).append(rec)
        run.inverse[mode] = {"steps": res.steps, "pairs": res.pairs, "scenes": res.scenes,
                             "seconds": res.seconds, "curve": res.curve, "canonical_input": res.model.canonical}
    if not scheme.steps:  # no key: the shared-key rows are the per-image ones
        for i in range(len(ctx.victims)):
            run.rows[i].update({k.replace("inverse_", "inverse-shared_"): v for k, v in list(run.rows[i].items())
                                if k.startswith("inverse_")})
        run.recons["inverse-shared"] = run.recons["inverse"]

    known = [ctx.scenes.attacker(i) for i in range(cfg.known_pairs)]
    rk = recover_key(known, [encrypt(x, shared_key, scheme).data for x in known], p,
                     per_block=target is not None and target.step == psleak.PSB)
    for i, img in enumerate(ctx.victims):
        rec = rk.decrypt(encrypt(img, shared_key, scheme).data)
        run.rows[i].update({f"known-pair_{k}": v for k, v in _score(rec, img).items()})
        run.recons.setdefault("known-pair", []).append(rec)
    del shared_key
    run.seconds = time.perf_counter() - t_start
    return run


# -- summaries ----------------------------------------------------------------------------------------------

def _mean(rows: list[dict], k: str) -> float | None:
    v = np.array([r[k] for r in rows if r.get(k) is not None], float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def summarise(run: SchemeRun, ctx: Context) -> dict:
    """Per-scheme figures (means over the victims; semantic leakage from one confusion matrix per
    attack), the frontier's machine-readable subset and the goals."""
    from encseg.attacks.leakage import leakage, miou

    scheme, p = run.scheme, run.scheme.block_size
    H, W = ctx.cfg.size
    n = (H // p) * (W // p)
    chance = metrics.chance_direct(n)
    scrambled = "block-scramble" in _steps(scheme)
    attacks = {}
    for name in PER_IMAGE_ATTACKS + SHARED_ATTACKS:
        if name not in run.recons:
            continue
        a = {k: _mean(run.rows, f"{name}_{k}") for k in ("ssim", "ssim_lum", "psnr")}
        a["setting"] = "shared key" if name in SHARED_ATTACKS else "per-image keys"
        if name in PLACEMENT_ATTACKS:
            a["direct"] = _mean(run.rows, f"{name}_direct") if scrambled else 1.0
            a["neighbour"] = _mean(run.rows, f"{name}_neighbour") if scrambled else 1.0
        if ctx.segmenter is not None:
            a["miou"] = miou(ctx.segmenter, run.recons[name], ctx.seg_labels)
            a["leakage"] = leakage(a["miou"], ctx.miou_baseline, ctx.miou_plain)
        attacks[name] = a
    solved = [a for k, a in attacks.items() if k in JIGSAW_ATTACKS]
    direct = max(a["direct"] for a in solved) if solved else None
    neighbour = max(a["neighbour"] for a in solved) if solved else None
    placed = [a for k, a in attacks.items() if k in PLACEMENT_ATTACKS]
    placed_direct = max(a["direct"] for a in placed) if placed else None
    per_image = [a.get("leakage") for k, a in attacks.items() if a["setting"] == "per-image keys"]
    max_leak = max(v for v in per_image if v is not None) if any(v is not None for v in per_image) else None
    worst = max(((a.get("leakage"), k) for k, a in attacks.items() if a["setting"] == "per-image keys"
                 and a.get("leakage") is not None), default=(None, None))[1]
    shared = [attacks[k] for k in SHARED_ATTACKS if k in attacks]
    broken = any((a["psnr"] or 0) >= SHARED_PSNR_BROKEN or (a.get("leakage") or 0) >= SHARED_LEAKAGE_BROKEN for a in shared)
    pr = run.probe
    goals = {
        "direct<=2x_chance": direct is not None and direct <= DC_GOAL_X_CHANCE * chance,
        "neighbour<=0.10": neighbour is not None and neighbour <= NC_GOAL,
        "leakage<=0.10": None if max_leak is None else bool(max_leak <= LEAKAGE_GOAL),
        "shared_key_broken": bool(broken),
    }
    frontier = {
        "direct_x_chance": None if direct is None else direct / chance,
        "neighbour": neighbour,
        "placement_direct_x_chance": None if placed_direct is None else placed_direct / chance,  # probe included
        "max_leakage": max_leak,
        "max_leakage_attack": worst,
        "position_probe": None if pr is None else pr["accuracy"]["exact"],
        "position_probe_x_chance": None if pr is None else pr["exact_x_chance"],
        "shared_key_broken": bool(broken),
        "goals": goals,
    }
    ps = None
    if psleak.target_of(scheme) is not None:
        ps = {"adjacency": _mean(run.rows, "ps_adjacency"), "exact": _mean(run.rows, "ps_exact"),
              "seconds": _mean(run.rows, "ps_seconds")}
    bits, capped = stats.keyspace_bits(scheme, H, W)
    return {
        "scheme": run.label, "block_size": p, "steps": [s.code for s in scheme.steps], "scrambles_blocks": scrambled,
        "grid": [H // p, W // p], "chance_direct": chance, "keyspace_bits": bits, "keyspace_bits_capped": capped,
        "keyspace_terms": stats.keyspace_terms(scheme, H, W),
        "attacks": attacks, "ps_leak": ps, "probe": pr, "inverse": run.inverse,
        "jigsaw_seconds": _mean(run.rows, "jigsaw_seconds"),
        "stats": {k: _mean(run.rows, k) for k in ("block_mean_corr", "block_abs_mean_corr", "block_var_corr",
                                                   "histogram_distance", "pixel_adjacency_leak")},
        "frontier": frontier, "goals": goals, "seconds": run.seconds, "per_image": run.rows,
    }


# -- the whole suite -----------------------------------------------------------------------------------------

class _Progress:
    """One bar over the whole suite: each scheme is one unit, split into phases by `tick`."""

    def __init__(self, n_schemes: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=float(n_schemes), desc="attack", unit="scheme", disable=not enabled,
                        bar_format="{l_bar}{bar}| {n:.2f}/{total:.0f} schemes [{elapsed}<{remaining}] {postfix}")
        self.done = 0.0

    def tick(self, label: str, frac: float) -> None:
        self.bar.set_postfix_str(label, refresh=False)
        self.bar.update(frac)

    def next_scheme(self, k: int) -> None:
        self.bar.n = float(k)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def run_suite(specs: list[SchemeSpec], cfg: SuiteConfig, out, command: str = "", progress: bool = True,
              threads: int = 1) -> list[dict]:
    """Run every attack on every scheme and write the report into `out`."""
    import platform
    from dataclasses import asdict
    from pathlib import Path

    from encseg.attacks import report

    out = Path(out)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    bar = _Progress(len(specs), progress)
    ctx = make_context(cfg, bar.tick)
    summaries = []
    for k, spec in enumerate(specs):
        bar.next_scheme(k)
        run = evaluate_scheme(spec, ctx)
        summaries.append(summarise(run, ctx))
        names = [n for n in report.ATTACK_LABELS if n in run.recons]
        report.save_grid(out / f"{spec.label.replace('/', '_')}.png",
                         [ctx.victims[0]] + [run.recons[n][0] for n in names],
                         ["plain"] + [f"{report.ATTACK_LABELS[n]} ({spec.label})" for n in names], cfg.grid_scale)
    bar.next_scheme(len(specs))
    bar.close()
    val = [ctx.scenes.attacker(i, "val") for i in range(cfg.val_images)]
    base_lum = float(np.mean([metrics.ssim_luminance(ctx.baseline, v) for v in val])) if val else None
    report.draw_curves(out / "inverse_curves.png", summaries, base_lum)
    H, W = cfg.size
    meta = {
        "command": command, "images": cfg.images, "seed": cfg.seed, "attacker_seed": cfg.seed + ATTACKER_SEED_OFFSET,
        "size": [H, W], "inverse": asdict(cfg.inverse),
        "shared_inverse_minutes": cfg.inverse.minutes if cfg.shared_inverse_minutes is None else cfg.shared_inverse_minutes,
        "probe_scenes": cfg.probe_scenes, "known_pairs": cfg.known_pairs, "models": cfg.models,
        "segmenter": cfg.segmenter, "miou_plain": ctx.miou_plain, "miou_baseline": ctx.miou_baseline,
        "baseline_val_ssim_lum": base_lum, "threads": threads,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "seconds": time.perf_counter() - t0,
    }
    report.write_report(out, summaries, meta)
    return summaries
