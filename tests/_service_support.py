"""Shared by the service tests: a tiny stand-in model, a real uvicorn server on a loopback port, PNG makers."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import numpy as np
import torch
import uvicorn
from PIL import Image

from encseg.cipher import Scheme
from encseg.service.app import ServiceConfig, create_app
from encseg.service.segmenter import ModelInfo, Segmenter

NUM_CLASSES = 19


def stand_in_model(seed: int = 0) -> torch.nn.Module:
    """A 1x1 convolution: per-pixel, so it commutes with block scrambling and pixel shuffling."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, NUM_CLASSES, 1)


def stand_in_segmenter(schemes=("bs-np-cs",), patch_size: int = 16) -> Segmenter:
    info = ModelInfo("stand-in-1x1", NUM_CLASSES, patch_size, schemes=[Scheme.parse(s, patch_size) for s in schemes])
    return Segmenter(stand_in_model(), info)


def scene(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    """A small street scene from the procedural benchmark (any size)."""
    from encseg.data.streets import render_scene

    return render_scene(seed, size=(h, w))[0]


class ServerThread:
    """uvicorn serving an app on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(segmenter: Segmenter | None = None, config: ServiceConfig = ServiceConfig()) -> ServerThread:
    return ServerThread(create_app(segmenter or stand_in_segmenter(), config))


def png_bytes(img: np.ndarray | Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format="PNG", **save)
    return buf.getvalue()


def chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def raw_png(width: int, height: int, depth: int = 8, color_type: int = 2, idat: bytes | None = None,
            extra_chunks: bytes = b"") -> bytes:
    """A PNG assembled by hand (for headers Pillow would never write)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra_chunks + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zero_bomb(width: int, height: int) -> bytes:
    """A valid RGB PNG of zeros: a few hundred KB that decode to width*height*3 bytes."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    return raw_png(width, height, idat=b"".join(parts))
