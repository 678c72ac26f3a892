"""Pretrained ViT import: timm / original-ViT layouts mapped onto our encoder, position embedding resized."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from encseg.errors import UserError
from encseg.models import VIT_PRESETS, SETRConfig, ViT, build_setr, load_vit_weights, map_vit_state_dict
from encseg.models.vit import ViTSize


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two on a shared 2-core box


def timm_state_dict(size: ViTSize, grid: int, patch: int = 16, device: str = "cpu", classes: int = 1000) -> dict[str, torch.Tensor]:
    """A state dict with timm's ViT names and shapes (random values), written from the timm layout."""
    D, H = size.dim, int(size.dim * size.mlp_ratio)
    r = lambda *shape: torch.randn(*shape, device=device)  # noqa: E731
    sd = {
        "cls_token": r(1, 1, D),
        "pos_embed": r(1, 1 + grid * grid, D),
        "patch_embed.proj.weight": r(D, 3, patch, patch),
        "patch_embed.proj.bias": r(D),
        "norm.weight": r(D),
        "norm.bias": r(D),
        "head.weight": r(classes, D),
        "head.bias": r(classes),
    }
    for i in range(size.depth):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": r(D), b + "norm1.bias": r(D),
            b + "attn.qkv.weight": r(3 * D, D), b + "attn.qkv.bias": r(3 * D),
            b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
            b + "norm2.weight": r(D), b + "norm2.bias": r(D),
            b + "mlp.fc1.weight": r(H, D), b + "mlp.fc1.bias": r(H),
            b + "mlp.fc2.weight": r(D, H), b + "mlp.fc2.bias": r(D),
        }
    return sd


