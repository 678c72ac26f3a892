"""Engine: configs, the resumable training loop, DDP on CPU, evaluation protocol, the experiment runner."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from encseg.cipher import Scheme, load_key
from encseg.data import PALETTE, CityscapesDataset, generate_streets
from encseg.engine.config import TrainConfig, load_config, parse_override, preset
from encseg.engine.evaluate import EvalResult, confusion_matrix, evaluate, iou_from_confusion
from encseg.engine.train import (
    ResumableSampler,
    _optimizer_from_tensors,
    _optimizer_tensors,
    lr_factor,
    train,
)
from encseg.errors import UserError
from encseg.models import IMAGENET_MEAN, IMAGENET_STD, SETRConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def streets(tmp_path_factory):
    root = tmp_path_factory.mktemp("streets")
    generate_streets(root, 12, 3, (64, 128), seed=1, workers=1)
    return root


def smoke(streets, out, *extra) -> TrainConfig:
    return load_config(None, "smoke", [f'data.root="{streets}"', f'run.out="{out}"', *extra])


# -- configuration -----------------------------------------------------------------------------------


def test_toml_config_starts_from_its_preset_and_set_overrides_win(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('preset = "streets-cpu"\n[encryption]\nmode = "per-image"\nscheme = "bs-ps-np-cs"\n[run]\nsteps = 77\n'
                    '[data]\ncrop = [64, 128]\n')  # fmt: skip
    cfg = load_config(path, None, ["run.steps=12", "optim.lr=0.5"])
    assert cfg.encryption.mode == "per-image" and cfg.run.steps == 12 and cfg.optim.lr == 0.5
    assert cfg.data.crop == (64, 128) and cfg.model.encoder == preset("streets-cpu").model.encoder
    assert cfg.scheme().name == "bs-ps-np-cs" and cfg.scheme().block_size == cfg.model.patch_size
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_config_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown setting run.stepz"):
        load_config(None, "smoke", ["run.stepz=3"])
    with pytest.raises(UserError, match="encryption.mode"):
        load_config(None, "smoke", ['encryption.mode="sometimes"'])
    with pytest.raises(UserError, match="multiple of the patch size"):
        load_config(None, "smoke", ["data.crop=[60, 128]"])
    with pytest.raises(UserError, match="unknown preset"):
        load_config(None, "nope")
    with pytest.raises(UserError, match="section.key=value"):
        parse_override("steps=3")
    with pytest.raises(UserError, match="unknown encoder"):
        load_config(None, "smoke", ['model.encoder="vit-huge"'])
    (tmp_path / "bad.toml").write_text("[run\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_paper_preset_is_vit_large_pup_768_batch_8_80k():
    cfg = preset("cityscapes-pup-large")
    assert (cfg.model.encoder, cfg.model.decoder, cfg.data.crop, cfg.run.steps) == ("vit-large", "pup", (768, 768), 80000)
    assert cfg.run.batch_size * 8 == 8 and cfg.optim.name == "sgd" and cfg.optim.head_lr_mult == 10.0


def test_poly_schedule_with_warmup():
    cfg = load_config(None, "smoke", ["run.steps=100", "optim.lr=0.01", "optim.min_lr=0.0001", "optim.warmup_steps=10"])
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(0.99 * 0.9**0.9 + 0.01)
    assert lr_factor(100, cfg) == pytest.approx(0.01)
    factors = [lr_factor(s, cfg) for s in range(10, 100)]
    assert all(a > b for a, b in zip(factors, factors[1:]))


# -- the sampler and the optimizer state -----------------------------------------------------------------


def test_sampler_splits_ranks_and_resumes_mid_epoch():
    data = list(range(20))
    a, b = ResumableSampler(data, 2, 0, seed=3), ResumableSampler(data, 2, 1, seed=3)
    for s in (a, b):
        s.set_epoch(4)
    ia, ib = list(a), list(b)
    assert all(e == 4 for e, _ in ia + ib)
    assert len(ia) == len(ib) == 10 and not {i for _, i in ia} & {i for _, i in ib}
    a.skip = 6
    assert list(a) == ia[6:] and len(a) == 4
    a.skip = 0
    a.set_epoch(5)
    assert [i for _, i in a] != [i for _, i in ia]


def test_optimizer_state_round_trips_through_tensors_and_json():
    model = nn.Linear(3, 2)
    for opt in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), torch.optim.AdamW(model.parameters(), lr=0.1)):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        tensors, meta = _optimizer_tensors(opt)
        json.dumps(meta)
        restored = _optimizer_from_tensors(tensors, json.loads(json.dumps(meta)))
        opt2 = type(opt)(model.parameters(), lr=0.1)
        opt2.load_state_dict(restored)
        for k, v in opt.state_dict()["state"][0].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt2.state_dict()["state"][0][k]))


# -- training: checkpoints and exact resume ---------------------------------------------------------------


def _log(out: Path) -> list[dict]:
    with (out / "log.csv").open() as f:
        return list(csv.DictReader(f))


def _cli(*args, env_extra=None, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "encseg", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)  # fmt: skip


@pytest.mark.slow
def test_killed_run_resumes_exactly_without_losing_or_repeating_a_step(streets, tmp_path):
    steps = 40
    common = ["train", "--preset", "smoke", "--no-progress", "--set", f'data.root="{streets}"', "--set", f"run.steps={steps}",
              "--set", "run.ckpt_every=4", "--set", "run.log_every=1", "--set", "data.workers=1"]  # fmt: skip
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    p = _cli(*common, "--set", f'run.out="{ref}"')
    assert p.wait(timeout=600) == 0, p.stdout.read()

    p = _cli(*common, "--set", f'run.out="{cut}"')
    deadline = time.time() + 600
    while time.time() < deadline:
        latest = cut / "latest.json"
        if latest.exists() and json.loads(latest.read_text())["step"] >= 8:
            break
        assert p.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (cut / "model.safetensors").exists()
    killed_at = json.loads((cut / "latest.json").read_text())["step"]
    assert killed_at < steps
    logged_before = [int(r["step"]) for r in _log(cut)]

    p = _cli(*common, "--set", f'run.out="{cut}"', "--resume")
    assert p.wait(timeout=600) == 0, p.stdout.read()
    rows = _log(cut)
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))  # none lost, none repeated
    assert max(logged_before) >= killed_at  # the killed run had logged steps past its checkpoint
    assert [r["loss"] for r in rows] == [r["loss"] for r in _log(ref)]
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((cut / "checkpoints").iterdir())) == 2  # run.keep


def test_stop_after_and_resume_match_an_uninterrupted_run(streets, tmp_path):
    cfg = smoke(streets, tmp_path / "a", "run.steps=6", "run.ckpt_every=3")
    train(cfg, progress=False)
    cfg_b = smoke(streets, tmp_path / "b", "run.steps=6", "run.ckpt_every=3")
    train(cfg_b, progress=False, stop_after=2)
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["step"] == 2
    train(cfg_b, resume=True, progress=False)
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _log(tmp_path / "b")] == [str(s) for s in range(1, 7)]


def test_inverse_sqrt_class_weights_favour_rare_classes(streets):
    from encseg.engine.train import class_weights

    ds = CityscapesDataset(streets, "train")
    w = class_weights(ds, 19)
    counts = sum(np.bincount(ds.load(i)[1].ravel(), minlength=256)[:19] for i in range(len(ds)))
    seen = counts > 0
    assert w[torch.from_numpy(seen)].mean().item() == pytest.approx(1.0, rel=1e-5)
    rare, common = int(np.argmin(np.where(seen, counts, np.inf))), int(np.argmax(counts))
    assert w[rare] > w[common]
    assert torch.equal(w, class_weights(ds, 19))
    lin = class_weights(ds, 19, power=1.0)  # "inverse": steeper, but never more than 100x apart
    assert lin[rare] / lin[common] > w[rare] / w[common]
    assert lin[torch.from_numpy(seen)].max() / lin[torch.from_numpy(seen)].min() <= 100 + 1e-3


def test_gradient_accumulation_counts_optimizer_steps(streets, tmp_path):
    cfg = smoke(streets, tmp_path / "acc", "run.steps=3", "run.accum=2", "run.batch_size=1")
    final = train(cfg, progress=False)
    meta = json.loads(final.with_suffix(".json").read_text())
    assert meta["extra"]["step"] == 3 and len(_log(tmp_path / "acc")) == 3


def test_shared_and_per_image_encrypted_training_runs(streets, tmp_path):
    cfg = smoke(streets, tmp_path / "shared", "run.steps=2", 'encryption.mode="shared"', 'encryption.scheme="bs-ps4-np-cs"')
    train(cfg, progress=False)
    key_file = tmp_path / "shared" / "shared.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    load_key(key_file)
    assert "shared.key" not in (tmp_path / "shared" / "model.json").read_text().replace(str(key_file), "")
    cfg = smoke(streets, tmp_path / "pi", "run.steps=2", 'encryption.mode="per-image"')
    train(cfg, progress=False)
    assert not list((tmp_path / "pi").glob("*.key"))  # per-image keys are never stored


@pytest.mark.slow
def test_torchrun_two_cpu_processes_with_gloo(streets, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "encseg",
           "train", "--preset", "smoke", "--no-progress", "--set", f'data.root="{streets}"', "--set", f'run.out="{out}"',
           "--set", "run.steps=3", "--set", "run.ckpt_every=2", "--set", 'model.norm="syncbn"',
           "--set", "encryption.mode=shared"]  # fmt: skip
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = _log(out)
    assert [r["step"] for r in rows] == ["1", "2", "3"]  # one writer: rank 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["extra"]["world_size"] == 2 and meta["extra"]["step"] == 3
    assert p.stdout.count("model: ") == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    assert (out / "shared.key").stat().st_mode & 0o777 == 0o600  # made once, by rank 0, before rank 1 read it


def test_train_command_needs_a_config_or_preset(run_cli):
    code, _, err = run_cli("train")
    assert code == 2 and "--config" in err


# -- evaluation ---------------------------------------------------------------------------------------------


def test_miou_follows_the_cityscapes_protocol():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 5, 7]], np.uint8)
    conf = confusion_matrix(pred, gt)
    assert conf.sum() == 6  # ignore pixels skipped
    iou = iou_from_confusion(conf)
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[2] == pytest.approx(1 / 2)
    assert np.isnan(iou[3:]).all()  # neither present nor predicted: undefined, not zero
    r = EvalResult(conf, 1)
    assert r.miou == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert "| road |" in r.table() and "n/a" in r.table()


class PaletteOracle(nn.Module):
    """A 'model' that reads each pixel's class from its colour (images coded with the palette)."""

    def __init__(self):
        super().__init__()
        self.config = SETRConfig(encoder="vit-tiny-6", decoder="naive", img_size=(64, 128))

    def forward(self, x):
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        rgb = x * std + mean  # [B,3,H,W]
        pal = torch.tensor(PALETTE, dtype=torch.float32)  # [19,3]
        d = ((rgb.unsqueeze(1) - pal.view(1, 19, 3, 1, 1)) ** 2).sum(2)
        return -d


