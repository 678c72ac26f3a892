"""Hostile and careless input outside the HTTP server (issue 13): CLI usage errors, key files and
symlinks, Key pickling, output-name collisions, checkpoint sidecars, the mIoU of ignore
predictions, and the Python client against whatever a server answers."""

from __future__ import annotations

import copy
import json
import os
import pickle
import stat

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from encseg.cipher import Key, Scheme, encrypt
from encseg.errors import UserError

torch.set_num_threads(1)


def one_line_error(code: int, err: str) -> None:
    assert code != 0, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error:"), err


# -- CLI usage errors: one line, non-zero exit, refused at start --------------------------------------

@pytest.fixture
def ckpt(tmp_path):
    from encseg.models import SETRConfig, build_setr, save_checkpoint

    torch.manual_seed(0)
    cfg = SETRConfig(encoder="vit-tiny-6", decoder="naive", num_classes=19, img_size=(32, 32), aux=False, channels=8)
    return save_checkpoint(tmp_path / "m.safetensors", build_setr(cfg).eval(), cfg, {"scheme": "bs-np-cs"})


@pytest.mark.parametrize("args", [
    ["encrypt"],
    ["serve", "--port", "abc", "-c", "x"],
    ["serve", "--workers", "0", "-c", "x"],
    ["serve", "--max-body-mb", "-1", "-c", "x"],
    ["serve", "--max-pixels", "0", "-c", "x"],
    ["serve", "--queue-timeout", "0", "-c", "x"],
    ["decrypt", "--key"],
    ["segment"],
    ["no-such-command"],
], ids=lambda a: " ".join(a))
def test_usage_errors_are_one_line(run_cli, args):
    one_line_error(*run_cli(*args)[::2])


@pytest.mark.parametrize("extra,words", [
    (["--device", "bogus"], "unknown device"),
    (["--log-level", "bogus"], "log level"),
    (["--crop", "17"], "multiple of the model's patch size"),
    (["--max-queue-pixels", "10"], "max_queue_pixels"),
], ids=["device", "log-level", "crop", "queue-smaller-than-an-image"])
def test_serve_refuses_bad_options_before_binding(run_cli, ckpt, extra, words):
    code, out, err = run_cli("serve", "-c", ckpt, "--port", "1", *extra)
    one_line_error(code, err)
    assert words in err


def test_out_naming_a_folder_and_a_full_disk_are_one_line(run_cli, tmp_path, monkeypatch):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "d.png").mkdir()
    code, _, err = run_cli("encrypt", tmp_path / "p.png", "-o", tmp_path / "d.png")
    one_line_error(code, err)
    assert "folder" in err
    code, _, err = run_cli("keygen", "-o", tmp_path / "d.png")
    one_line_error(code, err)

    import encseg.cipher.io as cio

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cio.os, "replace", full)
    code, _, err = run_cli("encrypt", tmp_path / "p.png", "-o", tmp_path / "e.png", "--key-out", tmp_path / "k.key")
    one_line_error(code, err)
    assert "No space left" in err and not (tmp_path / "e.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half-written stays


def test_decrypting_hostile_metadata_and_truncated_label_maps_is_one_line(run_cli, tmp_path):
    from PIL import PngImagePlugin

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "p.png")
    code, _, err = run_cli("encrypt", tmp_path / "p.png", "-o", tmp_path / "enc.png", "--key-out", tmp_path / "k.key")
    assert code == 0, err
    im = Image.open(tmp_path / "enc.png")
    for name, text in [("deep", "[" * 100000 + "]" * 100000),
                       ("deep-scheme", '{"version":1,"scheme":' + '{"a":' * 3000 + "1" + "}" * 3000 + ',"original_size":[32,32]}'),
                       ("digits", '{"version":1,"scheme":{"block_size":' + "9" * 5000 + '},"original_size":[32,32]}')]:
        info = PngImagePlugin.PngInfo()
        info.add_text("encseg", text)
        im.save(tmp_path / f"{name}.png", pnginfo=info)
        code, _, err = run_cli("decrypt", tmp_path / f"{name}.png", "--key", tmp_path / "k.key", "-o", tmp_path / "o.png")
        one_line_error(code, err)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "lab.png", compress_level=0)
    data = (tmp_path / "lab.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 300])
    code, _, err = run_cli("decrypt-mask", tmp_path / "cut.png", "--key", tmp_path / "k.key", "-o", tmp_path / "m.png",
                           "--scheme", "bs-np-cs", "--size", "32x32")
    one_line_error(code, err)
    assert not (tmp_path / "m.png").exists()


# -- key files ---------------------------------------------------------------------------------------

def test_writing_a_key_never_follows_a_planted_symlink(tmp_path):
    from encseg.cipher import save_key

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "k.key"
    link.symlink_to(victim)
    with pytest.raises(UserError, match="already exists"):
        save_key(Key.generate(), link)
    assert victim.read_text() == "precious\n" and link.is_symlink()
    dangling = tmp_path / "d.key"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="already exists"):
        save_key(Key.generate(), dangling)
    assert not (tmp_path / "nowhere").exists()
    key = Key.generate()
    save_key(key, link, overwrite=True)  # replaces the link itself, atomically
    assert victim.read_text() == "precious\n" and not link.is_symlink()
    assert stat.S_IMODE(link.stat().st_mode) == 0o600 and link.read_text().strip() == key.hex()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_key_refuses_pickling_and_copies_are_the_same_key():
    key = Key.generate()
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(key, protocol=proto)
    with pytest.raises(TypeError):
        pickle.dumps({"nested": [key]})
    assert copy.copy(key) == key and copy.deepcopy([key])[0] == key


