"""Distillation from a plain teacher: the soft targets are the teacher's logits on the plain crop,
moved into the sample's own encrypted geometry (the same flip, the same fresh key), and training
runs with them."""

from __future__ import annotations

import contextlib
import csv

import numpy as np
import pytest
import torch
from torch import nn

from encseg.cipher import CipherTransform, Key, Scheme
from encseg.cipher.transform import apply_geometry, decrypt_mask, encrypt, encrypt_mask
from encseg.data import generate_streets
from encseg.data.augment import AugmentConfig, TrainTransform
from encseg.engine.config import TrainConfig, load_config
from encseg.engine.train import distill_loss, soft_targets, train
from encseg.errors import UserError
from encseg.models import load_checkpoint, normalize
from encseg.models.checkpoint import read_checkpoint_meta

H, W = 32, 64
AUG = AugmentConfig(crop=(H, W), ratio_range=(1.0, 1.0), cat_max_ratio=1.0, flip_prob=1.0, photometric=False)


def scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (H, W), dtype=np.uint8)
    label[:4, :8] = 255  # some unlabelled pixels
    return image, label


class Teacher(nn.Module):
    """A stand-in teacher whose logits depend on every pixel's neighbourhood (so geometry matters)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_soft_targets_are_the_teachers_logits_in_the_samples_encrypted_geometry():
    scheme = Scheme.parse("bs-psb-np-cs", block_size=16)
    key = Key.generate()  # a known key (shared mode) so the test can decrypt; training uses per-image keys
    transform = TrainTransform(AUG, CipherTransform(scheme, "shared", key), seed=0, geometry=True)
    image, label = scene()
    enc, enc_label, plain, where = transform(image, label, (0, 0))
    flipped = image[:, ::-1]
    assert np.array_equal(plain.numpy().transpose(1, 2, 0), flipped)  # the teacher sees the flipped plain crop
    assert np.array_equal(enc.numpy().transpose(1, 2, 0), encrypt(np.ascontiguousarray(flipped), key, scheme).data)
    assert np.array_equal(enc_label.numpy(), encrypt_mask(np.ascontiguousarray(label[:, ::-1]), key, scheme))
    assert sorted(where.tolist()) == list(range(H * W))  # a permutation of the pixels

    teacher = Teacher().eval()
    with torch.no_grad():
        logits = teacher(normalize(plain[None]))
    targets = soft_targets(teacher, plain[None], where[None], (H, W), contextlib.nullcontext())
    assert targets.shape == logits.shape
    assert torch.equal(targets, apply_geometry(logits, key, scheme))  # the key's geometry, to the bit
    assert torch.equal(decrypt_mask(targets[0], key, scheme, (H, W)), logits[0])  # decrypting gives them back
    assert not torch.equal(targets, logits)  # the geometry did move them


def test_the_loader_geometry_follows_each_fresh_key_without_the_key():
    """Per-image keys: nobody outside the cipher knows the key, yet the index moves the plain crop's
    pixels exactly where the ciphertext has them (geometry-only scheme), key after key."""
    scheme = Scheme.parse("bs-psb", block_size=16)
    transform = TrainTransform(AUG, CipherTransform(scheme, "per-image"), seed=0, geometry=True)
    image, label = scene(1)
    seen = set()
    for _ in range(3):
        enc, enc_label, plain, where = transform(image, label, (0, 0))
        assert torch.equal(enc.reshape(3, -1), plain.reshape(3, -1)[:, where])
        assert torch.equal(enc_label.reshape(-1), torch.from_numpy(label[:, ::-1].astype(np.int64)).reshape(-1)[where])
        seen.add(tuple(where[:64].tolist()))
    assert len(seen) == 3  # a fresh key (and geometry) every draw


def test_without_a_cipher_the_geometry_is_the_identity():
    transform = TrainTransform(AUG, None, seed=0, geometry=True)
    image, label = scene(2)
    enc, _, plain, where = transform(image, label, (0, 0))
    assert torch.equal(enc, plain) and torch.equal(where, torch.arange(H * W))


def test_distill_loss_is_zero_on_the_targets_and_ignores_unlabelled_pixels():
    torch.manual_seed(0)
    targets = torch.randn(2, 5, 4, 6)
    labels = torch.randint(0, 5, (2, 4, 6))
    labels[:, 0] = 255
    assert distill_loss(targets, targets, labels, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 5, 4, 6)
    loss = distill_loss(student, targets, labels, 2.0)
    assert loss.item() > 0
    moved = student.clone()
    moved[:, :, 0] += 10.0  # only unlabelled pixels change
    assert distill_loss(moved, targets, labels, 2.0).item() == pytest.approx(loss.item())


def test_distillation_is_off_by_default_and_leaves_the_config_dict_unchanged():
    cfg = load_config(None, "streets-cpu", [])
    assert cfg.distill.teacher is None and "distill" not in cfg.to_dict()
    on = load_config(None, "streets-cpu", ["distill.teacher=/x/model.safetensors", "distill.weight=0.5"])
    assert on.to_dict()["distill"] == {"teacher": "/x/model.safetensors", "weight": 0.5, "temperature": 2.0}
    assert TrainConfig.from_dict(on.to_dict()).to_dict() == on.to_dict()
    with pytest.raises(UserError, match="temperature"):
        load_config(None, "streets-cpu", ["distill.teacher=/x/model.safetensors", "distill.temperature=0"])


@pytest.fixture(scope="module")
def streets(tmp_path_factory):
    root = tmp_path_factory.mktemp("streets")
    generate_streets(root, 6, 1, (64, 128), seed=3, workers=1)
    return root


def test_training_with_a_plain_teacher_runs_and_records_it(streets, tmp_path):
    base = [f'data.root="{streets}"', "run.steps=2", "run.ckpt_every=2"]
    teacher = train(load_config(None, "smoke", base + [f'run.out="{tmp_path / "teacher"}"']), progress=False)
    student = [f'run.out="{tmp_path / "student"}"', 'encryption.mode="per-image"', 'encryption.scheme="bs-psb-np-cs"',
               'model.decoder="token"', "model.position_embedding=false", "model.canonical=true", "model.pixel_group=16",
               f'distill.teacher="{teacher}"', "distill.weight=1.0", "distill.temperature=2.0"]  # fmt: skip
    final = train(load_config(None, "smoke", base + student), progress=False)
    with open(tmp_path / "student" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["loss"]) > float(r["loss_main"]) for r in rows)  # the KL term is in the loss
    assert read_checkpoint_meta(final)["extra"]["train_config"]["distill"]["teacher"] == str(teacher)
    load_checkpoint(final)
