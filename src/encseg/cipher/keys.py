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


def save_key(key: Key, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the key's hex form to `path`, created with mode 0600 (never briefly wider)."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UserError(f"{path} already exists; refusing to overwrite a key file") from None
    except OSError as exc:
        raise UserError(f"cannot write key file {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # O_CREAT honours the umask only downwards; pin it when overwriting
        os.write(fd, (key.hex() + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return path


def load_key(path: str | os.PathLike) -> Key:
    """Read a key file, refusing files that other users can read or write."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"key file {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise UserError(
            f"key file {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}` if it has not leaked, or discard the key"
        )
    text = path.read_text(encoding="ascii", errors="replace")
    return Key.from_hex(text)
