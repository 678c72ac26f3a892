"""The service's settings in one place: request limits, batching, the inference queue, timeouts and
connection limits, with their defaults. `encseg serve` builds a `ServiceConfig` from its options and
hands it to uvicorn workers through the environment (`to_env` / `from_env`); the app reads it back.

This module imports nothing from the rest of the service, so app.py and commands.py both import it
(and not each other). Every value is checked here, once, at start: a bad option is a one-line
`UserError` before the server binds, never a surprise on the first request.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from encseg.errors import UserError

ENV_PREFIX = "ENCSEG_SERVE_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True)
class Limits:
    """Request limits; all of them are part of the API contract (GET /v1/info reports them).

    `max_pixels` bounds the work of one request: the model's cost grows with the pixel count (faster
    than linearly without sliding-window inference), and it is checked from the image header before a
    pixel is decoded. The PNG limits bound what the chunk walk accepts before the decoder runs."""

    max_body_bytes: int = 32 * 2**20
    max_pixels: int = 1024 * 1024
    max_side: int = 4096
    max_topk: int = 5
    max_chunks: int = 4096  # libpng writes 8 KiB IDATs: 32 MiB of them is 4096 chunks
    max_ancillary_bytes: int = 64 * 1024  # any one chunk other than IDAT (text, ICC profile, ...)
    max_text_bytes: int = 256 * 1024  # all text chunks together (inflated)
    max_field_bytes: int = 64 * 1024  # any one form field, query value or JSON member other than the image

    def __post_init__(self) -> None:
        _positive(self, "max_body_bytes", "max_pixels", "max_side", "max_chunks", "max_ancillary_bytes",
                  "max_text_bytes", "max_field_bytes")
        if not 0 <= self.max_topk <= 255:
            raise UserError(f"max_topk must be between 0 and 255 (got {self.max_topk})")
        if self.max_body_bytes > 2**31 - 1:
            raise UserError(f"max_body_bytes must be below 2 GiB (got {self.max_body_bytes})")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything `encseg serve` runs with. Defaults are the documented ones (docs/security.md).

    - batching: `max_batch` images of one size per forward pass (1 turns batching off), waiting at most
      `max_wait_ms` for company; a batch never holds more than `limits.max_pixels` pixels in all.
    - the inference queue: at most `max_queue_pixels` pixels wait for the model; a request that would
      overflow it, or that waited `queue_timeout_s` without reaching the model, is answered 503 with
      `Retry-After: retry_after_s`. At most `max_inflight` requests are read, checked or run at once
      (503 beyond that).
    - connections: at most `max_connections` open at once (more are answered 503 and closed); the
      request line and headers must arrive within `header_timeout_s`, the body within
      `body_timeout_s` with no pause over `idle_timeout_s` (else 408 and the connection closes);
      idle keep-alive connections close after `keepalive_s`.
    """

    checkpoint: str | None = None
    device: str = "cpu"
    threads: int = 0  # torch threads per worker (0: leave torch's default)
    crop: int = 0  # sliding-window crop (0: the checkpoint's own setting)
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue_pixels: int = 4 * 1024 * 1024
    queue_timeout_s: float = 10.0
    retry_after_s: int = 2
    max_inflight: int = 64
    max_connections: int = 128
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 10.0
    keepalive_s: float = 5.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        _positive(self, "max_batch", "max_queue_pixels", "retry_after_s", "max_inflight", "max_connections")
        _positive_time(self, "queue_timeout_s", "header_timeout_s", "body_timeout_s", "idle_timeout_s", "keepalive_s")
        if not (math.isfinite(self.max_wait_ms) and 0 <= self.max_wait_ms <= 10_000):
            raise UserError(f"max_wait_ms must be between 0 and 10000 (got {self.max_wait_ms})")
        if self.threads < 0 or self.crop < 0:
            raise UserError("threads and crop must be 0 or positive")
        if self.max_queue_pixels < self.limits.max_pixels:
            raise UserError(f"max_queue_pixels ({self.max_queue_pixels}) must hold at least one image of "
                            f"max_pixels ({self.limits.max_pixels})")
        if self.log_level not in LOG_LEVELS:
            raise UserError(f"log level must be one of {', '.join(LOG_LEVELS)} (got {self.log_level[:20]!r})")
        check_device(self.device)

    # -- the environment, for uvicorn workers --------------------------------------------------------

    def to_env(self) -> dict[str, str]:
        """ENCSEG_SERVE_* variables that `from_env` reads back (limits flattened as LIMITS_<NAME>)."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "limits":
                env.update({f"{ENV_PREFIX}LIMITS_{k.upper()}": str(v) for k, v in asdict(value).items()})
            elif value is not None:
                env[ENV_PREFIX + f.name.upper()] = str(value)
        return env

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ServiceConfig":
        """The config `encseg serve` put in the environment; unset variables keep their defaults."""
        env = dict(os.environ if env is None else env)
        limits = {f.name: _coerce(f, env[f"{ENV_PREFIX}LIMITS_{f.name.upper()}"], f"{ENV_PREFIX}LIMITS_{f.name.upper()}")
                  for f in fields(Limits) if f"{ENV_PREFIX}LIMITS_{f.name.upper()}" in env}
        values: dict[str, Any] = {"limits": Limits(**limits)}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if f.name != "limits" and name in env:
                values[f.name] = _coerce(f, env[name], name)
        return cls(**values)

    def with_limits(self, **changes: Any) -> "ServiceConfig":
        return replace(self, limits=replace(self.limits, **changes))


def check_device(device: str) -> None:
    """Refuse a device string torch cannot parse, or a CUDA/MPS device this machine does not have."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown device {device[:40]!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps")


def _coerce(f, text: str, name: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "str | None":
            return text or None
        return text
    except ValueError:
        raise UserError(f"{name}={text[:40]!r} is not a valid {kind}") from None


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer (got {value!r})")


def _positive_time(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 86_400):
            raise UserError(f"{name} must be a positive number of seconds (got {value!r})")