@pytest.fixture
def coded_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("val",):
        (tmp_path / "leftImg8bit" / split / "c").mkdir(parents=True)
        (tmp_path / "gtFine" / split / "c").mkdir(parents=True)
        for k in range(3):
            lab = np.repeat(np.repeat(rng.integers(0, 19, (5, 8)), 8, 0), 8, 1).astype(np.uint8)[:40, :60]
            lab[:3, :3] = 255
            Image.fromarray(PALETTE[np.minimum(lab, 18)]).save(tmp_path / "leftImg8bit" / split / "c" / f"c_{k}_0_leftImg8bit.png")
            Image.fromarray(lab).save(tmp_path / "gtFine" / split / "c" / f"c_{k}_0_gtFine_labelTrainIds.png")
    return CityscapesDataset(tmp_path, "val")


@pytest.mark.parametrize("scheme", ["bs", "bs-ps", "bs-ps4"])
def test_encrypted_evaluation_decrypts_each_prediction_with_its_own_key(coded_dataset, scheme, tmp_path):
    oracle = PaletteOracle()
    plain = evaluate(oracle, coded_dataset)
    assert plain.miou == pytest.approx(100.0)
    s = Scheme.parse(scheme, block_size=16)
    enc = evaluate(oracle, coded_dataset, encryption="per-image", scheme=s, batch_size=2, save_dir=tmp_path / "png")
    assert enc.miou == pytest.approx(100.0)  # 40x60 images: padded to 48x64, scored after decrypt + crop
    assert len(list((tmp_path / "png").glob("*_pred_encrypted_geometry.png"))) == 3
    slide = evaluate(oracle, coded_dataset, encryption="per-image", scheme=s, crop=32, stride=16)
    assert slide.miou == pytest.approx(100.0)


