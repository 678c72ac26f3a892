"""The README's demo command: the whole client/server round trip on a held-out scene."""

import json

import numpy as np
from PIL import Image


def test_demo_writes_every_picture_and_an_honest_miou(run_cli, tmp_path):
    from encseg.data.streets import render_scene, scene_seed
    from encseg.engine.evaluate import confusion_matrix, iou_from_confusion
    from encseg.models import SETRConfig, build_setr, save_checkpoint

    cfg = SETRConfig(encoder="vit-tiny-6", decoder="naive", img_size=(64, 128))
    save_checkpoint(tmp_path / "m.safetensors", build_setr(cfg), cfg, {"scheme": "bs-ps-np-cs"})
    out = tmp_path / "out"
    code, stdout, err = run_cli("demo", "--checkpoint", tmp_path / "m.safetensors", "--out", out, "--size", "64x128", "--scene", "3")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scheme"] == "bs-ps-np-cs" and "not Cityscapes" in summary["benchmark"]
    for name in summary["files"]:
        assert (out / name).stat().st_size > 0
    plain = np.asarray(Image.open(out / "1_plain.png"))
    enc = np.asarray(Image.open(out / "2_encrypted_what_the_server_sees.png"))
    img, truth = render_scene(scene_seed(0, "test", 3), (64, 128))
    assert np.array_equal(plain, img) and not np.array_equal(enc, img)
    labels = np.asarray(Image.open(out / "prediction_labels.png"))
    miou = np.nanmean(iou_from_confusion(confusion_matrix(labels, truth))) * 100
    assert abs(summary["mIoU"] - miou) < 0.01
    assert not list(out.glob("*.key")) and "key" not in " ".join(summary["files"])


def test_demo_without_checkpoint_is_a_one_line_error(run_cli, tmp_path):
    code, _, err = run_cli("demo", "--checkpoint", tmp_path / "missing.safetensors", "--out", tmp_path / "o")
    assert code == 2 and err.startswith("error:") and "does not exist" in err


def test_demo_says_when_the_model_was_trained_on_another_generator_version(run_cli, tmp_path):
    from encseg.data.streets import GENERATOR_VERSION
    from encseg.models import SETRConfig, build_setr, save_checkpoint

    cfg = SETRConfig(encoder="vit-tiny-6", decoder="naive", img_size=(64, 128))
    for version, warned in ((GENERATOR_VERSION, False), (GENERATOR_VERSION - 1, True)):
        path = tmp_path / f"m{version}.safetensors"
        save_checkpoint(path, build_setr(cfg), cfg, {"scheme": "bs-np-cs", "generator_version": version})
        code, _, err = run_cli("demo", "--checkpoint", path, "--out", tmp_path / f"o{version}", "--size", "64x128")
        assert code == 0, err
        assert (f"generator version {version}" in err) == warned


def test_demo_runs_the_refiner_shipped_beside_the_model_on_the_client(run_cli, tmp_path):
    from encseg.data.streets import render_scene, scene_seed
    from encseg.engine.evaluate import confusion_matrix, iou_from_confusion
    from encseg.models import SETRConfig, build_setr, save_checkpoint
    from encseg.models.refine import ClientRefiner, RefinerConfig, save_refiner

    cfg = SETRConfig(encoder="vit-tiny-6", decoder="naive", img_size=(64, 128))
    extra = {"scheme": "bs-psb-np-cs", "val_miou_per_image_keys": 30.0, "plain_val_miou": 50.0,
             "refiner": {"file": "refiner.safetensors", "val_miou_refined": 45.0}}  # fmt: skip
    save_checkpoint(tmp_path / "m.safetensors", build_setr(cfg), cfg, extra)
    save_refiner(tmp_path / "refiner.safetensors", ClientRefiner(RefinerConfig(width=4, grid_rows=16)))
    out = tmp_path / "out"
    code, stdout, err = run_cli("demo", "--checkpoint", tmp_path / "m.safetensors", "--out", out, "--size", "64x128")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert "7_decrypted_server_labels_before_the_refiner.png" in summary["files"]
    _, truth = render_scene(scene_seed(0, "test", 0), (64, 128))
    server = np.asarray(Image.open(out / "7_decrypted_server_labels_before_the_refiner.png").convert("RGB"))
    assert server.shape == (64, 128, 3)
    labels = np.asarray(Image.open(out / "prediction_labels.png"))
    assert abs(summary["mIoU"] - np.nanmean(iou_from_confusion(confusion_matrix(labels, truth))) * 100) < 0.01
    assert "45.0 mIoU with the client's refiner (30.0 from the server's labels alone)" in stdout and "0.90x" in stdout
    code, stdout, err = run_cli("demo", "--checkpoint", tmp_path / "m.safetensors", "--out", tmp_path / "o2", "--size",
                                "64x128", "--no-refiner")  # fmt: skip
    assert code == 0, err
    assert "mIoU_server_alone" not in json.loads((tmp_path / "o2" / "summary.json").read_text()) and "0.60x" in stdout
