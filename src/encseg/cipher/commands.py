"""CLI: keygen, encrypt, decrypt, decrypt-mask."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from encseg.cipher.arrange import restore_labels, transport_arrangement
from encseg.cipher.io import (
    DEFAULT_MAX_PIXELS,
    check_transport,
    encode_png,
    encrypted_metadata,
    load_encrypted,
    read_image,
    decode_label_png,
    require_png_path,
    save_encrypted,
    transport_format,
    write_atomic,
)
from encseg.cipher.jpeg import DEFAULT_QUALITY, check_quality
from encseg.cipher.keys import Key, load_key, save_key
from encseg.cipher.scheme import DEFAULT_SCHEME, PRESETS, Scheme
from encseg.cipher.transform import decrypt, decrypt_mask, encrypt
from encseg.errors import UserError

_SCHEME_HELP = ("preset (" + ", ".join(PRESETS) + ") or codes joined by '-': bs (block scramble), "
                "ps / ps<q> (one pixel permutation for every block; <q>: inside q x q sub-blocks), "
                "psb / psb<q> (a pixel permutation per block, format v2), np, cs")


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"size must look like HEIGHTxWIDTH, e.g. 1024x2048 (got {text!r})") from None
    if h <= 0 or w <= 0:
        raise UserError(f"size must be positive (got {text!r})")
    return h, w


def check_out(path: Path) -> Path:
    """Refuse an output path that is a folder, or whose folder cannot be made, before any work."""
    if path.is_dir():
        raise UserError(f"{path} is a folder; -o/--out names the file to write")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"{path.parent} is not a folder")
    return path


def _writing(path: Path, write) -> None:
    """Run a write; a full disk or another OS error becomes one line (nothing half-written stays)."""
    try:
        write()
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None


def _label_map(data: bytes, what: str):
    try:
        return decode_label_png(data, what=what)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt PNG is the user's bad file
        raise UserError(f"{what} is not a readable label map PNG ({type(exc).__name__}: truncated or corrupt)") from None


def keygen(out: Path = typer.Option(..., "--out", "-o", help="key file to create (mode 0600)"),
           force: bool = typer.Option(False, help="overwrite an existing key file")) -> None:
    """Make a fresh 256-bit key and write it to a 0600 file (it is never printed)."""
    check_out(out)
    save_key(Key.generate(), out, overwrite=force)
    typer.echo(f"wrote a new key to {out} (mode 0600)")


def encrypt_cmd(
    image: Path = typer.Argument(..., help="plain image (PNG, JPEG, ... 8-bit RGB)"),
    out: Path = typer.Option(..., "--out", "-o", help="encrypted image to write (.png, or .jpg with --format jpeg)"),
    scheme: str = typer.Option(DEFAULT_SCHEME, help=_SCHEME_HELP),
    fmt: Optional[str] = typer.Option(None, "--format", help="png (lossless, default) or jpeg (for segmentation only: "
                                      "block size a multiple of 8, baseline 4:4:4); default: from --out's suffix"),
    quality: Optional[int] = typer.Option(None, help=f"JPEG quality 1-100 (--format jpeg; default {DEFAULT_QUALITY})"),
    block_size: int = typer.Option(16, help="block size p (the ViT patch size)"),
    key_out: Optional[Path] = typer.Option(None, help="write the fresh key here (0600); without it the key is discarded"),
    key: Optional[Path] = typer.Option(None, help="use this existing key file instead of a fresh key"),
    arrangement: str = typer.Option("auto", help="auto (JPEG of a pixel-shuffled scheme: each block's pixels sorted, "
                                    "format v3, for segmentation only), none or sorted"),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="refuse images with more pixels than this"),
) -> None:
    """Encrypt an image with a fresh per-image key and write it as PNG (or JPEG, for segmentation)."""
    check_out(out)
    if key_out is not None:
        check_out(key_out)
    fmt = transport_format(out, fmt)
    if quality is not None and fmt != "jpeg":
        raise UserError("--quality applies to --format jpeg only (PNG is lossless)")
    quality = check_quality(DEFAULT_QUALITY if quality is None else quality)
    if key is not None and key_out is not None:
        raise UserError("use either --key (an existing key) or --key-out (save the fresh key), not both")
    s = Scheme.parse(scheme, block_size=block_size)
    check_transport(s, fmt)
    arranged = transport_arrangement(s, fmt, arrangement)  # refuses a bad --arrangement in one line
    img = read_image(image, max_pixels=max_pixels)
    k = load_key(key) if key is not None else Key.generate()
    if key_out is not None:
        save_key(k, key_out)  # before the ciphertext: never leave an image nobody can decrypt
    enc = encrypt(img, k, s)
    _writing(out, lambda: save_encrypted(out, enc, fmt, quality, arranged))
    h, w = enc.data.shape[:2]
    how = f", JPEG quality {quality}" if fmt == "jpeg" else ""
    how += ", pixels sorted inside each block (format v3: decrypt-mask needs --image)" if arranged == "sorted" else ""
    typer.echo(f"encrypted {image} ({img.shape[0]}x{img.shape[1]}) -> {out} ({h}x{w}, scheme {s.name}{how})")
    if key is None and key_out is None:
        typer.echo("the key was discarded (no --key-out): nobody can decrypt this image", err=True)


def decrypt_cmd(
    image: Path = typer.Argument(..., help="encrypted PNG written by `encseg encrypt`"),
    key: Path = typer.Option(..., help="key file"),
    out: Path = typer.Option(..., "--out", "-o", help="decrypted image to write (.png)"),
    scheme: Optional[str] = typer.Option(None, help="override the scheme recorded in the PNG"),
    block_size: int = typer.Option(16),
    size: Optional[str] = typer.Option(None, help="original HxW, if the PNG records none"),
) -> None:
    """Decrypt an encrypted PNG with its key."""
    require_png_path(check_out(out))
    s = Scheme.parse(scheme, block_size=block_size) if scheme else None
    enc = load_encrypted(image, s, parse_size(size) if size else None)
    plain = encode_png(decrypt(enc, load_key(key)))
    _writing(out, lambda: write_atomic(out, plain))
    typer.echo(f"decrypted {image} -> {out}")


def decrypt_mask_cmd(
    mask: Path = typer.Argument(..., help="label map PNG in encrypted geometry (from the server)"),
    key: Path = typer.Option(..., help="key file of the image"),
    out: Path = typer.Option(..., "--out", "-o", help="label map to write (.png)"),
    like: Optional[Path] = typer.Option(None, help="the encrypted PNG or JPEG it belongs to (scheme + size)"),
    scheme: Optional[str] = typer.Option(None, help="scheme, if --like is not given"),
    block_size: int = typer.Option(16),
    size: Optional[str] = typer.Option(None, help="original HxW, if --like is not given"),
    image: Optional[Path] = typer.Option(None, help="the plain image, for a label map of a sorted-arrangement "
                                         "ciphertext (format v3): its pixel order is rebuilt from it and the key"),
) -> None:
    """Undo the geometry of a label map returned for an encrypted image, and crop the padding."""
    require_png_path(check_out(out))
    if not mask.is_file():
        raise UserError(f"{mask} does not exist or is not a file")
    data = mask.read_bytes()
    labels = _label_map(data, str(mask))
    meta = encrypted_metadata(data, what=str(mask), arrangement=True)
    if like is not None:
        if not like.is_file():
            raise UserError(f"{like} does not exist or is not a file")
        meta = encrypted_metadata(like.read_bytes(), what=str(like), arrangement=True) or meta
    s = Scheme.parse(scheme, block_size=block_size) if scheme else (meta[0] if meta else None)
    hw = parse_size(size) if size else (meta[1] if meta else None)
    if s is None or hw is None:
        raise UserError("pass --like ENCRYPTED.png, or --scheme and --size, to say how the image was encrypted")
    s.check_size(*labels.shape)
    k = load_key(key)
    if meta and meta[2] == "sorted":
        if image is None:
            raise UserError(f"{mask} is a label map of a sorted-arrangement ciphertext (format v3): pass --image "
                            "ORIGINAL so its pixel order can be rebuilt with the key")
        enc = encrypt(read_image(image), k, s)
        if enc.data.shape[:2] != labels.shape or tuple(enc.original_size) != tuple(hw):
            raise UserError(f"{image} is not the image this label map belongs to (its encrypted size differs)")
        labels = restore_labels(labels, enc.data, s)
    elif image is not None:
        raise UserError("--image is only for label maps of sorted-arrangement ciphertexts; this one is not arranged")
    result = encode_png(decrypt_mask(labels, k, s, hw))
    _writing(out, lambda: write_atomic(out, result))
    typer.echo(f"decrypted label map {mask} -> {out}")


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen)
    app.command("encrypt")(encrypt_cmd)
    app.command("decrypt")(decrypt_cmd)
    app.command("decrypt-mask")(decrypt_mask_cmd)