def test_segment_gives_inputs_with_one_name_their_own_outputs_and_keys(run_cli, tmp_path):
    from encseg.service.commands import _out_names
    from pathlib import Path

    assert _out_names([Path("a/x.png"), Path("b/x.png"), Path("x-1.png"), Path("c/X.png")]) == ["x", "x-2", "x-1", "X-3"]
    ckpt = _tiny_checkpoint(tmp_path)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray(np.random.default_rng(len(d)).integers(0, 255, (20, 20, 3), np.uint8)).save(tmp_path / d / "x.png")
    code, _, err = run_cli("segment", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--local", ckpt,
                           "--out", tmp_path / "o", "--keep-key")
    assert code == 0, err
    keys = sorted(p.name for p in (tmp_path / "o").glob("*.key"))
    assert keys == ["x-1.key", "x.key"]
    assert (tmp_path / "o" / "x.key").read_text() != (tmp_path / "o" / "x-1.key").read_text()
    # a second run into the same folder would overwrite those keys: it refuses before any work
    code, _, err = run_cli("segment", tmp_path / "a" / "x.png", "--local", ckpt, "--out", tmp_path / "o", "--keep-key")
    one_line_error(code, err)
    assert "already exists" in err


def _tiny_checkpoint(tmp_path):
    from encseg.models import SETRConfig, build_setr, save_checkpoint

    torch.manual_seed(0)
    cfg = SETRConfig(encoder="vit-tiny-6", decoder="naive", num_classes=19, img_size=(32, 32), aux=False, channels=8)
    return save_checkpoint(tmp_path / "tiny.safetensors", build_setr(cfg).eval(), cfg, {"scheme": "bs-np-cs"})


# -- checkpoint sidecars --------------------------------------------------------------------------

@pytest.mark.parametrize("change,words", [
    ({"img_size": [10**6, 10**6]}, "img_size"),  # would be a 7.7 TB position embedding
    ({"channels": 10**7}, "channels"),
    ({"num_classes": "19"}, "num_classes"),
    ({"num_classes": True}, "num_classes"),
    ({"aux": "yes"}, "aux"),
    ({"drop_path": 5}, "drop_path"),
    ({"img_size": [64, 64]}, "does not match"),  # valid, but not the tensors in the file
    ({"encoder": "vit-large"}, "does not match"),
], ids=["huge-img", "huge-channels", "str-classes", "bool-classes", "str-aux", "drop-path", "other-size", "other-encoder"])
def test_hostile_checkpoint_configs_are_refused_before_anything_is_built(tmp_path, monkeypatch, change, words):
    import encseg.models.checkpoint as ck
    from encseg.models import load_checkpoint

    path = _tiny_checkpoint(tmp_path)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["config"].update(change)
    side.write_text(json.dumps(meta))
    built = []
    real = ck.build_setr
    monkeypatch.setattr(ck, "build_setr", lambda cfg: (built.append(torch.empty(0).device.type), real(cfg))[1])
    with pytest.raises(UserError, match=words) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert all(d == "meta" for d in built)  # at most the shape check on the meta device ran


@pytest.mark.parametrize("text", ["{" * 100000, '{"format": "encseg-setr/1", "config": {"num_classes": ' + "9" * 5000 + "}}",
                                  "[]", '{"format": "encseg-setr/1", "config": [], "extra": {}}', "NaN", "\xff\xfe"])
