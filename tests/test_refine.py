"""The client's refiner: what it learns, where it runs (after decryption, on the client), its files."""

import json

import numpy as np
import pytest
import torch

from encseg.errors import UserError


def _halves(n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Label maps that say nothing (all class 0) and a truth that is all position: class 1 above, 2 below."""
    preds = np.zeros((n, h, w), np.uint8)
    truth = np.full((n, h, w), 2, np.uint8)
    truth[:, : h // 2] = 1
    return preds, truth


def test_refiner_learns_the_position_prior_that_the_labels_do_not_carry(one_thread):
    from encseg.engine.refine import fit_refiner

    preds, truth = _halves(8, 32, 64)
    untrained = fit_refiner(preds, truth, 19, steps=1, lr=0.0)[0]  # control: no learning, the labels' own vote
    trained, steps, _ = fit_refiner(preds, truth, 19, steps=150, width=8)
    assert steps == 150
    assert (untrained.refine(preds[0]) == truth[0]).mean() < 0.05
    assert (trained.refine(preds[0]) == truth[0]).mean() > 0.95
    # the grid keeps its rows at other image sizes: the prior learned at 32x64 holds at 64x128
    big_preds, big_truth = _halves(1, 64, 128)
    assert trained.config.grid_rows == 8
    assert (trained.refine(big_preds[0]) == big_truth[0]).mean() > 0.95


def test_refiner_keeps_labels_it_has_no_reason_to_change(one_thread):
    from encseg.engine.refine import fit_refiner

    rng = np.random.default_rng(0)
    truth = np.kron(rng.integers(0, 19, (16, 4, 8)), np.ones((8, 8), np.int64)).astype(np.uint8)  # random blocky scenes
    refiner = fit_refiner(truth, truth, 19, steps=60, width=8)[0]
    test = np.kron(rng.integers(0, 19, (4, 8)), np.ones((8, 8), np.int64)).astype(np.uint8)
    assert (refiner.refine(test) == test).mean() > 0.97


def test_refiner_runs_on_the_decrypted_map_on_the_client():
    from encseg.cipher import Key, Scheme, decrypt_mask
    from encseg.service.client import segment_image

    class Server:  # answers a label map in encrypted geometry: each pixel's row of the ciphertext
        def segment(self, enc):
            h, w = enc.data.shape[:2]
            return (np.arange(h)[:, None] * np.ones((1, w), np.int64) % 19).astype(np.uint8)

    class Refiner:
        def refine(self, labels):
            self.seen = labels.copy()
            return (labels + 1) % 19

    img = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    key, scheme, refiner = Key.generate(), Scheme.parse("bs-psb-np-cs", block_size=16), Refiner()
    res = segment_image(img, Server(), scheme, np.zeros((19, 3), np.uint8), key=key, refiner=refiner)
    decrypted = np.asarray(decrypt_mask(Server().segment(res.encrypted), key, scheme, res.encrypted.original_size))
    assert np.array_equal(refiner.seen, decrypted) and np.array_equal(res.server_mask, decrypted)
    assert np.array_equal(res.mask, (decrypted + 1) % 19)
    assert not np.array_equal(refiner.seen, res.encrypted_labels)  # not the server's geometry


def test_refiner_files_round_trip_and_a_foreign_file_is_a_one_line_error(tmp_path):
    from encseg.models import SETRConfig, build_setr, save_checkpoint
    from encseg.models.refine import ClientRefiner, RefinerConfig, load_refiner, save_refiner

    torch.manual_seed(0)
    ref = ClientRefiner(RefinerConfig(width=8, grid_rows=4))
    save_refiner(tmp_path / "r.safetensors", ref, {"val_miou_refined": 1.5})
    back, extra = load_refiner(tmp_path / "r.safetensors")
    assert extra == {"val_miou_refined": 1.5} and back.config == ref.config
    labels = torch.randint(0, 19, (1, 16, 32))
    assert torch.equal(back(labels), ref(labels))
    assert json.loads((tmp_path / "r.json").read_text())["config"]["grid_rows"] == 4
    cfg = SETRConfig(encoder="vit-tiny-6", decoder="naive", img_size=(32, 64))
    save_checkpoint(tmp_path / "setr.safetensors", build_setr(cfg), cfg)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    for bad, says in (("setr.safetensors", "not an encseg refiner"), ("junk.safetensors", "cannot read"),
                      ("missing.safetensors", "no refiner")):  # fmt: skip
        with pytest.raises(UserError, match=says) as err:
            load_refiner(tmp_path / bad)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="out of range"):
        RefinerConfig.from_dict({"width": 0})


def test_train_refiner_and_evaluate_with_it_from_the_command_line(run_cli, tmp_path, one_thread):
    from encseg.data import generate_streets
    from encseg.models import SETRConfig, build_setr, save_checkpoint

    data = tmp_path / "data"
    generate_streets(data, 6, 3, (32, 64), seed=2, workers=1)
    cfg = SETRConfig(encoder="vit-tiny-6", decoder="token", position_embedding=False, canonical=True, img_size=(32, 64))
    save_checkpoint(tmp_path / "m.safetensors", build_setr(cfg), cfg,
                    {"encryption": {"mode": "per-image", "scheme": "bs-psb-np-cs"}})  # fmt: skip
    code, out, err = run_cli("train-refiner", "--checkpoint", tmp_path / "m.safetensors", "--data", data,
                             "--steps", "3", "--out", tmp_path / "ref")  # fmt: skip
    assert code == 0, err
    assert "server alone" in out and "with the refiner" in out
    summary = json.loads((tmp_path / "ref" / "refiner.json").read_text())["extra"]
    assert summary["steps"] == 3 and summary["scheme"] == "bs-psb-np-cs" and summary["val_images"] == 3
    code, out, err = run_cli("evaluate", "--checkpoint", tmp_path / "m.safetensors", "--data", data, "--encryption",
                             "per-image", "--refiner", tmp_path / "ref" / "refiner.safetensors")  # fmt: skip
    assert code == 0, err
    assert "the client's refiner after decryption" in out
    code, _, err = run_cli("evaluate", "--checkpoint", tmp_path / "m.safetensors", "--data", data, "--refiner",
                           tmp_path / "nothing.safetensors")  # fmt: skip
    assert code == 2 and err.startswith("error:") and "no refiner" in err