def test_forgetting_to_decrypt_would_be_caught(coded_dataset, monkeypatch):
    import encseg.cipher

    monkeypatch.setattr(encseg.cipher, "decrypt_mask", lambda x, key, scheme, size: np.asarray(x)[: size[0], : size[1]])
    r = evaluate(PaletteOracle(), coded_dataset, encryption="per-image", scheme=Scheme.parse("bs", block_size=16))
    assert r.miou < 50


def test_evaluate_command_on_a_trained_checkpoint(streets, tmp_path, run_cli):
    train(smoke(streets, tmp_path / "m", "run.steps=2"), progress=False)
    code, out, err = run_cli("evaluate", "--checkpoint", tmp_path / "m" / "model.safetensors", "--data", streets,
                             "--encryption", "per-image", "--scheme", "bs-np-cs", "--json", tmp_path / "r.json",
                             "--save-png", tmp_path / "png")  # fmt: skip
    assert code == 0, err
    assert "mIoU" in out and "per-image keys, scheme bs-np-cs" in out and "| sky |" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["images"] == 3 and len(r["confusion"]) == 19
    assert len(list((tmp_path / "png").glob("*_overlay.png"))) == 3
    # sliding windows given as HxW (non-square, as the CPU budget evaluates) and as one number
    ckpt = tmp_path / "m" / "model.safetensors"
    for crop, stride in (("32x64", "16x32"), ("32", "16")):
        code, out, err = run_cli("evaluate", "--checkpoint", ckpt, "--data", streets, "--crop", crop, "--stride", stride,
                                 "--json", tmp_path / "s.json")  # fmt: skip
        assert code == 0, err
        assert json.loads((tmp_path / "s.json").read_text())["images"] == 3
    code, _, err = run_cli("evaluate", "--checkpoint", ckpt, "--data", streets, "--crop", "32by64")
    assert code == 2 and err.startswith("error: --crop:") and "HEIGHTxWIDTH" in err


