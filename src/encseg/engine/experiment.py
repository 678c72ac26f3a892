"""The paper's comparison on the procedural street benchmark: `encseg experiment --budget cpu-small`.

Every run trains on the same data with the same budget; then each model is scored the way its
setting prescribes:

| model | train | test |
|---|---|---|
| SETR | plain | plain, and per-image-key encrypted (a plain model meets encrypted images) |
| SETR | one shared key (the 2022 setting) | the same key |
| SETR | a fresh key per image per epoch (the paper) | a fresh key per test image |
| key-invariant SETR | plain | plain, and per-image-key encrypted |
| key-invariant SETR | per-image keys | per-image keys |

for each scheme of the budget. The key-invariant model has no position embedding and a token-wise
decoder (`encseg.models`, decoder "token"); for schemes with pixel shuffling it also uses the
permutation-invariant patch embedding and per-pixel decoder when the budget says so (not on the CPU
budget: that variant trains about 4x slower on a CPU). Runs go `parallel` at a time in
separate processes (one torch thread each), are resumable, and are skipped once their results
exist. Results land in docs/results.md and a bar chart; every number there is on the procedural
benchmark, not Cityscapes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path


from encseg.engine.config import TrainConfig, apply_dict, clone, preset
from encseg.errors import UserError

SCHEME_LABELS = {
    "bs-np-cs": "BS+NP+CS",
    "bs-ps-np-cs": "BS+PS+NP+CS",
    "bs-ps4-np-cs": "BS+PS(4x4)+NP+CS",
}


@dataclass
class Budget:
    """Data and training budget of one experiment size."""

    name: str
    train_preset: str
    steps: int
    size: tuple[int, int]  # scene size (H, W)
    n_train: int
    n_val: int
    data_seed: int = 0
    schemes: tuple[str, ...] = ("bs-np-cs", "bs-ps-np-cs", "bs-ps4-np-cs")
    pixel_invariant: bool = False  # key-invariant model: per-pixel variant for pixel-shuffling schemes
    parallel: int = 2  # training processes at a time
    threads: int = 1  # torch threads per process
    overrides: dict = field(default_factory=dict)  # extra config overrides {section: {key: value}}
    eval_batch: int = 8
    eval_crop: tuple[int, int] | None = None  # sliding-window evaluation (H, W); None: whole images
    eval_stride: tuple[int, int] | None = None
    frontier: bool = False  # the privacy-accuracy frontier (encseg.engine.frontier) instead of the paper's table
    data_name: str | None = None  # data folder data/streets-<data_name> (default: the budget's name)
    refine_steps: int = 0  # frontier: also fit the client's refiner (encseg.models.refine) on each run, this many steps


BUDGETS = {
    "cpu-small": Budget(
        name="cpu-small", train_preset="streets-cpu", steps=4000, size=(128, 256), n_train=1500, n_val=100,
    ),
    "cpu-frontier": Budget(
        name="cpu-frontier", train_preset="streets-cpu", steps=4000, size=(128, 256), n_train=1500, n_val=100,
        frontier=True, data_name="cpu-small", refine_steps=800,
    ),
    "gpu-small": Budget(
        name="gpu-small", train_preset="streets-cpu", steps=8000, size=(256, 512), n_train=3000, n_val=300,
        parallel=1, threads=0, pixel_invariant=True,
        overrides={"model": {"encoder": "vit-small", "img_size": [256, 512], "channels": 256, "aux": True},
                   "data": {"crop": [256, 512], "workers": 4},
                   "run": {"batch_size": 16, "amp": "auto", "device": "auto"}},
    ),
}  # fmt: skip


@dataclass
class Run:
    name: str
    model: str  # "setr" | "inv"
    train: str  # "none" | "shared" | "per-image"
    scheme: str | None
    evals: list[tuple[str, str | None]]  # (test encryption, scheme)
    cfg: TrainConfig


def plan_runs(budget: Budget, data_root: Path, out: Path) -> list[Run]:
    base = preset(budget.train_preset)
    apply_dict(base, budget.overrides)
    base.data.root = str(data_root)
    base.run.steps = budget.steps
    base.run.threads = budget.threads
    base.run.ckpt_every = max(budget.steps // 4, 1)
    if budget.frontier:
        from encseg.engine.frontier import CANDIDATES, split_scheme

        runs = []
        for c in CANDIDATES:
            cfg = clone(base)
            cfg.run.out = str(out / c.name)
            cfg.run.steps = int(round(budget.steps * c.steps_factor))
            cfg.run.ckpt_every = max(cfg.run.steps // 4, 1)
            cfg.encryption.mode = c.train
            apply_dict(cfg, {"model": dict(c.model)})
            if c.scheme:
                cfg.encryption.scheme = split_scheme(c.scheme)[0]
            runs.append(Run(c.name, c.label, c.train, c.scheme, list(c.evals), cfg.validate()))
        return runs

    def make(name, model, train, scheme, evals):
        cfg = clone(base)
        cfg.run.out = str(out / name)
        cfg.encryption.mode = train
        if scheme:
            cfg.encryption.scheme = scheme
        if model == "inv":
            cfg.model.decoder = "token"
            cfg.model.position_embedding = False
            cfg.model.invariant_embedding = bool(budget.pixel_invariant and scheme and any(c.startswith("ps") for c in scheme.split("-")))
        return Run(name, model, train, scheme, evals, cfg.validate())

    enc_evals = [("per-image", s) for s in budget.schemes]
    runs = [make("setr-plain", "setr", "none", None, [("none", None)] + enc_evals)]
    for s in budget.schemes:
        runs.append(make(f"setr-shared-{s}", "setr", "shared", s, [("shared", s)]))
        runs.append(make(f"setr-per-image-{s}", "setr", "per-image", s, [("per-image", s)]))
    runs.append(make("inv-plain", "inv", "none", None, [("none", None)] + enc_evals))
    for s in budget.schemes:
        runs.append(make(f"inv-per-image-{s}", "inv", "per-image", s, [("per-image", s)]))
    return runs


def _die_with_parent() -> None:
    """Worker initializer: on Linux, end this process when the experiment process dies (so killing
    `encseg experiment` does not leave training processes behind)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _run_job(run: Run, data_root: str, budget: Budget, data: dict) -> dict:
    """Train (resuming if interrupted) and evaluate one run, in its own process; returns its record."""
    import torch

    from encseg.cipher import Scheme, load_key
    from encseg.data.cityscapes import CityscapesDataset
    from encseg.engine.distributed import pick_device
    from encseg.engine.evaluate import evaluate
    from encseg.engine.frontier import split_scheme
    from encseg.engine.train import shared_key_path, train
    from encseg.models import load_checkpoint

    if run.cfg.run.threads:
        torch.set_num_threads(run.cfg.run.threads)
    out = Path(run.cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(data) + "\n")  # what the checkpoints in here were trained on
    t0 = time.perf_counter()
    final = out / "model.safetensors"
    if not final.exists():
        train(run.cfg, resume=True, progress=False)
    train_s = time.perf_counter() - t0
    device = pick_device(run.cfg.run.device)  # score where it trained (the CPU budgets: the CPU)
    model, config, _ = load_checkpoint(final, device=device)
    val = CityscapesDataset(data_root, "val")
    results = []
    for mode, scheme in run.evals:
        s = Scheme.parse(split_scheme(scheme)[0], block_size=config.block) if scheme else None
        key = load_key(shared_key_path(run.cfg)) if mode == "shared" else None
        r = evaluate(model, val, device, mode, s, key, crop=budget.eval_crop, stride=budget.eval_stride,
                     batch_size=budget.eval_batch)
        results.append(r.to_dict() | {"test": mode, "scheme": scheme})
    refined = None
    if budget.refine_steps and run.train in ("none", "per-image"):
        from encseg.engine.refine import refine_run

        mode, scheme = run.evals[0]  # the setting the run trained for
        s = Scheme.parse(split_scheme(scheme)[0], block_size=config.block) if scheme else None
        refined = refine_run(model, Path(data_root), s, budget.refine_steps, device)[1] | {"test": mode, "scheme": scheme}
    record = {
        "name": run.name, "model": run.model, "train": run.train, "scheme": run.scheme,
        "steps": run.cfg.run.steps, "train_seconds": round(train_s, 1),
        "eval_seconds": round(time.perf_counter() - t0 - train_s, 1), "results": results, "refined": refined,
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, "
                   f"{run.cfg.run.threads or 'all'} thread{'s' if run.cfg.run.threads != 1 else ''})",
        "config": run.cfg.to_dict(), "data": data,
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _done(run: Run, data: dict) -> dict | None:
    """The run's record if it finished with this config on this data (same generator version, size,
    seed and counts), else None."""
    path = Path(run.cfg.run.out) / "results.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("config") == run.cfg.to_dict() and record.get("data") == data else None


def _stale(run: Run, data: dict) -> bool:
    """True when the run's folder holds work (a finished record or checkpoints to resume from) made
    with another config or on other data: it must not be reused or resumed."""
    folder = Path(run.cfg.run.out)
    if not folder.is_dir() or not any(folder.iterdir()):
        return False
    marker = folder / "data.json"
    if not marker.is_file() or json.loads(marker.read_text()) != data:
        return True
    results = folder / "results.json"
    return results.is_file() and json.loads(results.read_text()).get("config") != run.cfg.to_dict()


def streets_meta(root: str | Path) -> dict:
    """The `streets.json` of a generated benchmark folder (generator version, seed, size, counts), or {}."""
    path = Path(root) / "streets.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def ensure_data(budget: Budget, root: Path) -> Path:
    """Generate the benchmark unless a folder with the same parameters is already there."""
    from encseg.data.streets import GENERATOR_VERSION, generate_streets

    want = {"generator_version": GENERATOR_VERSION, "seed": budget.data_seed, "size": list(budget.size),
            "train": budget.n_train, "val": budget.n_val}  # fmt: skip
    meta = streets_meta(root)
    if meta:
        if all(meta.get(k) == v for k, v in want.items()):
            return root
        shutil.rmtree(root)
    print(f"generating the street benchmark in {root} ({budget.n_train} + {budget.n_val} scenes, {budget.size[0]}x{budget.size[1]})", flush=True)
    generate_streets(root, budget.n_train, budget.n_val, budget.size, budget.data_seed)
    return root


def run_experiment(budget_name: str, out: Path, data: Path | None, results_md: Path, chart: Path,
                   demo_out: Path | None = None, only: list[str] | None = None,
                   privacy: Path = Path("docs/attack-record/results.json"),
                   rescore: Path | None = None, parallel: int | None = None,
                   refine_steps: int | None = None) -> list[dict]:  # fmt: skip
    """Train and score every run of `budget_name` (`parallel` at a time: default the budget's), then
    write the report. The runs' configs, and so their results, do not depend on `parallel`."""
    if budget_name not in BUDGETS:
        raise UserError(f"unknown budget {budget_name!r}; budgets: {', '.join(BUDGETS)}")
    budget = BUDGETS[budget_name]
    if parallel is not None:
        if parallel < 1:
            raise UserError(f"--parallel must be at least 1 (got {parallel})")
        budget = replace(budget, parallel=parallel)
    if refine_steps is not None:
        if refine_steps < 0:
            raise UserError(f"--refine-steps must be 0 or more (got {refine_steps})")
        budget = replace(budget, refine_steps=refine_steps)
    if rescore is not None:
        return rescore_frontier(budget, Path(rescore), data, results_md, chart, demo_out, privacy)
    t0 = time.perf_counter()
    out = Path(out) / budget.name
    data_root = ensure_data(budget, Path(data) if data else Path("data") / f"streets-{budget.data_name or budget.name}")
    t_data = time.perf_counter() - t0
    runs = plan_runs(budget, data_root, out)
    data = streets_meta(data_root)
    if only:
        unknown = set(only) - {r.name for r in runs}
        if unknown:
            raise UserError(f"unknown runs {sorted(unknown)}; runs: {', '.join(r.name for r in runs)}")
        for r in runs:
            if r.name in only:
                shutil.rmtree(r.cfg.run.out, ignore_errors=True)  # retrain from scratch
    records: dict[str, dict] = {}
    todo = []
    for r in runs:
        rec = _done(r, data)
        if rec is None and _stale(r, data) and (not only or r.name in only):
            print(f"{r.name}: trained with another config or on other data; starting it again", flush=True)
            shutil.rmtree(r.cfg.run.out)
        if rec is not None:
            records[r.name] = rec
        elif not only or r.name in only:
            todo.append(r)
    print(f"{len(runs)} runs, {len(records)} already done; {len(todo)} to do now, {budget.parallel} at a time", flush=True)
    ctx = get_context("spawn")
    with ProcessPoolExecutor(budget.parallel, mp_context=ctx, initializer=_die_with_parent) as pool:
        pending = {pool.submit(_run_job, r, str(data_root), budget, data): r for r in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                r = pending.pop(fut)
                rec = fut.result()
                records[r.name] = rec
                scores = ", ".join(f"{x['test']}{'/' + x['scheme'] if x['scheme'] else ''} {x['miou']:.1f}" for x in rec["results"])
                print(f"[{len(records)}/{len(runs)} done] {r.name}: {rec['train_seconds']:.0f}s train; mIoU {scores} "
                      f"({(time.perf_counter() - t0) / 60:.1f} min so far)", flush=True)  # fmt: skip
    ordered = [records[r.name] for r in runs if r.name in records]
    total_s = time.perf_counter() - t0
    timing = out / "timing.json"
    if todo:  # the wall time of the invocation that trained runs, kept for the report's later rewrites
        timing.write_text(json.dumps({"wall_minutes": round(total_s / 60, 1), "data_minutes": round(t_data / 60, 1),
                                      "runs_trained": len(todo), "runs": len(runs)}) + "\n")  # fmt: skip
    trained = json.loads(timing.read_text()) if timing.is_file() else None
    if budget.frontier:
        command = (f"encseg experiment --budget {budget.name}" + (f" --only {','.join(only)}" if only else "")
                   + (f" --parallel {parallel}" if parallel else "")
                   + (f" --refine-steps {refine_steps}" if refine_steps is not None else "")
                   + f" --privacy {privacy}" + (f" --demo-out {demo_out}" if demo_out is not None else ""))
        _frontier_report(budget, ordered, data_root, results_md, chart, demo_out, total_s, trained, privacy, command)
        print(f"wrote {results_md} and {chart} ({total_s / 60:.1f} min)", flush=True)
        return ordered
    if demo_out is not None:
        export_demo(budget, ordered, data_root, Path(demo_out))
    write_report(budget, ordered, data_root, results_md, chart, total_s, t_data, demo_out, trained)
    print(f"wrote {results_md} and {chart} ({total_s / 60:.1f} min)", flush=True)
    return ordered


def rescore_frontier(budget: Budget, source: Path, data: Path | None, results_md: Path, chart: Path,
                     demo_out: Path | None, privacy: Path) -> list[dict]:  # fmt: skip
    """The frontier report of an earlier invocation's runs (its frontier.json) against another attack
    record: nothing is trained or scored again, the mIoU figures and wall time are that invocation's."""
    from encseg.demo import DEMO_CHECKPOINT
    from encseg.engine.frontier import choose_default, frontier_rows, load_privacy, load_rescore, write_frontier_report

    if not budget.frontier:
        raise UserError(f"--rescore rebuilds a frontier report; budget {budget.name!r} has none")
    if demo_out is not None:
        raise UserError("--rescore trains nothing, so it exports no demo model (drop --demo-out)")
    if not Path(privacy).is_file():
        raise UserError(f"no attack record at {privacy}")
    records, wall = load_rescore(source)
    data_root = Path(data) if data else Path("data") / f"streets-{budget.data_name or budget.name}"
    default = choose_default(frontier_rows(records, load_privacy(privacy)))
    lines = ["", f"Rescored with `encseg experiment --budget {budget.name} --rescore {source} --privacy {privacy}`: the "
             "mIoU figures and run table are those of the invocation above; the privacy columns and the default come "
             f"from `{privacy}`."]  # fmt: skip
    shipped = DEMO_CHECKPOINT.with_suffix(".json")
    if shipped.is_file():
        served = ((json.loads(shipped.read_text()).get("extra") or {}).get("encryption") or {}).get("scheme")
        if default is not None and served != default["scheme"]:
            print(f"the shipped demo model serves {served!r}; the new default {default['scheme']!r} is best served by run "
                  f"{default['run']!r}: export it with a training invocation (--demo-out)", flush=True)
        lines += demo_model_lines(None)
    write_frontier_report(budget, records, data_root, results_md, chart, privacy, wall, lines)
    print(f"wrote {results_md} and {chart} from {source} and {privacy}", flush=True)
    return records


def _scheme_descriptors(rec: dict, first: str) -> list[dict]:
    """The schemes a frontier run was scored on (its default first), as descriptors with their block size."""
    from encseg.cipher import Scheme
    from encseg.engine.frontier import split_scheme
    from encseg.models import SETRConfig

    block = SETRConfig.from_dict(rec["config"]["model"]).block
    names = [first] + [x["scheme"] for x in rec["results"] if x["scheme"] and x["scheme"] != first]
    return [Scheme.parse(split_scheme(n)[0], block_size=block).to_dict() for n in names]


def _frontier_report(budget: Budget, records: list[dict], data_root: Path, results_md: Path, chart: Path,
                     demo_out: Path | None, total_s: float, trained: dict | None, privacy: Path,
                     command: str | None = None) -> None:  # fmt: skip
    import torch

    from encseg.engine.frontier import choose_default, frontier_rows, load_privacy, plain_miou, write_frontier_report

    gpu = f", GPU {torch.cuda.get_device_name(0)} (training and scoring on it)" if torch.cuda.is_available() else ", no GPU"
    wall = (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores visible{gpu}, torch {torch.__version__}, "
            f"{budget.parallel} runs at a time with {budget.threads} thread each; this invocation {total_s / 60:.1f} min"
            + (f"; the invocation that trained {trained['runs_trained']} of the {trained['runs']} runs took "
               f"{trained['wall_minutes']} min (data generation {trained['data_minutes']} min)." if trained else "."))
    default = choose_default(frontier_rows(records, load_privacy(privacy)))
    if demo_out is not None and default is None:
        print("no attack record: the demo model is left as it is", flush=True)
    elif demo_out is not None:
        rec = next(r for r in records if r["name"] == default["run"])
        write_demo_asset(
            Path(rec["config"]["run"]["out"]) / "model.safetensors", Path(demo_out), name=f"streets-{rec['name']}",
            scheme=default["scheme"], scene_size=budget.size, val_miou=default["miou"],
            command=f"encseg experiment --budget {budget.name} --privacy {privacy} --demo-out {demo_out}",
            data_root=data_root, run=rec["name"], plain_val_miou=plain_miou(records),
            schemes=_scheme_descriptors(rec, default["scheme"]),
            data={"generator_seed": budget.data_seed, "train": budget.n_train, "val": budget.n_val},
        )  # fmt: skip
    lines = demo_model_lines(demo_out)  # the model `encseg demo` uses: just exported, or the shipped one
    write_frontier_report(budget, records, data_root, results_md, chart, privacy, wall, lines, command)


# -- the report -----------------------------------------------------------------------------------

ROWS = [  # (label, model, train, test)
    ("SETR", "setr", "none", "none"),
    ("SETR", "setr", "none", "per-image"),
    ("SETR", "setr", "shared", "shared"),
    ("SETR", "setr", "per-image", "per-image"),
    ("key-invariant SETR", "inv", "none", "none"),
    ("key-invariant SETR", "inv", "none", "per-image"),
    ("key-invariant SETR", "inv", "per-image", "per-image"),
]
SETTING = {"none": "plain", "shared": "one shared key", "per-image": "per-image keys"}


def table_value(records: list[dict], model: str, train: str, test: str, scheme: str | None) -> float | None:
    for rec in records:
        if rec["model"] != model or rec["train"] != train:
            continue
        if train != "none" and rec["scheme"] != scheme:
            continue
        for x in rec["results"]:
            if x["test"] == test and (test == "none" or x["scheme"] == scheme):
                return x["miou"]
    return None


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def augmentation_text(d: dict) -> str:
    """The training augmentation of a data config, in words."""
    parts = [f"{d['crop'][0]}x{d['crop'][1]} crops"]
    lo, hi = d["ratio_range"]
    parts.append(f"scale {lo}-{hi}" if (lo, hi) != (1.0, 1.0) else "no rescaling")
    if d.get("flip_prob", 0.5) > 0:
        parts.append("flip")
    parts.append("photometric distortion" if d.get("photometric", True) else "no photometric distortion")
    return ", ".join(parts)


def write_report(budget: Budget, records: list[dict], data_root: Path, path: Path, chart: Path, total_s: float,
                 data_s: float, demo_out: Path | None = None, trained: dict | None = None) -> None:  # fmt: skip
    import torch

    schemes = budget.schemes
    lines = [
        "# Results: per-image keys vs. plain and shared-key training",
        "",
        f"**Benchmark: the procedural street scenes of `encseg data streets` (Cityscapes classes and layout), "
        f"not Cityscapes.** {budget.n_train} training and {budget.n_val} validation scenes of "
        f"{budget.size[0]}x{budget.size[1]} pixels, generator version "
        f"{streets_meta(data_root).get('generator_version', '?')}, seed {budget.data_seed}. mIoU (%) with the Cityscapes "
        "protocol (one confusion matrix over the validation set, 19 classes, ignore 255, mean over classes with a "
        "defined IoU). Encrypted test images get a fresh key each (or the one shared key); the predicted label map "
        "is decrypted with that key before scoring.",
        "",
        "| model | train | test | " + " | ".join(SCHEME_LABELS.get(s, s) for s in schemes) + " |",
        "|---|---|---|" + "---:|" * len(schemes),
    ]
    for label, model, train, test in ROWS:
        vals = [table_value(records, model, train, test, s) for s in schemes]
        if test == "none":
            cells = [_fmt(vals[0])] * len(schemes)  # scheme-independent
        else:
            cells = [_fmt(v) for v in vals]
        lines.append(f"| {label} | {SETTING[train]} | {SETTING[test]} | " + " | ".join(cells) + " |")
    plain = table_value(records, "setr", "none", "none", None)
    gaps = []
    for s in schemes:
        v = table_value(records, "setr", "per-image", "per-image", s)
        gaps.append(None if v is None or plain is None else v - plain)
    if plain is not None:
        where = "inside" if 45 <= plain <= 85 else ("below" if plain < 45 else "above")
        lines += ["", f"Calibration: plain SETR scores {plain:.1f} mIoU; the benchmark is meant to put a plain vit-tiny SETR "
                      f"between 45 and 85 at the CPU budget, and this run is **{where}** that band (why, and the calibration's "
                      "history: [training.md](training.md#calibration-of-the-street-benchmark-at-the-cpu-budget))."]  # fmt: skip
    lines += [
        "",
        "Per-image-key SETR minus plain SETR (goal: within 1.0 mIoU): "
        + ", ".join(f"{SCHEME_LABELS.get(s, s)} {g:+.1f}" for s, g in zip(schemes, gaps) if g is not None) + ".",
        "",
        f"![mIoU per setting and scheme]({chart.name})",
        "",
        "## How these numbers were made",
        "",
        "```",
        f"encseg experiment --budget {budget.name}" + (f" --demo-out {demo_out}" if demo_out else ""),
        "```",
        "",
    ]
    cfg = records[0]["config"]
    m, o, r, d = cfg["model"], cfg["optim"], cfg["run"], cfg["data"]
    lines += [
        f"Budget `{budget.name}`: every run trains {r['steps']} steps of batch {r['batch_size']} "
        f"({augmentation_text(d)}) from scratch: SETR = {m['encoder']} (patch {m['patch_size']}) with the {m['decoder']} decoder"
        f"{' and auxiliary heads' if m['aux'] else ''}, {o['name']} lr {o['lr']} (poly, {o['warmup_steps']} warm-up steps"
        f"{', ' + o['class_weights'] + ' class weights' if o.get('class_weights', 'none') != 'none' else ''}), "
        f"decoder width {m['channels']}. The key-invariant SETR has no position embedding and a token-wise decoder, "
        "so block scrambling commutes with it exactly; "
        + ("for schemes with pixel shuffling it also has the permutation-invariant patch embedding and per-pixel "
           "decoder. " if budget.pixel_invariant else
           "pixel shuffling, NP and CS it has to learn from the per-image keys (this budget leaves out the "
           "pixel-invariant variant, which trains about 4x slower on a CPU). ")
        + f"Cipher block size = patch size = {m['patch_size']}. "
        + (f"Sliding-window inference ({budget.eval_crop[0]}x{budget.eval_crop[1]} windows, stride "
           f"{budget.eval_stride[0]}x{budget.eval_stride[1]}, as SETR evaluates Cityscapes); encrypted test images are "
           "encrypted whole and the windows stay on the block grid." if budget.eval_crop else "Whole-image inference."),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, torch {torch.__version__}, "
        f"{budget.parallel} runs at a time with {budget.threads or 'default'} thread(s) each; wall time "
        f"{total_s / 60:.1f} min in this invocation (data generation {data_s / 60:.1f} min; runs already done were not redone)"
        + (f"; the invocation that trained {trained['runs_trained']} of the {trained['runs']} runs took "
           f"{trained['wall_minutes']} min (data generation {trained['data_minutes']} min)." if trained else "."),
        "",
        "| run | train s | eval s | results |",
        "|---|---:|---:|---|",
    ]
    for rec in records:
        res = "; ".join(f"{x['test']}{' ' + x['scheme'] if x['scheme'] else ''}: {x['miou']:.1f}" for x in rec["results"])
        lines.append(f"| {rec['name']} | {rec['train_seconds']:.0f} | {rec['eval_seconds']:.0f} | {res} |")
    best = best_per_image(records)
    if best is not None and demo_out is not None:
        lines += ["", f"The demo model `{demo_out}/demo.safetensors` (+ `.json`) is `{best['name']}`, the best "
                  "per-image-key run above, stored in fp16 without its auxiliary heads; the command above reproduces it."]  # fmt: skip
    lines += demo_model_lines(demo_out)
    if best is not None:
        x = best["results"][0]
        lines += ["", f"## Per-class IoU of the best per-image-key model (`{best['name']}`, per-image test keys)", "",
                  "| class | IoU |", "|---|---:|"]  # fmt: skip
        lines += [f"| {n} | {'n/a' if v is None else f'{v:.1f}'} |" for n, v in x["iou"].items()]
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    draw_chart(records, schemes, chart)


def demo_model_lines(demo_out: Path | None) -> list[str]:
    """What the shipped demo model is, from its own JSON (the demo may come from a longer run than
    the experiment's), so that this page always describes the model `encseg demo` uses."""
    from encseg.demo import DEMO_CHECKPOINT

    path = (Path(demo_out) / "demo.json") if demo_out is not None else DEMO_CHECKPOINT.with_suffix(".json")
    if not path.is_file():
        return []
    extra = json.loads(path.read_text()).get("extra") or {}
    lines = ["", "## The demo model (`encseg demo`, `make demo`)", "",
             f"`{extra.get('name', '?')}`, trained only on images under a fresh key per sample per epoch "
             f"(scheme {(extra.get('encryption') or {}).get('scheme', '?')}), on the procedural street benchmark, "
             f"not Cityscapes. Validation mIoU with a fresh key per test image: "
             f"**{extra.get('val_miou_per_image_keys', '?')}**."]  # fmt: skip
    plain = extra.get("plain_val_miou")
    if isinstance(plain, (int, float)) and isinstance(extra.get("val_miou_per_image_keys"), (int, float)):
        lines[-1] += (f" Plain SETR trained on plain images at the same budget scores **{plain}** on plain validation "
                      f"images: {extra['val_miou_per_image_keys'] / plain:.2f}x from the server's labels alone.")
    ref = extra.get("refiner")
    if isinstance(ref, dict) and isinstance(ref.get("val_miou_refined"), (int, float)):
        lines += ["", f"With the client's refiner after decryption (`{ref.get('file', 'refiner.safetensors')}`, shipped beside "
                  f"it; `encseg.models.refine`): **{ref['val_miou_refined']}**"
                  + (f", {ref['val_miou_refined'] / plain:.2f}x plain SETR." if isinstance(plain, (int, float)) else ".")
                  + " `encseg demo` prints both, the price of privacy."]
    if extra.get("command"):
        lines += ["", "Reproduce it with:", "", "```", str(extra["command"])]
        if extra.get("plain_command"):
            lines += [str(extra["plain_command"]) + "   # the plain reference"]
        if isinstance(ref, dict) and ref.get("command"):
            lines += [str(ref["command"]) + "   # the client's refiner"]
        lines += ["encseg export-demo --checkpoint <its model.safetensors> --data data/streets-cpu-small --out "
                  "src/encseg/assets --plain <the reference's model.safetensors>"
                  + (" --refiner <the refiner's refiner.safetensors>" if isinstance(ref, dict) else "")] if extra.get("plain_command") else []
        lines += ["```"]
    return lines


def best_per_image(records: list[dict]) -> dict | None:
    cands = [r for r in records if r["train"] == "per-image"]
    return max(cands, key=lambda r: r["results"][0]["miou"]) if cands else None


def draw_chart(records: list[dict], schemes: tuple[str, ...], path: Path) -> None:
    """Grouped bars (one group per scheme) with Pillow; dashed lines mark the plain->plain models."""
    from PIL import Image, ImageDraw, ImageFont

    series = [  # (legend, model, train, test, colour)
        ("SETR plain -> per-image test", "setr", "none", "per-image", (190, 190, 190)),
        ("SETR shared key", "setr", "shared", "shared", (240, 160, 60)),
        ("SETR per-image keys", "setr", "per-image", "per-image", (50, 110, 200)),
        ("key-inv. plain -> per-image test", "inv", "none", "per-image", (200, 220, 190)),
        ("key-inv. per-image keys", "inv", "per-image", "per-image", (60, 160, 90)),
    ]
    W, H, left, right, top, bottom = 1000, 560, 70, 250, 50, 70
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=14)
        small = ImageFont.load_default(size=11)
    except TypeError:  # Pillow without FreeType sizes
        font = small = ImageFont.load_default()
    ph, pw = H - top - bottom, W - left - right
    values = [table_value(records, m, tr, te, s) for s in schemes for _, m, tr, te, _ in series]
    values += [table_value(records, m, "none", "none", None) for m in ("setr", "inv")]
    top_value = min(100, 10 * int((max([v for v in values if v is not None] or [0]) + 14) // 10))
    y_of = lambda v: top + ph * (1 - v / top_value)  # noqa: E731
    for t in range(0, top_value + 1, 10 if top_value <= 60 else 20):
        y = y_of(t)
        dr.line([(left, y), (left + pw, y), ], fill=(225, 225, 225))
        dr.text((left - 8, y), f"{t}", fill="black", font=small, anchor="rm")
    dr.text((12, top - 30), "mIoU (%) on the procedural street benchmark (not Cityscapes)", fill="black", font=font)
    group_w = pw / len(schemes)
    bar_w = group_w * 0.8 / len(series)
    for gi, s in enumerate(schemes):
        gx = left + gi * group_w + group_w * 0.1
        for si, (_, model, train, test, colour) in enumerate(series):
            v = table_value(records, model, train, test, s)
            if v is None:
                continue
            x0 = gx + si * bar_w
            dr.rectangle([x0, y_of(v), x0 + bar_w - 3, y_of(0)], fill=colour, outline=(60, 60, 60))
            dr.text((x0 + bar_w / 2 - 1, y_of(v) - 3), f"{v:.0f}", fill="black", font=small, anchor="mb")
        dr.text((left + gi * group_w + group_w / 2, y_of(0) + 10), SCHEME_LABELS.get(s, s), fill="black", font=font, anchor="mt")
    for label, model, colour in (("SETR plain -> plain", "setr", (200, 40, 40)), ("key-inv. plain -> plain", "inv", (120, 40, 160))):
        v = table_value(records, model, "none", "none", None)
        if v is None:
            continue
        y = y_of(v)
        for x in range(left, left + pw, 12):
            dr.line([(x, y), (min(x + 6, left + pw), y)], fill=colour, width=2)
        series.append((f"{label} ({v:.1f})", model, "", "", colour))
    dr.line([(left, top), (left, y_of(0)), (left + pw, y_of(0))], fill="black")
    for i, (legend, *_, colour) in enumerate(series):
        y = top + 10 + i * 26
        dr.rectangle([W - right + 15, y, W - right + 33, y + 14], fill=colour, outline=(60, 60, 60))
        dr.text((W - right + 40, y + 7), legend, fill="black", font=small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# -- the demo model ---------------------------------------------------------------------------------


def write_demo_asset(src: Path, folder: Path, *, name: str, scheme: str, scene_size, val_miou: float, command: str,
                     data_root: Path, crop=None, stride=None, **more) -> Path:  # fmt: skip
    """`src` as the demo model: fp16 safetensors without auxiliary heads, + JSON (`folder/demo.json`)
    saying what it is: a per-image-key model of the street benchmark, the scenes (and the generator
    version of `data_root`, its validation data) and sliding windows (if any) it was scored with, its
    val mIoU and the command that reproduces it."""
    from encseg.data.cityscapes import CLASS_NAMES, PALETTE
    from encseg.models import SETRConfig, build_setr, load_checkpoint, save_checkpoint

    model, config, src_extra = load_checkpoint(src)
    lean = build_setr(SETRConfig.from_dict(config.to_dict() | {"aux": False}))
    lean.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux_heads.")})
    extra = {"class_names": list(CLASS_NAMES), "palette": PALETTE.tolist(), "train_config": src_extra.get("train_config"),
             "name": name, "benchmark": "encseg procedural streets (not Cityscapes)",
             "encryption": {"mode": "per-image", "scheme": scheme}, "scene_size": list(scene_size),
             "inference": {"crop": list(crop), "stride": list(stride or crop)} if crop else {},
             "val_miou_per_image_keys": val_miou, "command": command,
             "invariances": list(config.invariances)} | more  # fmt: skip
    meta = streets_meta(data_root)
    if meta:
        extra["generator_version"] = meta.get("generator_version")
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(folder / "demo.safetensors", lean.half().eval(), extra=extra)


def export_demo(budget: Budget, records: list[dict], data_root: Path, folder: Path) -> Path:
    """The best per-image-key run of the experiment as the demo model."""
    best = best_per_image(records)
    if best is None:
        raise UserError("no per-image-key run to export")
    return write_demo_asset(
        Path(best["config"]["run"]["out"]) / "model.safetensors", folder, name=f"streets-{best['name']}",
        scheme=best["scheme"], scene_size=budget.size, val_miou=best["results"][0]["miou"],
        command=f"encseg experiment --budget {budget.name} --demo-out {folder}",
        data_root=data_root, crop=budget.eval_crop, stride=budget.eval_stride, run=best["name"],
        data={"generator_seed": budget.data_seed, "train": budget.n_train, "val": budget.n_val},
    )  # fmt: skip
