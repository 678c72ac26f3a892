"""Schemes: the frozen, JSON-serialisable description of a block-wise cipher (block size + steps)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from encseg.errors import UserError

# Format versions (docs/encryption-format.md, "Format v2"). v2 is v1 plus one step; nothing of v1
# changed. A scheme descriptor's "version" is the lowest version that has all of its steps
# (`Scheme.version`), so every v1 scheme still serialises with "version": 1. FORMAT_VERSION is the
# base format and the version of the encrypted file's metadata object (section 8), whose layout did
# not change: it stays 1 for every file. FORMAT_VERSIONS are the descriptor versions this reads.
FORMAT_VERSION = 1
FORMAT_VERSIONS = (1, 2)

BLOCK_SCRAMBLE = "block-scramble"
PIXEL_SHUFFLE = "pixel-shuffle"
BLOCK_PIXEL_SHUFFLE = "block-pixel-shuffle"  # format v2: one pixel permutation per block
NEGATIVE_POSITIVE = "negative-positive"
CHANNEL_SHUFFLE = "channel-shuffle"
STEP_NAMES = (BLOCK_SCRAMBLE, PIXEL_SHUFFLE, BLOCK_PIXEL_SHUFFLE, NEGATIVE_POSITIVE, CHANNEL_SHUFFLE)
STEP_VERSIONS = {BLOCK_SCRAMBLE: 1, PIXEL_SHUFFLE: 1, BLOCK_PIXEL_SHUFFLE: 2, NEGATIVE_POSITIVE: 1, CHANNEL_SHUFFLE: 1}
GEOMETRIC_STEPS = (BLOCK_SCRAMBLE, PIXEL_SHUFFLE, BLOCK_PIXEL_SHUFFLE)
GROUPED_STEPS = (PIXEL_SHUFFLE, BLOCK_PIXEL_SHUFFLE)  # the steps that take `group`
_CODES = {"bs": BLOCK_SCRAMBLE, "ps": PIXEL_SHUFFLE, "psb": BLOCK_PIXEL_SHUFFLE, "np": NEGATIVE_POSITIVE,
          "cs": CHANNEL_SHUFFLE}
_CODE_RE = re.compile(r"(bs|psb|ps|np|cs)([0-9]*)")

PRESETS: dict[str, str] = {
    "plain": "no encryption (the identity; for baselines)",
    "bs": "block scrambling only (known to fall to jigsaw solvers; for comparison)",
    "bs-np-cs": "block scrambling + negative-positive + channel shuffling (the default until the frontier: falls to a jigsaw solver)",
    "bs-ps-np-cs": "all four steps, full pixel shuffling inside each block",
    "ps-np-cs": "pixel shuffling + NP + CS, blocks keep their positions",
    "bs-ps4-np-cs": "all four steps, pixel shuffling restricted to 4x4 sub-blocks",
    "ps4-np-cs": "restricted (4x4) pixel shuffling + NP + CS, blocks keep their positions",
    "bs-psb-np-cs": "all four steps, one pixel permutation per block (format v2; the default, docs/results.md)",
    "bs-psb4-np-cs": "all four steps, one pixel permutation per block restricted to 4x4 sub-blocks (format v2)",
    "psb-np-cs": "one pixel permutation per block + NP + CS, blocks keep their positions (format v2)",
}
DEFAULT_SCHEME = "bs-psb-np-cs"  # chosen by the privacy-accuracy frontier (docs/results.md, docs/security.md)


@dataclass(frozen=True)
class Step:
    """One step of a scheme. `group` (pixel-shuffle, block-pixel-shuffle) restricts shuffling to group x
    group sub-blocks."""

    name: str
    group: int | None = None

    def to_dict(self) -> dict:
        d: dict = {"name": self.name}
        if self.group is not None:
            d["group"] = self.group
        return d

    @property
    def code(self) -> str:
        base = {v: k for k, v in _CODES.items()}[self.name]
        return f"{base}{self.group}" if self.group is not None else base


@dataclass(frozen=True)
class Scheme:
    """Block size p and the ordered steps; validated on construction."""

    block_size: int = 16
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        p = self.block_size
        if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 256:
            raise UserError(f"block size must be an integer in 1..256 (got {p!r})")
        seen = set()
        for s in self.steps:
            if s.name not in STEP_NAMES:
                raise UserError(f"unknown step {s.name!r}; known steps: {', '.join(STEP_NAMES)}")
            if s.name in seen:
                raise UserError(f"step {s.name!r} appears twice; each step may appear once")
            seen.add(s.name)
            if s.group is not None:
                if s.name not in GROUPED_STEPS:
                    raise UserError(f"only {' and '.join(GROUPED_STEPS)} take a group (got one for {s.name})")
                if not isinstance(s.group, int) or isinstance(s.group, bool) or s.group < 1 or p % s.group:
                    raise UserError(f"{s.name} group {s.group} must divide the block size {p}")
        if PIXEL_SHUFFLE in seen and BLOCK_PIXEL_SHUFFLE in seen:
            raise UserError(f"a scheme has {PIXEL_SHUFFLE} or {BLOCK_PIXEL_SHUFFLE}, not both (each shuffles the pixels of every block)")

    # -- names and text forms -------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Short name such as `bs-ps4-np-cs` (`plain` when there are no steps)."""
        return "-".join(s.code for s in self.steps) or "plain"

    @property
    def version(self) -> int:
        """The format version this scheme needs: the highest of its steps' (1 for every v1 scheme)."""
        return max((STEP_VERSIONS[s.name] for s in self.steps), default=1)

    @property
    def moves_pixels(self) -> bool:
        return any(s.name in GEOMETRIC_STEPS for s in self.steps)

    @classmethod
    def parse(cls, text: str, block_size: int = 16) -> "Scheme":
        """A preset name or any `-`-joined code list (bs, ps, ps<q>, psb, psb<q>, np, cs), or a JSON descriptor."""
        text = text.strip()
        if text.startswith("{"):
            return cls.from_json(text)
        if text in ("plain", "none", ""):
            return cls(block_size, ())
        steps = []
        for code in text.split("-"):
            m = _CODE_RE.fullmatch(code)
            if not m or (m[2] and _CODES[m[1]] not in GROUPED_STEPS):
                raise UserError(
                    f"unknown scheme {text!r}: use a preset ({', '.join(PRESETS)}) or codes bs, ps, ps<q>, psb, psb<q>, np, cs joined by '-'"
                )
            steps.append(Step(_CODES[m[1]], int(m[2]) if m[2] else None))
        return cls(block_size, tuple(steps))

    def to_dict(self) -> dict:
        return {"version": self.version, "block_size": self.block_size, "steps": [s.to_dict() for s in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "Scheme":
        if not isinstance(d, dict):
            raise UserError("a scheme descriptor is a JSON object")
        version = d.get("version")  # absent: the version the steps need
        if "version" in d and (isinstance(version, bool) or version not in FORMAT_VERSIONS):
            raise UserError(f"scheme format version {version!r} is not supported (this reads versions 1 and 2)")
        unknown = set(d) - {"version", "block_size", "steps"}
        if unknown:
            raise UserError(f"unknown scheme fields: {', '.join(sorted(unknown))}")
        steps = d.get("steps", [])
        if not isinstance(steps, list) or not all(isinstance(s, dict) and "name" in s for s in steps):
            raise UserError('scheme "steps" is a list of {"name": ..., ["group": q]} objects')
        for s in steps:
            if set(s) - {"name", "group"}:
                raise UserError(f"unknown step fields: {', '.join(sorted(set(s) - {'name', 'group'}))}")
        scheme = cls(d.get("block_size", 16), tuple(Step(s["name"], s.get("group")) for s in steps))
        if version is not None and scheme.version > version:
            newer = next(s.name for s in scheme.steps if STEP_VERSIONS[s.name] > version)
            raise UserError(f"step {newer!r} needs scheme format version {scheme.version}; the descriptor says {version}")
        return scheme

    @classmethod
    def from_json(cls, text: str) -> "Scheme":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise UserError(f"scheme descriptor is not valid JSON: {exc.msg}") from None

    def check_size(self, height: int, width: int) -> None:
        """Refuse an encrypted image whose sides are not multiples of the block size."""
        p = self.block_size
        if height <= 0 or width <= 0 or height % p or width % p:
            raise UserError(f"encrypted image is {height}x{width}; both sides must be positive multiples of the block size {p}")