# -- the experiment -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_experiment_writes_the_table_the_chart_and_the_demo_model(tmp_path, monkeypatch):
    from encseg.engine import experiment

    tiny = experiment.Budget(name="tiny", train_preset="smoke", steps=2, size=(64, 128), n_train=6, n_val=2,
                             schemes=("bs-np-cs", "bs-ps4-np-cs"), parallel=2,
                             eval_crop=(32, 64), eval_stride=(16, 32))  # fmt: skip
    monkeypatch.setitem(experiment.BUDGETS, "tiny", tiny)
    md, png, demo = tmp_path / "results.md", tmp_path / "results.png", tmp_path / "assets"
    records = experiment.run_experiment("tiny", tmp_path / "runs", tmp_path / "data", md, png, demo)
    assert len(records) == 1 + 2 * 2 + 1 + 2
    text = md.read_text()
    assert "not Cityscapes" in text and "encseg experiment --budget tiny" in text
    from encseg.data.streets import GENERATOR_VERSION

    assert f"generator version {GENERATOR_VERSION}, seed 0" in text
    assert "(64x128 crops, scale 0.75-1.25, flip, photometric distortion)" in text  # the smoke preset's augmentation
    cpu = preset("streets-cpu").to_dict()["data"]
    assert experiment.augmentation_text(cpu) == "128x256 crops, no rescaling, flip, no photometric distortion"
    assert text.count("| SETR |") == 4 and text.count("| key-invariant SETR |") == 3
    assert "—" not in text.split("## How")[0]  # every cell of the table is filled
    assert Image.open(png).size == (1000, 560)
    meta = json.loads((demo / "demo.json").read_text())
    assert meta["extra"]["encryption"]["mode"] == "per-image" and meta["config"]["aux"] is False
    assert meta["extra"]["inference"] == {"crop": [32, 64], "stride": [16, 32]}
    assert meta["extra"]["scene_size"] == [64, 128]
    assert "Sliding-window inference (32x64 windows, stride 16x32" in text
    assert "## The demo model" in text and f"{meta['extra']['val_miou_per_image_keys']}" in text
    weights = load_file(str(demo / "demo.safetensors"))
    assert all(v.dtype in (torch.float16, torch.int64) for v in weights.values())
    from encseg.models import load_checkpoint

    load_checkpoint(demo / "demo.safetensors")
    # a second call finds every run done and only rewrites the report
    t0 = time.perf_counter()
    experiment.run_experiment("tiny", tmp_path / "runs", tmp_path / "data", md, png)
    assert time.perf_counter() - t0 < 60
    assert f"the invocation that trained {len(records)} of the {len(records)} runs took" in md.read_text()  # its time survives