def test_vit_base_import_maps_every_tensor_and_resizes_pos_embed(tmp_path):
    torch.manual_seed(0)
    sd = timm_state_dict(VIT_PRESETS["vit-base"], grid=14)  # vit_base_patch16_224
    path = tmp_path / "vit_base.safetensors"
    save_file(sd, str(path))
    model = build_setr(SETRConfig(encoder="vit-base", decoder="naive", img_size=(32, 64), aux=False))
    report = load_vit_weights(model, path)
    assert report.missing == []
    assert sorted(report.unexpected) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert report.resized == {"pos_embed": "1+14x14 -> 1+2x4"}
    enc = model.encoder.state_dict()
    assert len(report.loaded) == len(enc) == 4 + 12 * 12
    for key, value in enc.items():
        if key != "pos_embed":
            assert torch.equal(value, sd[key]), key
    grid = sd["pos_embed"][:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(2, 4), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    assert torch.equal(enc["pos_embed"][:, :1], sd["pos_embed"][:, :1])  # class-token entry kept
    assert torch.allclose(enc["pos_embed"][:, 1:], want, atol=1e-6)


@pytest.mark.parametrize("decoder", ["pup", "mla"])
def test_vit_large_384_mapping_has_the_models_shapes(decoder):
    # meta tensors: the mapping and its shapes without allocating 300M parameters
    sd = timm_state_dict(VIT_PRESETS["vit-large"], grid=24, device="meta")  # jx_vit_large_p16_384
    with torch.device("meta"):
        model = build_setr(SETRConfig(encoder="vit-large", decoder=decoder, img_size=(768, 768)))
    mapped, report = map_vit_state_dict(sd, model.encoder)
    target = model.encoder.state_dict()
    assert report.missing == [] and sorted(mapped) == sorted(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    if decoder == "mla":  # no class token: its position entry and the token itself are dropped
        assert mapped["pos_embed"].shape == (1, 48 * 48, 1024)
        assert "cls_token" in report.unexpected
        assert report.resized == {"pos_embed": "1+24x24 -> 0+48x48"}
    else:
        assert mapped["pos_embed"].shape == (1, 1 + 48 * 48, 1024)
        assert report.resized == {"pos_embed": "1+24x24 -> 1+48x48"}


def to_jax_layout(sd: dict[str, torch.Tensor], heads: int) -> dict[str, np.ndarray]:
    """timm names -> the original ViT .npz names and shapes (the inverse of the import, written here)."""
    n = lambda t: t.detach().numpy()  # noqa: E731
    D = sd["cls_token"].shape[-1]
    out = {
        "embedding/kernel": n(sd["patch_embed.proj.weight"].permute(2, 3, 1, 0)),
        "embedding/bias": n(sd["patch_embed.proj.bias"]),
        "cls": n(sd["cls_token"]),
        "Transformer/posembed_input/pos_embedding": n(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": np.ones(D, np.float32),
        "Transformer/encoder_norm/bias": np.zeros(D, np.float32),
        "head/kernel": np.zeros((D, 10), np.float32),
    }
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b, j = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = j + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for k, name in enumerate(("query", "key", "value")):
            out[mha + name + "/kernel"] = n(qkv_w[k * D : (k + 1) * D].T.reshape(D, heads, D // heads))
            out[mha + name + "/bias"] = n(qkv_b[k * D : (k + 1) * D].reshape(heads, D // heads))
        out[mha + "out/kernel"] = n(sd[b + "attn.proj.weight"].T.reshape(heads, D // heads, D))
        out[mha + "out/bias"] = n(sd[b + "attn.proj.bias"])
        out[j + "LayerNorm_0/scale"], out[j + "LayerNorm_0/bias"] = n(sd[b + "norm1.weight"]), n(sd[b + "norm1.bias"])
        out[j + "LayerNorm_2/scale"], out[j + "LayerNorm_2/bias"] = n(sd[b + "norm2.weight"]), n(sd[b + "norm2.bias"])
        out[j + "MlpBlock_3/Dense_0/kernel"], out[j + "MlpBlock_3/Dense_0/bias"] = n(sd[b + "mlp.fc1.weight"].T), n(sd[b + "mlp.fc1.bias"])
        out[j + "MlpBlock_3/Dense_1/kernel"], out[j + "MlpBlock_3/Dense_1/bias"] = n(sd[b + "mlp.fc2.weight"].T), n(sd[b + "mlp.fc2.bias"])
        i += 1
    return out


def small_encoder(seed: int) -> ViT:
    torch.manual_seed(seed)
    return ViT(VIT_PRESETS["vit-tiny-6"], taps=[2, 5], img_size=(32, 64)).eval()


def outputs(enc: ViT, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return enc(x)


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-wrapped", "npz", "npz-jax"])
def test_every_file_format_reproduces_the_source_encoder(tmp_path, fmt):
    src, dst = small_encoder(0), small_encoder(1)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / f"w.{fmt.split('-')[0]}"
    if fmt == "safetensors":
        save_file(sd, str(path))
    elif fmt == "pth":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)  # DataParallel prefix
    elif fmt == "pth-wrapped":
        torch.save({"model": sd, "epoch": 3}, path)
    elif fmt == "npz":
        np.savez(path, **{k: v.numpy() for k, v in sd.items()})
    else:
        np.savez(path, **to_jax_layout(sd, heads=3))
    x = torch.randn(2, 3, 32, 64)
    assert not torch.allclose(outputs(src, x)[-1], outputs(dst, x)[-1])
    report = load_vit_weights(dst, path)
    assert report.missing == [] and report.resized == {}
    for a, b in zip(outputs(src, x), outputs(dst, x)):
        assert torch.allclose(a, b, atol=1e-5)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": small_encoder(0).state_dict(), "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(UserError, match="weights-only"):
        load_vit_weights(small_encoder(1), path)
    assert not marker.exists()


def test_wrong_width_is_refused_naming_the_tensor(tmp_path):
    path = tmp_path / "small.safetensors"
    save_file(timm_state_dict(VIT_PRESETS["vit-small"], grid=4, classes=2), str(path))
    with pytest.raises(UserError, match=r"blocks\.0\.attn\.qkv\.weight: file \[1152, 384\] vs model \[576, 192\]"):
        load_vit_weights(small_encoder(0), path)
    with pytest.raises(UserError, match="not found"):
        load_vit_weights(small_encoder(0), tmp_path / "nope.safetensors")


def test_key_invariant_encoder_takes_the_blocks_and_reports_what_does_not_fit(tmp_path):
    path = tmp_path / "tiny.safetensors"
    sd = timm_state_dict(VIT_PRESETS["vit-tiny-6"], grid=14, classes=2)
    save_file(sd, str(path))
    model = build_setr(SETRConfig(encoder="vit-tiny-6", decoder="token", img_size=(32, 64),
                                  position_embedding=False, invariant_embedding=True))
    report = load_vit_weights(model, path)
    assert {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"} <= set(report.unexpected)
    assert all(k.startswith("patch_embed.") for k in report.missing)  # the set embedding keeps its init
    assert torch.equal(model.encoder.blocks[3].mlp.fc1.weight, sd["blocks.3.mlp.fc1.weight"])


# -- the other JAX layouts timm reads, and refusals ---------------------------------------------------

def to_big_vision_layout(sd: dict[str, torch.Tensor], heads: int, scanned: bool = False) -> dict[str, np.ndarray]:
    """timm names -> big_vision's .npz: `params/` prefix, `pos_embedding` at the top, sub-module
    numbers MultiHeadDotProductAttention_0 / LayerNorm_1 / MlpBlock_0; scanned: one stacked block."""
    jax = to_jax_layout(sd, heads)
    rename = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
              "MlpBlock_3": "MlpBlock_0"}
    out: dict[str, np.ndarray] = {}
    blocks: dict[str, list[np.ndarray]] = {}
    for k, v in jax.items():
        if k == "Transformer/posembed_input/pos_embedding":
            out["params/pos_embedding"] = v
            continue
        for a, b in rename.items():
            k = k.replace(a, b)
        if scanned and k.startswith("Transformer/encoderblock_"):
            rest = k.split("/", 2)[2]
            blocks.setdefault(rest, []).append(v)  # blocks come in order 0, 1, ...
            continue
        out["params/" + k] = v
    for rest, arrays in blocks.items():
        out["params/Transformer/encoderblock/" + rest] = np.stack(arrays)
    return out


@pytest.mark.parametrize("layout", ["params-prefix", "big-vision", "big-vision-scanned", "opt-target"])
def test_prefixed_and_big_vision_npz_layouts_reproduce_the_source_encoder(tmp_path, layout):
    src, dst = small_encoder(0), small_encoder(1)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    if layout == "big-vision":
        arrays = to_big_vision_layout(sd, heads=3)
    elif layout == "big-vision-scanned":
        arrays = to_big_vision_layout(sd, heads=3, scanned=True)
        assert not any("encoderblock_" in k for k in arrays)
    else:  # the vit_jax names under a prefix
        prefix = "opt/target/" if layout == "opt-target" else "params/"
        arrays = {prefix + k: v for k, v in to_jax_layout(sd, heads=3).items()}
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    x = torch.randn(2, 3, 32, 64)
    assert not torch.allclose(outputs(src, x)[-1], outputs(dst, x)[-1])
    report = load_vit_weights(dst, path)
    assert report.missing == [] and len(report.loaded) == len(dst.state_dict())
    for a, b in zip(outputs(src, x), outputs(dst, x)):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_file_that_loads_nothing_is_an_error_not_a_silent_success(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, **{"some/other/model/kernel": np.zeros((3, 3), np.float32)})
    with pytest.raises(UserError, match="nothing loaded"):
        load_vit_weights(small_encoder(0), path)
    st = tmp_path / "other.safetensors"
    save_file({"decoder.conv.weight": torch.zeros(2, 2)}, str(st))
    with pytest.raises(UserError, match="nothing loaded"):
        load_vit_weights(small_encoder(0), st)


@pytest.mark.parametrize("case", ["corrupt-safetensors", "corrupt-npz", "object-npz", "bad-pos-rank", "jax-incomplete"])
def test_broken_weight_files_give_one_line_errors(tmp_path, case):
    if case == "corrupt-safetensors":
        path = tmp_path / "w.safetensors"
        path.write_bytes(b"\xff" * 64)
    elif case == "corrupt-npz":
        path = tmp_path / "w.npz"
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif case == "object-npz":
        path = tmp_path / "w.npz"
        np.savez(path, a=np.array([{"x": 1}], dtype=object))
    elif case == "bad-pos-rank":
        path = tmp_path / "w.safetensors"
        save_file({"pos_embed": torch.zeros(7), "cls_token": torch.zeros(1, 1, 192)}, str(path))
    else:
        path = tmp_path / "w.npz"
        np.savez(path, **{"embedding/kernel": np.zeros((16, 16, 3, 192), np.float32),
                          "Transformer/encoderblock_0/LayerNorm_0/scale": np.ones(192, np.float32)})
    with pytest.raises(UserError) as info:
        load_vit_weights(small_encoder(0), path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
