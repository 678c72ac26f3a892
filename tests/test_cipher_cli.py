"""The cipher's CLI: round trips through files, and one-line errors for bad input."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def image(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (37, 70, 3), dtype=np.uint8)
    path = tmp_path / "scene.png"
    Image.fromarray(arr).save(path)
    return path, arr


def test_encrypt_decrypt_round_trip_through_files(run_cli, image, tmp_path):
    path, arr = image
    code, out, err = run_cli("encrypt", path, "-o", tmp_path / "enc.png", "--scheme", "bs-ps-np-cs", "--key-out", tmp_path / "k.key")
    assert code == 0, err
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600
    enc = np.asarray(Image.open(tmp_path / "enc.png"))
    assert enc.shape == (48, 80, 3) and not np.array_equal(enc[:37, :70], arr)
    assert (tmp_path / "k.key").read_text().strip() not in out + err
    code, out, err = run_cli("decrypt", tmp_path / "enc.png", "--key", tmp_path / "k.key", "-o", tmp_path / "dec.png")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "dec.png")), arr)


def test_decrypt_mask_round_trip_with_like(run_cli, image, tmp_path):
    from encseg.cipher import DEFAULT_SCHEME, Scheme, encrypt_mask, load_key

    path, arr = image
    run_cli("encrypt", path, "-o", tmp_path / "enc.png", "--key-out", tmp_path / "k.key")
    labels = np.random.default_rng(1).integers(0, 19, arr.shape[:2]).astype(np.uint8)
    enc_labels = encrypt_mask(labels, load_key(tmp_path / "k.key"), Scheme.parse(DEFAULT_SCHEME))  # the scheme encrypt used
    Image.fromarray(enc_labels).save(tmp_path / "mask_enc.png")
    code, _, err = run_cli("decrypt-mask", tmp_path / "mask_enc.png", "--key", tmp_path / "k.key",
                           "--like", tmp_path / "enc.png", "-o", tmp_path / "mask.png")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mask.png")), labels)


def test_keygen_writes_an_owner_only_file_and_prints_no_key(run_cli, tmp_path):
    code, out, err = run_cli("keygen", "-o", tmp_path / "a.key")
    assert code == 0
    text = (tmp_path / "a.key").read_text().strip()
    assert len(text) == 64 and text not in out + err
    assert stat.S_IMODE(os.stat(tmp_path / "a.key").st_mode) == 0o600


def _bad_inputs(tmp_path):
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "rgba.png")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "i16.png")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    return {
        "alpha": (["encrypt", tmp_path / "rgba.png", "-o", tmp_path / "o.png"], "alpha"),
        "16-bit": (["encrypt", tmp_path / "i16.png", "-o", tmp_path / "o.png"], "16-bit"),
        "not an image": (["encrypt", tmp_path / "text.png", "-o", tmp_path / "o.png"], "not a readable image"),
        "empty": (["encrypt", tmp_path / "empty.png", "-o", tmp_path / "o.png"], "empty"),
        "missing": (["encrypt", tmp_path / "nope.png", "-o", tmp_path / "o.png"], "does not exist"),
        "jpeg block size": (["encrypt", tmp_path / "ok.png", "-o", tmp_path / "o.jpg", "--block-size", "12"], "multiple of 8"),
        "too big": (["encrypt", tmp_path / "ok.png", "-o", tmp_path / "o.png", "--max-pixels", "10"], "over the limit"),
        "bad scheme": (["encrypt", tmp_path / "ok.png", "-o", tmp_path / "o.png", "--scheme", "bs-zz"], "unknown scheme"),
        "no metadata": (["decrypt", tmp_path / "ok.png", "--key", tmp_path / "nokey", "-o", tmp_path / "d.png"], "metadata"),
    }


@pytest.mark.parametrize("case", ["alpha", "16-bit", "not an image", "empty", "missing", "jpeg block size", "too big", "bad scheme", "no metadata"])
def test_bad_input_gets_one_line_error_and_nonzero_exit(run_cli, tmp_path, case):
    args, message = _bad_inputs(tmp_path)[case]
    code, out, err = run_cli(*args)
    assert code != 0
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.jpg").exists()


def test_installed_entry_point_prints_no_traceback(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "encseg")
    r = subprocess.run([exe, "encrypt", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
