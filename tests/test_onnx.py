"""ONNX export: `encseg export` writes a graph with dynamic batch and size that matches PyTorch."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from encseg.cli import main  # noqa: E402
from encseg.models import SETRConfig, build_setr, save_checkpoint  # noqa: E402
from encseg.models.export import export_onnx, onnx_parity  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two on a shared 2-core box


def run_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["encseg", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_export_command_matches_pytorch_at_other_batches_and_sizes(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    cfg = SETRConfig(encoder="vit-tiny-6", decoder="pup", num_classes=4, img_size=(32, 64))
    model = build_setr(cfg).train()
    model(torch.randn(2, 3, 32, 64))  # non-trivial BatchNorm statistics
    ckpt = save_checkpoint(tmp_path / "pup.safetensors", model)
    out = tmp_path / "pup.onnx"
    assert run_cli(monkeypatch, "export", "--checkpoint", str(ckpt), "--out", str(out), "--check") == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and out.is_file()
    # dynamic batch and spatial size: sizes other than the traced one, including the stored grid
    for shape in [(1, 3, 32, 64), (3, 3, 48, 32), (2, 3, 80, 112)]:
        assert onnx_parity(model, out, torch.randn(*shape)) < 1e-4, shape


def test_key_invariant_model_exports_and_matches(tmp_path):
    torch.manual_seed(0)
    cfg = SETRConfig(encoder="vit-tiny-6", decoder="token", num_classes=3, img_size=(32, 32),
                     position_embedding=False, invariant_embedding=True)
    model = build_setr(cfg).eval()
    path = export_onnx(model, tmp_path / "inv.onnx", sample_size=(48, 64))
    for shape in [(1, 3, 32, 32), (2, 3, 64, 48)]:
        assert onnx_parity(model, path, torch.randn(*shape)) < 1e-4, shape
    assert [p.name for p in tmp_path.iterdir()] == ["inv.onnx"]  # no temp file left behind


def test_export_command_errors_are_one_line(tmp_path, monkeypatch, capsys):
    assert run_cli(monkeypatch, "export", "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "m.onnx")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint not found") and "Traceback" not in err
    assert run_cli(monkeypatch, "export", "--checkpoint", "x.safetensors", "--out", str(tmp_path / "m.txt")) == 2
    assert "must end in .onnx" in capsys.readouterr().err


def test_canonicalising_model_exports_with_its_canonical_layer_in_the_graph(tmp_path):
    """The exported graph includes block canonicalisation (and the colour head and histogram): NP/CS variants give the same logits."""
    import numpy as np

    from encseg.cipher import Key, Scheme, encrypt
    from encseg.models import normalize

    torch.manual_seed(0)
    cfg = SETRConfig(encoder="vit-tiny-6", decoder="token", num_classes=3, img_size=(32, 32), channels=16,
                     position_embedding=False, canonical=True, aux=False, pixel_group=4,
                     colour_head=4, colour_embed=3)
    model = build_setr(cfg).eval()
    path = export_onnx(model, tmp_path / "canon.onnx", sample_size=(32, 48))
    img = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    img[:16, :16] = 100  # a tied (flat) block goes through the export's tie path
    x = normalize(img)
    assert onnx_parity(model, path, x) < 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    run = lambda a: sess.run(None, {sess.get_inputs()[0].name: normalize(a).numpy()})[0]  # noqa: E731
    enc = encrypt(img, Key.generate(), Scheme.parse("np-cs"))
    assert np.allclose(run(enc.data), run(img), atol=1e-4)