def test_malformed_sidecar_json_is_one_line(tmp_path, text):
    from encseg.models import load_checkpoint

    path = _tiny_checkpoint(tmp_path)
    path.with_suffix(".json").write_text(text, encoding="latin-1")
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_malformed_extra_metadata_is_one_line_in_the_service_loader(tmp_path):
    from encseg.service.segmenter import Segmenter

    path = _tiny_checkpoint(tmp_path)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["extra"]["palette"] = "not a palette"
    side.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="malformed"):
        Segmenter.from_checkpoint(path)


# -- the mIoU of ignore predictions (cityscapesScripts) ---------------------------------------------

def test_ignore_predictions_are_misses_only_never_a_class():
    from encseg.engine.evaluate import EvalResult, confusion_matrix, iou_from_confusion

    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 255], [2, 255, 18, 7]], np.uint8)
    conf = confusion_matrix(pred, gt)
    iou = iou_from_confusion(conf)
    # by hand (cityscapesScripts: fn = every other prediction of the class's pixels, fp = pixels of
    # other evaluated classes predicted as it; gt-ignore pixels count for nothing):
    # class 0: tp 1, fn 1 (predicted 1), fp 0 -> 1/2; class 1: tp 1, fn 1 (predicted 255), fp 1 -> 1/3;
    # class 2: tp 1, fn 1 (predicted 255), fp 0 -> 1/2; class 18 (bicycle): never true, never predicted on
    # an evaluated pixel -> undefined (clipping 255 to 18 made it two false positives, IoU 0).
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(1 / 3) and iou[2] == pytest.approx(1 / 2)
    assert np.isnan(iou[18]) and np.isnan(iou[3:]).all()
    assert conf.shape == (19, 20) and conf[:, 19].sum() == 2 and conf.sum() == 6
    r = EvalResult(conf, 1)
    assert r.miou == pytest.approx(100 * (1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert r.pixel_accuracy == pytest.approx(100 * 3 / 6)
    square = conf[:, :19] + np.diag(conf[:, 19])  # a [C, C] matrix still works (misses on the diagonal would be tp)
    assert iou_from_confusion(square).shape == (19,)


# -- the Python client against whatever a server sends ------------------------------------------------

def _backend(handler):
    from encseg.service.client import HttpBackend

    b = HttpBackend("http://127.0.0.1:9", retries=0, backoff=0.0)
    b.client = httpx.Client(transport=httpx.MockTransport(handler))
    return b


@pytest.mark.parametrize("answer", [
    httpx.Response(400, json=["a", "list"]),
    httpx.Response(422, json={"detail": {"nested": 1}}),
    httpx.Response(500, content=b"\x1b[31mred\x1b[0m\nsecond line\r\x07"),
    httpx.Response(400, content=b"\xff\xfe\x00binary"),
    httpx.Response(413, json={"detail": "\x1b[2J\x1b[Hcleared" + "x" * 5000}),
    httpx.Response(200, content=b"<html>not a png</html>"),
    httpx.Response(200, content=b"\x89PNG\r\n\x1a\ntruncated"),
    httpx.Response(200, content=None),
], ids=["json-list", "json-detail-object", "ansi-text", "binary", "ansi-detail", "html-200", "broken-png-200", "empty-200"])
def test_client_errors_are_one_printable_line_for_any_answer(answer):
    b = _backend(lambda request: answer)
    enc = encrypt(np.zeros((16, 16, 3), np.uint8), Key.generate(), Scheme.parse("bs-np-cs"))
    with pytest.raises(UserError) as info:
        b.segment(enc)
    msg = str(info.value)
    assert "\n" not in msg and "\x1b" not in msg and "\r" not in msg and len(msg) < 500
    assert all(c.isprintable() for c in msg)


def test_client_refuses_a_label_map_of_the_wrong_size_or_mode():
    from encseg.cipher.io import encode_png

    enc = encrypt(np.zeros((16, 16, 3), np.uint8), Key.generate(), Scheme.parse("bs-np-cs"))
    for body in (encode_png(np.zeros((32, 16), np.uint8)), encode_png(np.zeros((16, 16, 3), np.uint8))):
        b = _backend(lambda request, body=body: httpx.Response(200, content=body))
        with pytest.raises(UserError, match="label map|not a label map"):
            b.segment(enc)
    b = _backend(lambda request: httpx.Response(200, json=[1, 2]))
    with pytest.raises(UserError, match="not an encseg server"):
        b.info()
    from encseg.service.client import default_scheme, palette_of

    with pytest.raises(UserError):
        default_scheme({"schemes": [{"steps": "x"}]})
    assert palette_of({"palette": "bad"}) == [] and palette_of({"palette": [[1, 2, 3]]}) == [[1, 2, 3]]
