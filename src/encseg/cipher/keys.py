"""Per-image keys: 32 bytes from the OS CSPRNG that never print, compare in constant time, and are
saved only to owner-only (0600) files."""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from encseg.errors import UserError

KEY_BYTES = 32


class Key:
    """A 256-bit key for one image. `repr`/`str` never show the bytes; use `.hex()` deliberately."""

    __slots__ = ("_bytes",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_BYTES:
            # Say only the length: the value itself must never reach a message or a log.
            n = len(raw) if isinstance(raw, (bytes, bytearray)) else type(raw).__name__
            raise UserError(f"a key is exactly {KEY_BYTES} bytes (got {n})")
        self._bytes = bytes(raw)

    @classmethod
    def generate(cls) -> "Key":
        """A fresh key from the OS CSPRNG (`secrets.token_bytes`)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_hex(cls, text: str) -> "Key":
        text = text.strip()
        if len(text) != 2 * KEY_BYTES:
            raise UserError(f"a key in text form is {2 * KEY_BYTES} hex characters (got {len(text)})")
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise UserError("a key in text form may contain only hex characters 0-9, a-f") from None

    def hex(self) -> str:
        """The 64-character text form. Only call this to write a key file or show it on request."""
        return self._bytes.hex()

    def to_bytes(self) -> bytes:
        return self._bytes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        return hmac.compare_digest(self._bytes, other._bytes)

    __hash__ = None  # type: ignore[assignment]  # keys are not dict keys: hashing would be a side channel

    def __repr__(self) -> str:
        return "Key(<secret>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce_ex__(self, protocol: object):
        # pickle (and multiprocessing, and caches) would write the raw bytes wherever the pickle goes
        raise TypeError("a Key cannot be pickled: write it with save_key() (0600) if you mean to keep it")

    def __copy__(self) -> "Key":
        return self  # immutable: a copy is the same key

    def __deepcopy__(self, memo: dict) -> "Key":
        return self


def save_key(key: Key, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the key's hex form to `path` as a 0600 file, never following a symlink.

    The key goes to a fresh temporary file in the same folder (O_CREAT | O_EXCL | O_NOFOLLOW, mode
    0600 from the start), is flushed to disk, then moves into place atomically: with `overwrite`,
    `rename` replaces whatever is at `path` (a symlink planted there is replaced, its target is never
    written); without it, `link` refuses if anything (a file, a symlink, even a dangling one) is there.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"{path} is a folder; name the key file to write")
    folder = path.parent
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise UserError(f"cannot write key file {path}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, (key.hex() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError:
                raise UserError(f"{path} already exists; refusing to overwrite a key file") from None
    except OSError as exc:
        raise UserError(f"cannot write key file {path}: {exc.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return path


def load_key(path: str | os.PathLike) -> Key:
    """Read a key file, refusing files that other users can read or write."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise UserError(
            f"key file {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}` if it has not leaked, or discard the key"
        )
    if st.st_size > 1024:
        raise UserError(f"key file {path} is {st.st_size} bytes; a key file holds 64 hex characters")
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read key file {path}: {exc.strerror}") from None
    return Key.from_hex(text)
