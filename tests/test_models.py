"""SETR models: shapes, gradients, aux heads, position-embedding resize, equivariance, checkpoints, predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from encseg.errors import UserError
from encseg.models import (
    VIT_PRESETS,
    SETRConfig,
    build_setr,
    load_checkpoint,
    normalize,
    predict,
    resize_pos_embed,
    save_checkpoint,
    scale_taps,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two on a shared 2-core box


# (decoder, invariant_embedding): every decoder, the token decoder with both patch embeddings
VARIANTS = [("naive", False), ("pup", False), ("mla", False), ("token", False), ("token", True)]


def tiny(decoder: str = "naive", invariant: bool = False, **kw) -> SETRConfig:
    kw.setdefault("num_classes", 5)
    kw.setdefault("img_size", (32, 64))
    kw.setdefault("position_embedding", not invariant and decoder != "token")
    return SETRConfig(encoder="vit-tiny-6", decoder=decoder, invariant_embedding=invariant, **kw)


# --- block scramble / pixel shuffle with plain torch permutations (independent of encseg.cipher) ---

def to_blocks(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B,C,H,W] -> [B, nblocks, C, p, p], blocks row-major."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C, p, p)


def from_blocks(b: torch.Tensor, H: int, W: int) -> torch.Tensor:
    B, _, C, p, _ = b.shape
    return b.reshape(B, H // p, W // p, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def block_scramble(x: torch.Tensor, p: int, perms: list[torch.Tensor]) -> torch.Tensor:
    """Permute the p x p blocks of each image with its own permutation (gather: out[i] = in[perm[i]])."""
    blocks = to_blocks(x, p)
    return from_blocks(torch.stack([blocks[i, perm] for i, perm in enumerate(perms)]), *x.shape[-2:])


def pixel_shuffle(x: torch.Tensor, p: int, perms: list[torch.Tensor]) -> torch.Tensor:
    """Permute pixel positions inside every block; one permutation per image, shared by its blocks."""
    blocks = to_blocks(x, p)
    B, N, C = blocks.shape[:3]
    flat = blocks.reshape(B, N, C, p * p)
    out = torch.stack([flat[i][..., perm] for i, perm in enumerate(perms)]).reshape(B, N, C, p, p)
    return from_blocks(out, *x.shape[-2:])


def logits(model, x):
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


# --- shapes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", list(VIT_PRESETS))
@pytest.mark.parametrize("decoder,invariant", VARIANTS)
def test_every_preset_and_decoder_gives_input_sized_logits_at_non_square_sizes(encoder, decoder, invariant):
    # built on the meta device: shapes of vit-large without allocating it
    size = (128, 256) if decoder in ("naive", "mla") else (96, 160)
    with torch.device("meta"):
        cfg = SETRConfig(encoder=encoder, decoder=decoder, num_classes=19, img_size=(64, 64),
                         invariant_embedding=invariant, position_embedding=not invariant)
        model = build_setr(cfg)
        out = model(torch.empty(2, 3, *size))
        assert out["out"].shape == (2, 19, *size)
        assert len(out["aux"]) == (4 if decoder == "mla" else 3)
        assert all(a.shape == (2, 19, *size) for a in out["aux"])
        model.eval()
        assert model(torch.empty(1, 3, *size)).shape == (1, 19, *size)
    assert model.encoder.dim == VIT_PRESETS[encoder].dim
    assert len(model.encoder.blocks) == VIT_PRESETS[encoder].depth


@pytest.mark.parametrize("decoder,invariant", VARIANTS)
@pytest.mark.parametrize("patch,size", [(16, (48, 80)), (8, (40, 24))])
def test_real_forward_shapes_for_other_sizes_and_patch_sizes(decoder, invariant, patch, size):
    torch.manual_seed(0)
    model = build_setr(tiny(decoder, invariant, patch_size=patch)).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, *size))
    assert y.shape == (2, 5, *size)
    assert torch.isfinite(y).all()


def test_vit_large_has_paper_taps_and_the_shallow_presets_scaled_taps():
    assert scale_taps((9, 14, 19, 23), 24) == [9, 14, 19, 23]
    assert scale_taps((5, 11, 17, 23), 24) == [5, 11, 17, 23]
    assert scale_taps((5, 11, 17, 23), 12) == [2, 5, 8, 11]
    assert scale_taps((9, 14, 19, 23), 12) == [4, 7, 9, 11]
    assert scale_taps((9, 14, 19, 23), 6) == [2, 3, 4, 5]
    with torch.device("meta"):
        assert build_setr(SETRConfig(encoder="vit-large", decoder="mla")).encoder.taps == [5, 11, 17, 23]
        large = build_setr(SETRConfig(encoder="vit-large", decoder="pup"))
    assert large.encoder.taps == [9, 14, 19, 23]
    assert large.encoder.cls_token is not None and large.encoder.pos_embed.shape == (1, 1 + 48 * 48, 1024)


def test_bad_configs_are_refused_with_a_message():
    with pytest.raises(UserError, match="unknown encoder"):
        SETRConfig(encoder="vit-huge")
    with pytest.raises(UserError, match="multiple of patch_size"):
        SETRConfig(img_size=(100, 64))
    with pytest.raises(UserError, match="decoder='token'"):
        SETRConfig(decoder="pup", invariant_embedding=True)
    with pytest.raises(UserError, match="unknown SETR config fields"):
        SETRConfig.from_dict({"encoder": "vit-tiny", "colour": "blue"})


# --- training behaviour -----------------------------------------------------------------------

@pytest.mark.parametrize("decoder,invariant", VARIANTS)
def test_gradients_reach_every_parameter(decoder, invariant):
    torch.manual_seed(0)
    model = build_setr(tiny(decoder, invariant)).train()
    x, target = torch.randn(2, 3, 32, 64), torch.randint(0, 5, (2, 32, 64))
    target[:, :4] = 255  # ignored pixels
    out = model(x)
    loss = F.cross_entropy(out["out"], target, ignore_index=255)
    loss = loss + sum(0.4 * F.cross_entropy(a, target, ignore_index=255) for a in out["aux"])
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert dead == []


def test_aux_heads_only_in_training_and_absent_when_switched_off():
    model = build_setr(tiny("pup"))
    x = torch.randn(2, 3, 32, 64)
    out = model.train()(x)
    assert set(out) == {"out", "aux"} and len(out["aux"]) == 3
    assert isinstance(model.eval()(x), torch.Tensor)
    no_aux = build_setr(tiny("pup", aux=False)).train()
    assert no_aux(x)["aux"] == [] and len(no_aux.aux_heads) == 0


def test_group_norm_trains_with_batch_one_and_syncbn_builds():
    model = build_setr(tiny("mla", norm="gn")).train()
    model(torch.randn(1, 3, 32, 64))["out"].sum().backward()
    sync = build_setr(tiny("pup", norm="syncbn"))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.modules())
    assert sync.eval()(torch.randn(1, 3, 32, 64)).shape == (1, 5, 32, 64)


def test_parameter_groups_split_encoder_and_heads_once_each():
    model = build_setr(tiny("mla"))
    groups = model.parameter_groups(lr=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert groups[1]["lr"] == pytest.approx(0.1)
    head_ids = {id(p) for p in groups[1]["params"]}
    assert all(id(p) not in head_ids for p in model.encoder.parameters())
    assert all(id(p) in head_ids for p in model.decode_head.parameters())


def test_drop_path_is_random_in_training_and_off_in_eval():
    model = build_setr(tiny("naive", drop_path=0.5, aux=False))
    x = torch.randn(4, 3, 32, 64)
    model.train()
    torch.manual_seed(1)
    a = model.encoder(x)[-1]
    torch.manual_seed(2)
    b = model.encoder(x)[-1]
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model.encoder(x)[-1], model.encoder(x)[-1])


# --- position embedding -----------------------------------------------------------------------

def test_pos_embed_resize_keeps_class_entry_and_round_trips():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 4 * 6, 8)
    assert torch.equal(resize_pos_embed(pos, (4, 6), (4, 6), 1), pos)  # same grid: unchanged
    big = resize_pos_embed(pos, (4, 6), (8, 12), 1)
    assert big.shape == (1, 1 + 8 * 12, 8)
    assert torch.equal(big[:, 0], pos[:, 0])  # class-token entry kept as it is
    const = torch.ones(1, 16, 3)
    assert torch.allclose(resize_pos_embed(const, (4, 4), (6, 10)), torch.ones(1, 60, 3))
    # a smooth embedding survives up- then down-sampling (interior of a linear ramp exactly)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    ramp = torch.stack([yy, xx, yy + 2 * xx], -1).reshape(1, 64, 3)
    back = resize_pos_embed(resize_pos_embed(ramp, (8, 8), (16, 16)), (16, 16), (8, 8))
    inner = lambda t: t.reshape(8, 8, 3)[1:-1, 1:-1]  # noqa: E731
    assert torch.allclose(inner(back), inner(ramp), atol=1e-5)


def test_model_on_another_size_uses_the_resized_embedding():
    torch.manual_seed(0)
    small = build_setr(tiny("naive", aux=False)).eval()  # grid 2x4
    big = build_setr(tiny("naive", aux=False, img_size=(64, 128))).eval()  # grid 4x8
    state = small.state_dict()
    state["encoder.pos_embed"] = resize_pos_embed(state["encoder.pos_embed"], (2, 4), (4, 8), 1)
    big.load_state_dict(state)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.allclose(small(x), big(x), atol=1e-5)
        assert not torch.allclose(small(x), small(x.flip(-1)), atol=1e-3)


# --- the key-invariant variant ---------------------------------------------------------------

@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("patch", [16, 8])
def test_token_model_without_position_embedding_commutes_with_block_scrambling(train, patch):
    torch.manual_seed(0)
    model = build_setr(tiny("token", patch_size=patch)).train(train)
    x = torch.randn(3, 3, 32, 64)
    n = (32 // patch) * (64 // patch)
    perms = [torch.randperm(n) for _ in range(3)]  # a different "key" per image
    with torch.no_grad():
        a, b = model(block_scramble(x, patch, perms)), model(x)
    if train:
        assert torch.allclose(a["out"], block_scramble(b["out"], patch, perms), atol=1e-4)
        for aa, bb in zip(a["aux"], b["aux"]):
            assert torch.allclose(aa, block_scramble(bb, patch, perms), atol=1e-4)
    else:
        assert torch.allclose(a, block_scramble(b, patch, perms), atol=1e-4)
        assert not torch.allclose(a, b, atol=1e-2)  # the scramble really moved something


def test_position_embedding_breaks_block_scramble_equivariance():
    torch.manual_seed(0)
    model = build_setr(tiny("token", position_embedding=True)).eval()
    with torch.no_grad():
        model.encoder.pos_embed.normal_(0, 1.0)
        x = torch.randn(2, 3, 32, 64)
        perms = [torch.randperm(8) for _ in range(2)]
        diff = (model(block_scramble(x, 16, perms)) - block_scramble(model(x), 16, perms)).abs().max()
    assert diff > 1e-2


@pytest.mark.parametrize("patch", [16, 8])
def test_invariant_embedding_model_commutes_with_pixel_shuffle_and_block_scramble(patch):
    torch.manual_seed(0)
    model = build_setr(tiny("token", invariant=True, patch_size=patch)).eval()
    x = torch.randn(2, 3, 32, 64)
    ps = [torch.randperm(patch * patch) for _ in range(2)]
    bs = [torch.randperm((32 // patch) * (64 // patch)) for _ in range(2)]
    with torch.no_grad():
        y = model(x)
        assert torch.allclose(model(pixel_shuffle(x, patch, ps)), pixel_shuffle(y, patch, ps), atol=1e-4)
        enc = block_scramble(pixel_shuffle(x, patch, ps), patch, bs)
        assert torch.allclose(model(enc), block_scramble(pixel_shuffle(y, patch, ps), patch, bs), atol=1e-4)
        assert torch.allclose(model.train()(enc)["out"], block_scramble(pixel_shuffle(model(x)["out"], patch, ps), patch, bs), atol=1e-4)


def test_linear_patch_embedding_is_not_pixel_shuffle_equivariant():
    torch.manual_seed(0)
    model = build_setr(tiny("token")).eval()
    x = torch.randn(2, 3, 32, 64)
    ps = [torch.randperm(256) for _ in range(2)]
    with torch.no_grad():
        diff = (model(pixel_shuffle(x, 16, ps)) - pixel_shuffle(model(x), 16, ps)).abs().max()
    assert diff > 1e-2


# --- checkpoints -------------------------------------------------------------------------------

@pytest.mark.parametrize("decoder,invariant", [("mla", False), ("token", True)])
def test_checkpoint_round_trip_restores_outputs_config_and_extra(tmp_path, decoder, invariant):
    torch.manual_seed(0)
    cfg = tiny(decoder, invariant)
    model = build_setr(cfg).train()
    model(torch.randn(2, 3, 32, 64))  # move BatchNorm running stats away from their init
    path = save_checkpoint(tmp_path / "ckpt" / "model.safetensors", model, cfg, {"step": 7, "scheme": "bs-np-cs"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.json", "model.safetensors"]  # no temp files
    loaded, cfg2, extra = load_checkpoint(path)
    assert cfg2 == cfg and extra == {"step": 7, "scheme": "bs-np-cs"}
    assert not loaded.training
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["config"]["img_size"] == [32, 64]


def test_checkpoint_without_json_reads_config_from_safetensors_metadata(tmp_path):
    model = build_setr(tiny("naive"))
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    path.with_suffix(".json").unlink()
    assert load_checkpoint(path)[1] == model.config


def test_checkpoint_that_does_not_fit_its_config_is_refused_clearly(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", build_setr(tiny("naive")))
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["config"]["num_classes"] = 7
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"decode_head\.cls\.weight: file \[5, 256, 1, 1\] vs model \[7, 256, 1, 1\]"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "bad.safetensors")


# --- normalisation and the shared inference path -------------------------------------------------

def test_normalize_accepts_channels_first_and_last_and_uses_imagenet_stats():
    img = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    a, b = normalize(img), normalize(img.permute(0, 3, 1, 2))
    assert a.shape == (2, 3, 5, 7) and a.dtype == torch.float32 and torch.equal(a, b)
    gray = torch.full((1, 3, 2, 2), 124, dtype=torch.uint8)
    assert torch.allclose(normalize(gray)[0, :, 0, 0], torch.tensor([(124 - 123.675) / 58.395, (124 - 116.28) / 57.12, (124 - 103.53) / 57.375]))
    with pytest.raises(UserError):
        normalize(torch.zeros(1, 4, 5, 6, dtype=torch.uint8))


def test_predict_pads_to_the_patch_grid_and_crops_back():
    torch.manual_seed(0)
    model = build_setr(tiny("pup")).train()
    img = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    out = predict(model, img)
    assert out.shape == (5, 40, 70) and out.dtype == torch.float32
    assert model.training  # mode restored
    padded = np.pad(img, ((0, 8), (0, 10), (0, 0)), mode="edge")
    with torch.no_grad():
        want = model.eval()(normalize(torch.from_numpy(padded)))[0, :, :40, :70]
    assert torch.allclose(out, want, atol=1e-5)
    batch = predict(model, np.stack([img, img[::-1]]))
    assert batch.shape == (2, 5, 40, 70) and torch.allclose(batch[0], out, atol=1e-5)


def test_sliding_window_averages_the_overlapping_crops():
    torch.manual_seed(0)
    model = build_setr(tiny("naive")).eval()
    img = np.random.default_rng(1).integers(0, 256, (32, 96, 3), dtype=np.uint8)
    assert torch.allclose(predict(model, img, crop=(32, 96)), predict(model, img), atol=1e-5)
    got = predict(model, img, crop=(32, 64), stride=(32, 32))  # windows at x=0 and x=32
    x = normalize(torch.from_numpy(img))
    with torch.no_grad():
        left, right = model(x[..., :64])[0], model(x[..., 32:])[0]
    want = torch.zeros(5, 32, 96)
    want[..., :64] += left
    want[..., 32:] += right
    want[..., 32:64] /= 2
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(UserError, match="multiples of the patch size"):
        predict(model, img, crop=(32, 40))


def test_checkpoints_are_ordinary_files_not_private_ones(tmp_path):
    """Written atomically through a temporary file, yet with the usual permissions (umask 022: 0644);
    only key files are 0600."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        cfg = SETRConfig(encoder="vit-tiny-6", decoder="naive", img_size=(32, 64))
        path = save_checkpoint(tmp_path / "m.safetensors", build_setr(cfg), cfg)
    finally:
        os.umask(old)
    for p in (path, path.with_suffix(".json")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