def test_experiment_neither_reuses_nor_resumes_runs_made_on_other_data(tmp_path):
    from encseg.engine import experiment

    budget = experiment.Budget(name="tiny", train_preset="smoke", steps=2, size=(64, 128), n_train=6, n_val=2)
    run = experiment.plan_runs(budget, tmp_path / "data", tmp_path / "runs")[0]
    data = {"generator_version": 5, "seed": 0, "size": [64, 128], "train": 6, "val": 2}
    newer = data | {"generator_version": 6}
    folder = Path(run.cfg.run.out)
    assert experiment._done(run, data) is None and not experiment._stale(run, data)  # nothing there yet
    folder.mkdir(parents=True)
    (folder / "data.json").write_text(json.dumps(data))
    record = {"name": run.name, "config": run.cfg.to_dict(), "data": data, "results": []}
    (folder / "results.json").write_text(json.dumps(record))
    assert experiment._done(run, data) == record and not experiment._stale(run, data)
    assert experiment._done(run, newer) is None and experiment._stale(run, newer)
    (folder / "results.json").unlink()  # interrupted: only checkpoints, which resume on the same data only
    (folder / "checkpoints").mkdir()
    assert not experiment._stale(run, data) and experiment._stale(run, newer)
    (folder / "data.json").unlink()  # a folder from before runs recorded their data is not trusted
    assert experiment._stale(run, data)


def test_export_demo_stores_a_per_image_model_in_fp16_with_its_score(streets, tmp_path, run_cli):
    train(smoke(streets, tmp_path / "pi", "run.steps=2", 'encryption.mode="per-image"', "model.aux=true"), progress=False)
    code, out, err = run_cli("export-demo", "--checkpoint", tmp_path / "pi" / "model.safetensors", "--out", tmp_path / "assets",
                             "--data", streets, "--command", "encseg train ...")  # fmt: skip
    assert code == 0, err
    meta = json.loads((tmp_path / "assets" / "demo.json").read_text())
    assert meta["config"]["aux"] is False and meta["extra"]["encryption"] == {"mode": "per-image", "scheme": "bs-np-cs"}
    assert meta["extra"]["scene_size"] == [64, 128] and meta["extra"]["command"] == "encseg train ..."
    from encseg.data.streets import GENERATOR_VERSION

    assert meta["extra"]["generator_version"] == GENERATOR_VERSION  # the demo warns when its scenes come from another
    assert meta["extra"]["inference"] == {}  # scenes no larger than the model's size: whole images
    weights = load_file(str(tmp_path / "assets" / "demo.safetensors"))
    assert not any(k.startswith("aux_heads.") for k in weights)
    assert all(v.dtype in (torch.float16, torch.int64) for v in weights.values())
    train(smoke(streets, tmp_path / "plain", "run.steps=1"), progress=False)
    code, _, err = run_cli("export-demo", "--checkpoint", tmp_path / "plain" / "model.safetensors", "--data", streets,
                           "--out", tmp_path / "x")  # fmt: skip
    assert code == 2 and "per-image" in err
    # the plain reference at the same budget: scored on plain images, stored for the demo's price line
    code, out, err = run_cli("export-demo", "--checkpoint", tmp_path / "pi" / "model.safetensors", "--out", tmp_path / "ref",
                             "--data", streets, "--plain", tmp_path / "plain" / "model.safetensors",
                             "--plain-command", "encseg train plain ...")  # fmt: skip
    assert code == 0 and "plain SETR at the same budget" in out, err
    extra = json.loads((tmp_path / "ref" / "demo.json").read_text())["extra"]
    assert isinstance(extra["plain_val_miou"], float) and extra["plain_command"] == "encseg train plain ..."
    code, _, err = run_cli("export-demo", "--checkpoint", tmp_path / "pi" / "model.safetensors", "--out", tmp_path / "y",
                           "--data", streets, "--plain", tmp_path / "pi" / "model.safetensors")  # fmt: skip
    assert code == 2 and "plain SETR on plain images" in err and not (tmp_path / "y").exists()
    # sliding windows: scored that way, stored, and picked up by the service's Segmenter
    code, _, err = run_cli("export-demo", "--checkpoint", tmp_path / "pi" / "model.safetensors", "--out", tmp_path / "win",
                           "--data", streets, "--crop", "32x64")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "win" / "demo.json").read_text())["extra"]["inference"] == {"crop": [32, 64], "stride": [16, 48]}
    from encseg.service.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(tmp_path / "win" / "demo.safetensors")
    assert seg.crop == (32, 64) and seg.stride == (16, 48) and seg.scene_size == (64, 128)
    assert Segmenter.from_checkpoint(tmp_path / "win" / "demo.safetensors", crop=64).crop == 64  # an explicit crop wins
