"""A procedural street benchmark in the Cityscapes layout (Cityscapes itself needs an account to download).

Each scene is rendered from one integer seed with a pinhole camera 1.3-1.7 m above a flat street:
a perspective road with lanes, dashed and solid marks and crosswalks, curbs and paved sidewalks,
grass strips and parks, building façades (perspective-correct windows, shop fronts, side walls) on
both sides and across the far end, walls and see-through fences, trees with noisy crowns, poles,
street lamps, traffic lights and signs, moving and parked cars, trucks, buses, the odd tram,
pedestrians, cyclists and motorcyclists, all drawn far-to-near so nearer things occlude farther
ones. Sun shadows, haze, exposure, colour cast, vignetting, blur and sensor noise vary per scene.
Labels are the 19 Cityscapes trainIds (`encseg.data.cityscapes`).

This is a benchmark for comparing methods under the same budget, not a substitute for Cityscapes:
every result measured on it says so. Version 5 is calibrated for the CPU budget, where a plain
vit-tiny SETR (4000 steps of batch 4 at 128x256) should land between 45 and 85 mIoU (docs/training.md,
"Calibration"): the lens is longer than v4's (focal length 0.95-1.25 x width, was 0.72-1.05), poles,
signs and traffic lights are larger than life, and walls, fences, riders and two-wheelers appear
more often, so that every class is seen often enough to be learnt in a few thousand steps. Class
frequencies are therefore flatter than Cityscapes' (`scripts/patch_ceiling.py` prints them).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from encseg.data.cityscapes import (
    IMAGE_SUFFIX,
    LABEL_IDS_SUFFIX,
    TRAIN_IDS_SUFFIX,
    train_ids_to_label_ids,
)
from encseg.errors import UserError

GENERATOR_VERSION = 5

# trainIds (see cityscapes.CLASS_NAMES)
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)


# ------------------------------------------------------------------------------------------------
# Noise: smooth value noise on a coarse grid, bilinearly upsampled (vectorised, no loops over pixels)
# ------------------------------------------------------------------------------------------------
def value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1) with features about `cell` pixels wide."""
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    ys = np.arange(h, dtype=np.float32) / cell
    xs = np.arange(w, dtype=np.float32) / cell
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = ys - y0, xs - x0
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def fractal_noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 4) -> np.ndarray:
    """Sum of octaves of value noise, zero mean and unit standard deviation."""
    out = np.zeros((h, w), dtype=np.float32)
    amp = 1.0
    for _ in range(octaves):
        out += amp * value_noise(rng, h, w, max(cell, 1.0))
        cell, amp = cell / 2, amp * 0.55
    out -= out.mean()
    return out / (out.std() + 1e-6)


# ------------------------------------------------------------------------------------------------
# Canvas: image, label map and a depth buffer; primitives fill a mask inside their bounding box
# ------------------------------------------------------------------------------------------------
class Canvas:
    def __init__(self, h: int, w: int, noise: dict[str, np.ndarray]) -> None:
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), dtype=np.float32)
        self.lab = np.full((h, w), 255, dtype=np.uint8)
        self.depth = np.full((h, w), np.inf, dtype=np.float32)
        self.noise = noise

    def window(self, x0: float, y0: float, x1: float, y1: float):
        """Clipped integer box and pixel-centre coordinates (column / row vectors), or None."""
        ix0, iy0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        ix1, iy1 = min(int(np.ceil(x1)) + 1, self.w), min(int(np.ceil(y1)) + 1, self.h)
        if ix1 <= ix0 or iy1 <= iy0:
            return None
        yy = np.arange(iy0, iy1, dtype=np.float32)[:, None] + 0.5
        xx = np.arange(ix0, ix1, dtype=np.float32)[None, :] + 0.5
        return (iy0, iy1, ix0, ix1), yy, xx

    def paint(self, box, mask, color, label, depth: float, texture: float = 0.0, noise: str = "fine") -> None:
        """Write `color` (rgb, HxWx3 array or callable(yy, xx)) and `label` where `mask` holds."""
        iy0, iy1, ix0, ix1 = box
        if not mask.any():
            return
        if callable(color):
            yy = np.arange(iy0, iy1, dtype=np.float32)[:, None] + 0.5
            xx = np.arange(ix0, ix1, dtype=np.float32)[None, :] + 0.5
            color = color(yy, xx)
        col = np.broadcast_to(np.asarray(color, dtype=np.float32), (iy1 - iy0, ix1 - ix0, 3))
        if texture:
            col = col * (1.0 + texture * self.noise[noise][iy0:iy1, ix0:ix1, None])
        region = self.img[iy0:iy1, ix0:ix1]
        region[mask] = col[mask]
        lab = self.lab[iy0:iy1, ix0:ix1]
        if np.ndim(label) == 0:
            lab[mask] = label
        else:
            lab[mask] = np.broadcast_to(label, mask.shape)[mask]
        self.depth[iy0:iy1, ix0:ix1][mask] = depth

    # -- shapes in screen coordinates ------------------------------------------------------------
    def polygon(self, pts, color, label, depth, texture=0.0, noise="fine") -> None:
        """A convex polygon given as [(x, y), ...] in either winding."""
        pts = np.asarray(pts, dtype=np.float32)
        win = self.window(pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
        if win is None:
            return
        box, yy, xx = win
        self.paint(box, _convex_mask(pts, yy, xx), color, label, depth, texture, noise)

    def rect(self, x0, y0, x1, y1, color, label, depth, texture=0.0, noise="fine") -> None:
        win = self.window(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if win is None:
            return
        box, yy, xx = win
        mask = (yy >= min(y0, y1)) & (yy < max(y0, y1)) & (xx >= min(x0, x1)) & (xx < max(x0, x1))
        self.paint(box, mask, color, label, depth, texture, noise)

    def ellipse(self, cx, cy, rx, ry, color, label, depth, texture=0.0, noise="fine", inner=0.0, jag=0.0,
                label_inner: bool = False) -> None:
        """Filled ellipse (a ring when `inner` > 0, labelled whole with `label_inner`; a ragged outline
        when `jag` > 0)."""
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        win = self.window(cx - rx * (1 + jag), cy - ry * (1 + jag), cx + rx * (1 + jag), cy + ry * (1 + jag))
        if win is None:
            return
        box, yy, xx = win
        r2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        limit = 1.0
        if jag:
            iy0, iy1, ix0, ix1 = box
            limit = (1.0 + jag * self.noise["mid"][iy0:iy1, ix0:ix1]) ** 2
        mask = r2 <= limit
        if inner:
            self.paint(box, mask & (r2 >= inner * inner), color, label, depth, texture, noise)
            if label_inner:  # annotated as a whole (Cityscapes polygons do not cut out wheel interiors)
                self.label_only(box, mask, label, depth)
            return
        self.paint(box, mask, color, label, depth, texture, noise)

    def label_only(self, box, mask, label: int, depth: float) -> None:
        """Set `label` where `mask` holds without touching the image: an annotation that covers the
        see-through parts of an object (a mesh fence, the inside of a wheel), as Cityscapes' polygons do."""
        iy0, iy1, ix0, ix1 = box
        self.lab[iy0:iy1, ix0:ix1][mask] = label
        self.depth[iy0:iy1, ix0:ix1][mask] = depth

    def segment(self, x0, y0, x1, y1, width, color, label, depth, texture=0.0) -> None:
        """A thick line with round caps."""
        r = max(width / 2, 0.45)
        win = self.window(min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
        if win is None:
            return
        box, yy, xx = win
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        mask = (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2 <= r * r
        self.paint(box, mask, color, label, depth, texture)


# ------------------------------------------------------------------------------------------------
# Scene description
# ------------------------------------------------------------------------------------------------
FACADE_COLOURS = np.array(
    [(178, 160, 140), (150, 150, 150), (160, 90, 70), (205, 200, 185), (120, 105, 95),
     (190, 175, 120), (110, 115, 125), (215, 190, 160), (140, 120, 100), (95, 90, 90)],
    dtype=np.float32,
)  # fmt: skip
CAR_COLOURS = np.array(
    [(25, 25, 28), (200, 200, 205), (120, 122, 128), (150, 20, 20), (20, 40, 120), (235, 235, 235),
     (60, 70, 60), (170, 140, 90), (40, 90, 140), (190, 170, 40), (90, 30, 40), (80, 80, 85)],
    dtype=np.float32,
)  # fmt: skip
CLOTHES = np.array(
    [(30, 30, 35), (60, 60, 90), (150, 30, 40), (200, 200, 190), (40, 80, 50), (120, 90, 60),
     (90, 90, 95), (20, 50, 110), (200, 150, 40), (160, 100, 140)],
    dtype=np.float32,
)  # fmt: skip
SKIN = np.array([(230, 190, 160), (200, 150, 110), (150, 100, 70), (100, 70, 50)], dtype=np.float32)


@dataclass
class Segment:
    """A stretch of one side of the street between depths z0 and z1."""

    z0: float
    z1: float
    kind: str  # "building" | "park" | "open"
    setback: float  # metres from the sidewalk's outer edge to the façade/boundary
    strip: int  # label of the ground between sidewalk and façade (SIDEWALK or TERRAIN)
    height: float = 0.0
    colour: np.ndarray | None = None
    floor_h: float = 3.0
    win_w: float = 2.5
    win_frac: float = 0.5
    shop: bool = False
    boundary: str = ""  # "wall" | "fence" | "hedge" | ""


class StreetScene:
    """Renders one scene; all randomness comes from `np.random.default_rng(seed)`."""

    def __init__(self, seed: int, size: tuple[int, int]) -> None:
        self.rng = rng = np.random.default_rng(seed)
        self.h, self.w = h, w = size
        self.f = w * rng.uniform(0.95, 1.25)
        self.yh = h * rng.uniform(0.36, 0.5)
        self.xv = w * rng.uniform(0.42, 0.58)
        self.hc = rng.uniform(1.3, 1.7)
        noise = {
            "fine": fractal_noise(rng, h, w, 3.0, 2) * 0.5,
            "mid": fractal_noise(rng, h, w, 10.0, 3) * 0.5,
            "coarse": fractal_noise(rng, h, w, 40.0, 4) * 0.5,
        }
        self.c = Canvas(h, w, noise)
        # street cross-section (lateral X, metres; camera at X=0)
        self.lane_w = rng.uniform(2.9, 3.6)
        n_left, n_right = int(rng.integers(0, 3)), int(rng.integers(0, 2))
        offset = rng.uniform(-0.5, 0.5)
        self.road_l = offset - (n_left + 0.5) * self.lane_w
        self.road_r = offset + (n_right + 0.5) * self.lane_w
        self.parking = (rng.random() < 0.6, rng.random() < 0.6)  # a parking lane on each side
        if self.parking[0]:
            self.road_l -= 2.2
        if self.parking[1]:
            self.road_r += 2.2
        self.lanes = [self.road_l + (2.2 if self.parking[0] else 0) + k * self.lane_w for k in range(n_left + n_right + 2)]
        self.sidewalk = (rng.uniform(1.8, 4.5), rng.uniform(1.8, 4.5))
        # a grass verge between curb and footway on some streets (part of the sidewalk's width)
        self.verge = tuple(rng.uniform(0.8, 1.6) if rng.random() < 0.5 else 0.0 for _ in range(2))
        self.z_end = rng.uniform(70, 200)
        self.far_buildings = rng.random() < 0.75
        self.sides = [self._segments(s) for s in (0, 1)]
        sun = rng.random()
        self.sun_side = -1 if sun < 0.4 else (1 if sun < 0.8 else 0)  # 0: overcast, no hard shadows
        self.shadow_k = rng.uniform(0.3, 1.4)
        self.crosswalk = rng.uniform(8, 30) if rng.random() < 0.4 else None
        self.asphalt = rng.uniform(60, 110) * np.array([1.0, 1.0, 1.03]) * rng.uniform(0.95, 1.05, 3)
        tints = np.array([(1.0, 1.0, 1.0), (1.1, 0.85, 0.8), (1.05, 1.0, 0.88), (0.95, 0.97, 1.02)])
        self.paving = rng.uniform(125, 190) * tints[rng.integers(len(tints))] * rng.uniform(0.93, 1.07, 3)
        self.grass = np.array([85, 120, 45]) * rng.uniform(0.75, 1.25, 3)

    # -- geometry ------------------------------------------------------------------------------
    def proj(self, X, Y, Z):
        return self.xv + self.f * X / Z, self.yh + self.f * (self.hc - Y) / Z

    def side_x(self, side: int, seg: Segment | None = None) -> float:
        """Lateral position of the sidewalk's outer edge (plus the segment's setback)."""
        extra = seg.setback if seg is not None else 0.0
        if side == 0:
            return self.road_l - self.sidewalk[0] - extra
        return self.road_r + self.sidewalk[1] + extra

    def _segments(self, side: int) -> list[Segment]:
        rng = self.rng
        segs, z = [], 1.0
        while z < self.z_end:
            length = rng.uniform(7, 28)
            r = rng.random()
            kind = "building" if r < 0.45 else ("park" if r < 0.65 else "open")
            seg = Segment(
                z0=z, z1=min(z + length, self.z_end + 5), kind=kind,
                setback=rng.uniform(1.0, 3.5) if rng.random() < 0.6 else 0.0,
                strip=TERRAIN if rng.random() < 0.55 else SIDEWALK,
            )  # fmt: skip
            if kind == "building":
                seg.height = rng.uniform(6, 22)
                seg.colour = FACADE_COLOURS[rng.integers(len(FACADE_COLOURS))] * rng.uniform(0.85, 1.15, 3)
                seg.floor_h = rng.uniform(2.8, 3.6)
                seg.win_w = rng.uniform(1.8, 4.0)
                seg.win_frac = rng.uniform(0.3, 0.65)
                seg.shop = rng.random() < 0.5
                if seg.setback >= 1.0 and rng.random() < 0.6:  # a front-garden wall or fence
                    seg.boundary = "wall" if rng.random() < 0.5 else "fence"
            else:
                seg.strip = TERRAIN if kind == "park" else seg.strip
                seg.setback = rng.uniform(0.0, 1.5)
                odds = [0.5, 0.4, 0.1, 0.0] if kind == "open" else [0.3, 0.4, 0.0, 0.3]
                seg.boundary = ["wall", "fence", "hedge", ""][rng.choice(4, p=odds)]
            segs.append(seg)
            z += length
        return segs

    def segment_at(self, side: int, Z: np.ndarray) -> np.ndarray:
        starts = np.array([s.z0 for s in self.sides[side]])
        return np.clip(np.searchsorted(starts, Z, side="right") - 1, 0, len(starts) - 1)

    # -- layers --------------------------------------------------------------------------------
    def render(self) -> tuple[np.ndarray, np.ndarray]:
        self.draw_sky()
        self.draw_far_end()
        self.draw_ground()
        for side in (0, 1):
            for seg in reversed(self.sides[side]):
                self.draw_segment(side, seg)
        for _, draw in sorted(self.sprites(), key=lambda t: -t[0]):
            draw()
        return self.finish()

    def draw_sky(self) -> None:
        rng, c = self.rng, self.c
        overcast = rng.random() < 0.3
        y = (np.arange(self.h, dtype=np.float32)[:, None, None] / max(self.yh, 1.0)).clip(0, 1)
        if overcast:
            top = np.array([150, 155, 165]) * rng.uniform(0.8, 1.15)
            bottom = np.array([200, 202, 205]) * rng.uniform(0.85, 1.1)
        else:
            top = np.array([50, 110, 190]) * rng.uniform(0.8, 1.15, 3)
            bottom = np.array([170, 200, 230]) * rng.uniform(0.9, 1.08, 3)
        sky = top * (1 - y) + bottom * y
        sky = np.broadcast_to(sky, (self.h, self.w, 3)).copy()
        cover = rng.uniform(0.0, 0.9)
        clouds = np.clip((c.noise["coarse"] * 1.4 + c.noise["mid"] * 0.6 + cover - 0.4) * 1.5, 0, 1)[..., None]
        white = np.array([240, 240, 245]) * (0.8 + 0.2 * (1 - clouds)) if not overcast else np.array([210, 210, 215])
        c.img[:] = sky * (1 - clouds) + white * clouds
        c.lab[:] = SKY
        c.depth[:] = 1e4

    def draw_far_end(self) -> None:
        rng, c = self.rng, self.c
        Z = self.z_end
        y_ground = self.proj(0, 0, Z)[1]
        if not self.far_buildings:  # open horizon: a band of distant trees and hills
            base = np.array([70, 95, 60]) * rng.uniform(0.8, 1.2, 3)
            X = -200.0
            while X < 200:
                wdt = rng.uniform(4, 14)
                top = rng.uniform(3, 12)
                x0, y0 = self.proj(X, top, Z + 40)
                x1, _ = self.proj(X + wdt, 0, Z + 40)
                c.ellipse((x0 + x1) / 2, y0 + (x1 - x0) * 0.3, (x1 - x0) * 0.7, (x1 - x0) * 0.45 + 1,
                          base, VEGETATION, Z + 40, texture=0.25, jag=0.2)  # fmt: skip
                X += wdt * 0.8
            _, yb = self.proj(0, 0, Z + 40)
            c.rect(0, yb - 1, self.w, y_ground + 1, base * 0.9, VEGETATION, Z + 40, texture=0.3)
            return
        X = -250.0
        while X < 250:
            wdt = rng.uniform(8, 30)
            height = rng.uniform(5, 28)
            depth = Z + rng.uniform(0, 20)
            col = FACADE_COLOURS[rng.integers(len(FACADE_COLOURS))] * rng.uniform(0.8, 1.1, 3)
            x0, y0 = self.proj(X, height, depth)
            x1, y1 = self.proj(X + wdt, 0, depth)
            floor_px = 3.2 * self.f / depth
            win_px = 2.8 * self.f / depth

            def facade(yy, xx, col=col, y1=y1, x0=x0, floor_px=floor_px, win_px=win_px):
                fy = ((y1 - yy) / floor_px) % 1.0
                fx = ((xx - x0) / win_px) % 1.0
                win = (fy > 0.35) & (fy < 0.8) & (fx > 0.3) & (fx < 0.75) & ((y1 - yy) > floor_px)
                return np.where(win[..., None], col * 0.45, col)

            c.rect(x0, y0, x1, y1 + 1, facade, BUILDING, depth, texture=0.08)
            X += wdt

    def draw_ground(self) -> None:
        c = self.c
        y0 = int(max(np.floor(self.proj(0, 0, self.z_end)[1]), np.floor(self.yh) + 1))
        if y0 >= self.h:
            return
        yy = np.arange(y0, self.h, dtype=np.float32)[:, None] + 0.5
        xx = np.arange(self.w, dtype=np.float32)[None, :] + 0.5
        Z = self.f * self.hc / (yy - self.yh)
        X = (xx - self.xv) * Z / self.f
        Z = np.broadcast_to(Z, X.shape)
        lab = np.full(X.shape, ROAD, dtype=np.uint8)
        col = np.broadcast_to(self.asphalt.astype(np.float32), X.shape + (3,)).copy()
        fade = np.exp(-Z / 35.0)[..., None]  # texture detail fades with distance
        # road: marks, crosswalk
        px = 1.0 / (self.f / Z)  # metres per pixel at that depth
        mark_w = np.maximum(0.07, px * 0.6)
        marks = np.zeros(X.shape, dtype=bool)
        for k, lx in enumerate(self.lanes):
            solid = k == 0 or k == len(self.lanes) - 1
            near = np.abs(X - lx) < mark_w
            marks |= near if solid else near & ((Z % 9.0) < 3.5)
        if self.crosswalk is not None:
            zc = self.crosswalk
            marks |= (Z > zc) & (Z < zc + 3.5) & ((X % 1.0) < 0.5) & (X > self.road_l + 0.3) & (X < self.road_r - 0.3)
        col[marks] = np.array([225, 225, 220], dtype=np.float32) * 0.9
        # sidewalks and strips
        for side in (0, 1):
            edge = self.road_l if side == 0 else self.road_r
            sgn = -1 if side == 0 else 1
            out = sgn * (X - edge)  # metres beyond the curb
            walk = (out > 0) & (out <= self.sidewalk[side])
            curb = (out > 0) & (out <= 0.25)
            segs = self.sides[side]
            si = self.segment_at(side, Z)
            strip_lab = np.array([s.strip for s in segs], dtype=np.uint8)[si]
            beyond = out > self.sidewalk[side]
            lab[walk | (beyond & (strip_lab == SIDEWALK))] = SIDEWALK
            lab[(beyond & (strip_lab == TERRAIN)) | ((out > 0.25) & (out <= self.verge[side]))] = TERRAIN
            tiles = ((np.abs(X) % 0.6) < 0.05) | ((Z % 0.6) < 0.05 * np.maximum(1, Z / 6))
            paving = self.paving * np.where(tiles[..., None], 0.8, 1.0)
            sel = (lab == SIDEWALK) & (out > 0)
            col[sel] = paving[sel]
            col[curb] = self.paving * 1.1
            ter = (lab == TERRAIN) & (out > 0)
            col[ter] = self.grass * (1 + 0.5 * c.noise["fine"][y0:, :, None] * fade + 0.4 * c.noise["mid"][y0:, :, None])[ter]
        # shadows from the buildings on the sunny side
        shade = np.ones(X.shape, dtype=np.float32)
        if self.sun_side != 0:
            side = 0 if self.sun_side < 0 else 1
            segs = self.sides[side]
            si = self.segment_at(side, Z)
            heights = np.array([s.height if s.kind == "building" else 0.0 for s in segs], dtype=np.float32)[si]
            wall = np.array([self.side_x(side, s) for s in segs], dtype=np.float32)[si]
            reach = wall + (heights * self.shadow_k if side == 0 else -heights * self.shadow_k)
            in_shadow = (X < reach) if side == 0 else (X > reach)
            shade = np.where(in_shadow & (heights > 0), 0.55, 1.0).astype(np.float32)
        col *= (1 + 0.15 * c.noise["mid"][y0:, :, None] * fade + 0.08 * c.noise["fine"][y0:, :, None])
        col *= (1 + 0.12 * c.noise["coarse"][y0:, :, None])
        col *= shade[..., None]
        if self.sun_side != 0:
            col[shade < 1] *= np.array([0.92, 0.97, 1.1], dtype=np.float32)
        c.img[y0:] = col
        c.lab[y0:] = lab
        c.depth[y0:] = Z
        self.shade_rows = (y0, shade)

    def draw_segment(self, side: int, seg: Segment) -> None:
        c, rng = self.c, self.rng
        Xb = self.side_x(side, seg)
        z0, z1 = max(seg.z0, 1.0), seg.z1
        if seg.kind == "building":
            self.draw_facade(side, Xb, z0, z1, seg)
            if seg.boundary:  # along the sidewalk's outer edge, in front of the set-back façade
                self.draw_boundary(side, self.side_x(side), z0, z1, seg.boundary, rng.uniform(1.0, 2.0))
            return
        # park / open: trees and grass behind an optional boundary, buildings further back
        if rng.random() < 0.6:
            back = Segment(z0, z1, "building", 0, TERRAIN, height=rng.uniform(8, 24),
                           colour=FACADE_COLOURS[rng.integers(len(FACADE_COLOURS))] * 0.9,
                           floor_h=3.2, win_w=rng.uniform(2, 4), win_frac=0.5)  # fmt: skip
            self.draw_facade(side, Xb + (-1 if side == 0 else 1) * rng.uniform(12, 30), z0, z1, back)
        if seg.kind == "park":
            n = int((z1 - z0) / rng.uniform(3, 7)) + 1
            for _ in range(n):
                Z = rng.uniform(z0, z1)
                X = Xb + (-1 if side == 0 else 1) * rng.uniform(1, 10)
                self.tree(X, Z, rng.uniform(4, 11))
        height = {"wall": rng.uniform(1.5, 3.5), "fence": rng.uniform(1.5, 3.0), "hedge": rng.uniform(0.8, 1.8)}
        if seg.boundary:
            self.draw_boundary(side, Xb, z0, z1, seg.boundary, height[seg.boundary])

    def side_plane(self, Xs: float, z0: float, z1: float, y_lo: float, y_hi: float):
        """Screen polygon of the rectangle X=Xs, Z in [z0, z1], Y in [y_lo, y_hi]."""
        pts = [self.proj(Xs, y_lo, z0), self.proj(Xs, y_lo, z1), self.proj(Xs, y_hi, z1), self.proj(Xs, y_hi, z0)]
        return pts

    def plane_coords(self, Xs: float, yy, xx):
        """(Z, Y) on the plane X=Xs seen through pixel centres (yy, xx)."""
        dx = xx - self.xv
        dx = np.where(np.abs(dx) < 1e-3, 1e-3, dx)
        Z = self.f * Xs / dx
        Y = self.hc - (yy - self.yh) * Z / self.f
        return Z, Y

    def draw_facade(self, side: int, Xb: float, z0: float, z1: float, seg: Segment) -> None:
        c = self.c
        col = seg.colour
        glass = np.array([60, 75, 95], dtype=np.float32) * self.rng.uniform(0.7, 1.3)
        frame = col * 0.75
        shop_col = CLOTHES[self.rng.integers(len(CLOTHES))]
        lit = 1.0 if self.sun_side == 0 else (1.12 if (self.sun_side > 0) == (side == 0) else 0.8)

        def facade(yy, xx):
            Z, Y = self.plane_coords(Xb, yy, xx)
            fy = Y % seg.floor_h / seg.floor_h
            fz = Z % seg.win_w / seg.win_w
            floor = np.floor(Y / seg.floor_h)
            bay = np.floor(Z / seg.win_w)
            win = (fy > 0.3) & (fy < 0.8) & (fz > (1 - seg.win_frac) / 2) & (fz < (1 + seg.win_frac) / 2) & (floor >= 1)
            win &= Y < seg.height - 0.6
            # per-window reflection: a hash of floor and bay
            refl = ((np.sin(floor * 12.9898 + bay * 78.233) * 43758.5453) % 1.0)[..., None]
            out = np.where(win[..., None], glass * (0.6 + 0.8 * refl), col * lit)
            sill = (fy > 0.26) & (fy < 0.3) & (fz > (1 - seg.win_frac) / 2 - 0.05) & (fz < (1 + seg.win_frac) / 2 + 0.05) & (floor >= 1)
            out = np.where(sill[..., None], frame * lit, out)
            if seg.shop:
                shop = (Y < seg.floor_h * 0.95) & (Y > 0.4) & (fz > 0.1) & (fz < 0.9)
                out = np.where(shop[..., None], glass * 0.8 + 30, out)
                sign = (Y >= seg.floor_h * 0.95) & (Y < seg.floor_h * 1.15)
                out = np.where(sign[..., None], shop_col, out)
            return out

        pts = self.side_plane(Xb, z0, z1, 0.0, seg.height)
        c.polygon(pts, facade, BUILDING, depth=(z0 + z1) / 2, texture=0.1)
        # cornice at the roof line
        c.polygon(self.side_plane(Xb, z0, z1, seg.height - 0.4, seg.height), col * 0.7 * lit, BUILDING, (z0 + z1) / 2)
        # the end wall facing the camera, visible where this façade stands proud of the next nearer one
        x_in, y_top = self.proj(Xb, seg.height, z0)
        x_out, y_bot = self.proj(Xb + (-8 if side == 0 else 8), 0, z0)
        _, y_top_out = self.proj(Xb + (-8 if side == 0 else 8), seg.height, z0)
        c.polygon([(x_in, y_top), (x_out, y_top_out), (x_out, y_bot), (x_in, self.proj(Xb, 0, z0)[1])],
                  col * 0.62, BUILDING, z0, texture=0.1)  # fmt: skip

    def draw_boundary(self, side: int, Xb: float, z0: float, z1: float, kind: str, height: float) -> None:
        c, rng = self.c, self.rng
        pts = self.side_plane(Xb, z0, z1, 0.0, height)
        if kind == "wall":
            colour = np.array([150, 145, 135]) * rng.uniform(0.7, 1.2, 3)
            course = rng.uniform(0.25, 0.5)  # block courses: mortar joints along and across

            def blocks(yy, xx):
                Z, Y = self.plane_coords(Xb, yy, xx)
                px = np.abs(Z * Z / (self.f * Xb))  # metres of Z per pixel on this plane
                row = np.floor(Y / course)
                joint = ((Y % course) < 0.04) | (((Z + row * course) % (2 * course)) < np.maximum(0.04, px * 0.5))
                return np.where(joint[..., None], colour * 0.7, colour)

            c.polygon(pts, blocks, WALL, (z0 + z1) / 2, texture=0.2, noise="mid")
            c.polygon(self.side_plane(Xb, z0, z1, height - 0.15, height), colour * 0.8, WALL, (z0 + z1) / 2)
        elif kind == "hedge":
            colour = np.array([55, 90, 40]) * rng.uniform(0.8, 1.2, 3)
            c.polygon(pts, colour, VEGETATION, (z0 + z1) / 2, texture=0.6)
        else:  # fence: posts and a mesh, with holes that show what is behind
            colour = np.array([(110, 110, 105), (60, 100, 60), (55, 55, 55), (140, 100, 60)][rng.integers(4)]) * rng.uniform(0.7, 1.3, 3)
            post = rng.uniform(1.5, 3.0)
            mesh = rng.uniform(0.08, 0.2)

            def fence_mask(yy, xx):
                Z, Y = self.plane_coords(Xb, yy, xx)
                px = np.abs(Z * Z / (self.f * Xb)) * 1.0  # metres of Z per pixel on this plane
                bar = np.maximum(0.03, px * 0.7)
                on = ((Z % post) < np.maximum(0.1, px)) | ((Y % mesh) < bar * 0.6) | ((Z % mesh) < bar) | (Y > height - 0.08)
                return on

            win = c.window(*_bounds(pts))
            if win is None:
                return
            box, yy, xx = win
            inside = _convex_mask(pts, yy, xx)
            c.paint(box, inside & fence_mask(yy, xx), colour, FENCE, (z0 + z1) / 2, texture=0.1)
            c.label_only(box, inside, FENCE, (z0 + z1) / 2)  # the whole panel, as Cityscapes annotates fences

    # -- things on the street ------------------------------------------------------------------
    def sprites(self):
        """(depth, draw-callable) for every object; drawn far to near."""
        rng = self.rng
        out = []
        curb = (self.road_l, self.road_r)
        for side in (0, 1):
            sgn = -1 if side == 0 else 1
            sw = self.sidewalk[side]
            # poles, street lamps, signs and traffic lights near the curb
            Z = rng.uniform(2.5, 7)
            while Z < min(self.z_end, 45):
                X = curb[side] + sgn * rng.uniform(0.3, 0.8)
                r = rng.random()
                if r < 0.3:
                    out.append((Z, _bind(self.pole, X, Z, rng.uniform(3.5, 9), lamp=sgn * -1 if rng.random() < 0.6 else 0)))
                elif r < 0.6:
                    out.append((Z, _bind(self.traffic_sign, X, Z)))
                elif r < 0.8:
                    out.append((Z, _bind(self.traffic_light, X, Z, -sgn)))
                else:
                    out.append((Z, _bind(self.tree, X + sgn * 0.4, Z, rng.uniform(5, 11))))
                Z += rng.uniform(3, 9)
            # trees in the sidewalk
            if rng.random() < 0.6:
                Z = rng.uniform(3, 12)
                step = rng.uniform(6, 14)
                while Z < min(self.z_end, 100):
                    out.append((Z, _bind(self.tree, curb[side] + sgn * rng.uniform(0.6, sw), Z, rng.uniform(5, 12))))
                    Z += step * rng.uniform(0.8, 1.2)
            # pedestrians
            for _ in range(int(rng.integers(3, 10))):
                Z = rng.uniform(2.5, 18)
                X = curb[side] + sgn * rng.uniform(0.3, sw + 0.5)
                out.append((Z, _bind(self.person, X, Z)))
            # parked cars and bicycles
            if self.parking[side]:
                Z = rng.uniform(3, 12)
                while Z < 70:
                    L = rng.uniform(3.8, 4.9)
                    if rng.random() < 0.8:
                        X = curb[side] - sgn * 1.1
                        kind = CAR if rng.random() < 0.9 else TRUCK
                        out.append((Z, _bind(self.vehicle, X, Z, kind, parked=True)))
                    Z += L + rng.uniform(0.8, 6)
            for kind in (BICYCLE, MOTORCYCLE):  # parked two-wheelers at the back of the sidewalk
                if rng.random() < 0.8:
                    Z = rng.uniform(3, 14)
                    for k in range(int(rng.integers(1, 4))):
                        Zk = Z + k * (0.8 if kind == BICYCLE else 1.2)
                        out.append((Zk, _bind(self.two_wheeler, curb[side] + sgn * (sw - 0.5), Zk, kind, view="side", rider=False)))
        # moving traffic, lane by lane
        first = 1 if self.parking[0] else 0
        for k in range(len(self.lanes) - 1):
            lx = (self.lanes[k] + self.lanes[k + 1]) / 2
            oncoming = lx < self.road_l + 0.5 * (self.road_r - self.road_l) - self.lane_w and k >= first
            Z = rng.uniform(4, 18)
            while Z < min(self.z_end, 90):
                r = rng.random()
                kind = CAR if r < 0.58 else TRUCK if r < 0.7 else BUS if r < 0.78 else MOTORCYCLE
                X = lx + rng.uniform(-0.3, 0.3)
                if kind == MOTORCYCLE:
                    out.append((Z, _bind(self.two_wheeler, X, Z, MOTORCYCLE, view="rear", rider=True)))
                else:
                    out.append((Z, _bind(self.vehicle, X, Z, kind, front=oncoming)))
                Z += rng.uniform(10, 40)
        # a cyclist near the right curb, a tram in the middle
        if rng.random() < 0.9:
            Z = rng.uniform(3, 15)
            out.append((Z, _bind(self.two_wheeler, self.road_r - 1.0 - (2.2 if self.parking[1] else 0), Z, BICYCLE, view="rear", rider=True)))
        if rng.random() < 0.3:
            Z = rng.uniform(6, 25)
            out.append((Z, _bind(self.vehicle, (self.road_l + self.road_r) / 2 - 1.5, Z, TRAIN)))
        if self.crosswalk is not None:
            for _ in range(int(rng.integers(0, 4))):
                Z = self.crosswalk + rng.uniform(0.3, 3.2)
                X = rng.uniform(self.road_l, self.road_r)
                if rng.random() < 0.75:
                    out.append((Z, _bind(self.person, X, Z)))
                else:
                    out.append((Z, _bind(self.two_wheeler, X, Z, BICYCLE, view="side", rider=True)))
        return out

    def pole(self, X: float, Z: float, height: float, lamp: int = 0) -> None:
        c = self.c
        colour = np.array([110, 112, 115]) * self.rng.uniform(0.6, 1.3)
        xb, yb = self.proj(X, 0, Z)
        _, yt = self.proj(X, height, Z)
        width = max(0.5 * self.f / Z, 1.0)
        c.rect(xb - width / 2, yt, xb + width / 2, yb, colour, POLE, Z, texture=0.1)
        if lamp:
            xa, ya = self.proj(X + lamp * 1.6, height - 0.1, Z)
            c.segment(xb, yt, xa, ya, max(0.1 * self.f / Z, 1.0), colour, POLE, Z)
            c.ellipse(xa, ya + 0.1 * self.f / Z, 0.35 * self.f / Z, 0.12 * self.f / Z, colour * 0.8, POLE, Z)

    def traffic_sign(self, X: float, Z: float) -> None:
        c, rng = self.c, self.rng
        height = rng.uniform(2.2, 3.2)
        self.pole(X, Z, height + 0.3)
        s = self.f / Z
        x, y = self.proj(X, height, Z)
        size = rng.uniform(1.0, 1.3) * s
        kind = rng.integers(4)
        if rng.random() < 0.25:  # seen from behind: a grey plate
            c.ellipse(x, y, size / 2, size / 2, (140, 140, 140), SIGN, Z, texture=0.1)
        elif kind == 0:  # prohibition: red ring, white disc
            c.ellipse(x, y, size / 2, size / 2, (200, 30, 35), SIGN, Z)
            c.ellipse(x, y, size * 0.36, size * 0.36, (235, 235, 235), SIGN, Z)
        elif kind == 1:  # warning triangle
            c.polygon([(x, y - size / 2), (x + size / 2, y + size * 0.4), (x - size / 2, y + size * 0.4)], (200, 30, 35), SIGN, Z)
            c.polygon([(x, y - size * 0.28), (x + size * 0.3, y + size * 0.28), (x - size * 0.3, y + size * 0.28)], (240, 240, 235), SIGN, Z)
        elif kind == 2:  # mandatory: blue disc
            c.ellipse(x, y, size / 2, size / 2, (30, 70, 170), SIGN, Z)
            c.segment(x - size * 0.2, y, x + size * 0.2, y, size * 0.08, (240, 240, 240), SIGN, Z)
        else:  # rectangular direction sign
            col = np.array([30, 110, 60]) if rng.random() < 0.5 else np.array([30, 70, 160])
            c.rect(x - size * 0.8, y - size * 0.3, x + size * 0.8, y + size * 0.3, col, SIGN, Z, texture=0.05)

    def traffic_light(self, X: float, Z: float, towards_road: int) -> None:
        c, rng = self.c, self.rng
        s = self.f / Z
        overhead = rng.random() < 0.35
        height = rng.uniform(4.5, 6.0) if overhead else rng.uniform(2.4, 3.4)
        self.pole(X, Z, height + (0.3 if overhead else 1.0))
        if overhead:
            arm = rng.uniform(2.5, 5.0)
            xa, ya = self.proj(X + towards_road * arm, height + 0.2, Z)
            x0, y0 = self.proj(X, height + 0.2, Z)
            c.segment(x0, y0, xa, ya, max(0.12 * s, 1.0), (110, 112, 115), POLE, Z)
            X = X + towards_road * arm
        x, y = self.proj(X, height - 0.5, Z)
        w, h = 0.7 * s, 1.7 * s
        back = rng.random() < 0.3
        c.rect(x - w / 2, y - h / 2, x + w / 2, y + h / 2, (35, 38, 35), LIGHT, Z, texture=0.1)
        if not back:
            on = rng.integers(3)
            for i, col in enumerate([(230, 40, 30), (240, 180, 20), (40, 220, 90)]):
                bright = np.array(col, dtype=np.float32) * (1.0 if i == on else 0.3)
                c.ellipse(x, y - h / 2 + h * (i + 0.5) / 3, w * 0.32, w * 0.32, bright, LIGHT, Z)

    def tree(self, X: float, Z: float, height: float) -> None:
        c, rng = self.c, self.rng
        s = self.f / Z
        xb, yb = self.proj(X, 0, Z)
        crown_r = rng.uniform(0.22, 0.4) * height
        trunk_top = height - crown_r * 1.2
        _, yt = self.proj(X, trunk_top + crown_r * 0.5, Z)
        trunk = np.array([85, 65, 50]) * rng.uniform(0.7, 1.2)
        c.rect(xb - 0.14 * s, yt, xb + 0.14 * s, yb, trunk, VEGETATION, Z, texture=0.2)
        leaves = np.array([60, 100, 40]) * rng.uniform(0.65, 1.3, 3)
        xc, yc = self.proj(X, trunk_top + crown_r, Z)
        # a few overlapping ragged blobs, darker underneath
        for _ in range(3):
            dx, dy = rng.uniform(-0.35, 0.35) * crown_r * s, rng.uniform(-0.3, 0.2) * crown_r * s
            r = rng.uniform(0.7, 1.0) * crown_r * s
            c.ellipse(xc + dx, yc + dy, r, r * rng.uniform(0.8, 1.1),
                      lambda yy, xx, y0=yc, r=r: leaves * (1.15 - 0.35 * np.clip((yy - y0 + r) / (2 * r), 0, 1))[..., None],
                      VEGETATION, Z, texture=0.8, jag=0.2)  # fmt: skip

    def person(self, X: float, Z: float, rider_on: float | None = None, label: int = PERSON) -> None:
        """A pedestrian (or, with `rider_on` = saddle height, a seated rider) standing at (X, Z)."""
        c, rng = self.c, self.rng
        s = self.f / Z
        h = rng.uniform(1.5, 1.95) if rider_on is None else rng.uniform(1.6, 1.9)
        xb, yb = self.proj(X, 0 if rider_on is None else rider_on - 0.45 * h, Z)
        H = h * s
        skin = SKIN[rng.integers(len(SKIN))]
        top = CLOTHES[rng.integers(len(CLOTHES))] * rng.uniform(0.8, 1.2)
        legs = CLOTHES[rng.integers(len(CLOTHES))] * rng.uniform(0.7, 1.1)
        stride = rng.uniform(-0.12, 0.12) * H
        hip = yb - 0.5 * H
        if rider_on is None:
            c.segment(xb, hip, xb - stride - 0.04 * H, yb - 0.02 * H, 0.1 * H, legs, label, Z)
            c.segment(xb, hip, xb + stride + 0.04 * H, yb - 0.02 * H, 0.1 * H, legs, label, Z)
        else:  # legs bent down towards the pedals
            c.segment(xb, hip, xb + 0.12 * H, hip + 0.25 * H, 0.1 * H, legs, label, Z)
            c.segment(xb + 0.12 * H, hip + 0.25 * H, xb + 0.05 * H, hip + 0.45 * H, 0.09 * H, legs, label, Z)
        c.rect(xb - 0.14 * H, hip - 0.35 * H, xb + 0.14 * H, hip + 0.03 * H, top, label, Z, texture=0.15)
        arm = rng.uniform(-0.08, 0.08) * H
        c.segment(xb - 0.14 * H, hip - 0.32 * H, xb - 0.17 * H + arm, hip - 0.02 * H, 0.07 * H, top * 0.9, label, Z)
        c.segment(xb + 0.14 * H, hip - 0.32 * H, xb + 0.17 * H - arm, hip - 0.02 * H, 0.07 * H, top * 0.9, label, Z)
        c.ellipse(xb, hip - 0.43 * H, 0.065 * H, 0.08 * H, skin, label, Z)
        hair = np.array([40, 30, 25]) * rng.uniform(0.5, 2.5)
        c.ellipse(xb, hip - 0.47 * H, 0.068 * H, 0.045 * H, hair, label, Z)
        if rng.random() < 0.25 and rider_on is None:  # a bag
            c.rect(xb + 0.14 * H, hip - 0.1 * H, xb + 0.26 * H, hip + 0.08 * H, CLOTHES[rng.integers(len(CLOTHES))], label, Z)

    def two_wheeler(self, X: float, Z: float, kind: int, view: str, rider: bool) -> None:
        c, rng = self.c, self.rng
        s = self.f / Z
        frame = (CAR_COLOURS[rng.integers(len(CAR_COLOURS))] if kind == MOTORCYCLE else CLOTHES[rng.integers(len(CLOTHES))])
        xb, yb = self.proj(X, 0, Z)
        r = (0.34 if kind == BICYCLE else 0.3) * s
        tyre = (25, 25, 25)
        if view == "side":
            gap = 0.55 * s
            for dx in (-gap, gap):
                c.ellipse(xb + dx, yb - r, r, r, tyre, kind, Z, inner=0.78 if kind == BICYCLE else 0.5, label_inner=True)
            if kind == BICYCLE:
                c.segment(xb - gap, yb - r, xb, yb - r, max(0.05 * s, 1), frame, kind, Z)
                c.segment(xb, yb - r, xb + 0.1 * s, yb - 2.3 * r, max(0.05 * s, 1), frame, kind, Z)
                c.segment(xb - gap, yb - r, xb - 0.05 * s, yb - 2.3 * r, max(0.05 * s, 1), frame, kind, Z)
                c.segment(xb + 0.1 * s, yb - 2.3 * r, xb + gap, yb - r, max(0.05 * s, 1), frame, kind, Z)
            else:
                c.ellipse(xb, yb - 1.8 * r, gap * 0.9, r * 0.7, frame, kind, Z, texture=0.1)
            if rider:
                self.person(X - 0.05, Z - 0.01, rider_on=0.9, label=RIDER)
        else:  # seen from behind or the front: narrow wheels, a body, the rider's back
            c.rect(xb - 0.06 * s, yb - 2 * r, xb + 0.06 * s, yb, tyre, kind, Z)
            if kind == MOTORCYCLE:
                c.rect(xb - 0.3 * s, yb - 3.2 * r, xb + 0.3 * s, yb - 1.2 * r, frame, kind, Z, texture=0.1)
                c.rect(xb - 0.12 * s, yb - 2.4 * r, xb + 0.12 * s, yb - 2.0 * r, (200, 30, 30), kind, Z)
            else:
                c.segment(xb - 0.25 * s, yb - 2.9 * r, xb + 0.25 * s, yb - 2.9 * r, max(0.04 * s, 1), frame, kind, Z)
            if rider:
                self.person(X, Z - 0.05, rider_on=1.0 if kind == BICYCLE else 0.85, label=RIDER)

    def vehicle(self, X: float, Z: float, kind: int, front: bool = False, parked: bool = False) -> None:
        """A car, truck, bus or tram as boxes: the face towards the camera, the visible side, details."""
        rng = self.rng
        colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))] * rng.uniform(0.85, 1.15, 3)
        if kind == CAR:
            w, L = rng.uniform(1.65, 1.95), rng.uniform(3.8, 4.9)
            self.box(X, Z, w, L, 0.25, rng.uniform(0.95, 1.1), colour, kind, lower=True)
            self.box(X, Z + L * 0.22, w * 0.88, L * 0.5, 0.95, rng.uniform(1.35, 1.55), colour, kind, cabin=True, front=front)
        elif kind == TRUCK:
            w, L = rng.uniform(2.2, 2.5), rng.uniform(6, 10)
            cargo = np.array([220, 220, 215]) * rng.uniform(0.6, 1.1, 3) if rng.random() < 0.6 else colour
            if front:
                self.box(X, Z + 2.3, w, L - 2.3, 0.8, rng.uniform(3.0, 3.8), cargo, kind)
                self.box(X, Z, w, 2.2, 0.4, 2.8, colour, kind, cabin=True, front=True)
            else:
                self.box(X, Z, w, L, 0.8, rng.uniform(3.0, 3.8), cargo, kind, lower=True)
        elif kind == BUS:
            colour = np.array([(230, 190, 20), (200, 30, 30), (40, 80, 170), (235, 235, 230), (60, 140, 80)][rng.integers(5)], dtype=np.float32)
            self.box(X, Z, 2.5, rng.uniform(10, 13), 0.3, 3.1, colour, kind, bus=True, front=front)
        else:  # TRAIN (tram)
            colour = np.array([(220, 220, 220), (200, 40, 40), (230, 200, 40)][rng.integers(3)], dtype=np.float32)
            self.box(X, Z, 2.4, rng.uniform(20, 30), 0.4, 3.4, colour, kind, bus=True, front=True)
            x, y = self.proj(X, 3.4, Z + 4)
            _, y2 = self.proj(X, 5.0, Z + 4)
            self.c.segment(x - 0.6 * self.f / Z, y2, x + 0.6 * self.f / Z, y, max(0.06 * self.f / Z, 1), (60, 60, 60), kind, Z)

    def box(self, X, Z, w, L, y0, y1, colour, label, lower=False, cabin=False, bus=False, front=False) -> None:
        """An axis-aligned box, X in [X-w/2, X+w/2], Z in [Z, Z+L], Y in [y0, y1], with vehicle details."""
        c, s = self.c, self.f / Z
        Xl, Xr, Z1 = X - w / 2, X + w / 2, Z + L
        glass = np.array([40, 50, 60], dtype=np.float32)
        if Z < 0.8:
            return
        # visible side face and the roof (if below the camera)
        side_x = Xr if Xr < 0 else (Xl if Xl > 0 else None)
        if side_x is not None:
            pts = self.side_plane(side_x, Z, Z1, y0, y1)
            if bus:

                def side_tex(yy, xx, side_x=side_x):
                    Zs, Ys = self.plane_coords(side_x, yy, xx)
                    win = (Ys > 1.3) & (Ys < y1 - 0.4) & (((Zs - Z) % 1.6) > 0.15)
                    return np.where(win[..., None], glass * 1.2, colour * 0.8)

                c.polygon(pts, side_tex, label, Z + L / 2, texture=0.05)
            elif cabin:

                def side_tex(yy, xx, side_x=side_x):
                    Zs, Ys = self.plane_coords(side_x, yy, xx)
                    win = (Ys > y0 + 0.08) & (((Zs - Z) / L) > 0.06) & (((Zs - Z) / L) < 0.94)
                    return np.where(win[..., None], glass, colour * 0.8)

                c.polygon(pts, side_tex, label, Z + L / 2)
            else:
                c.polygon(pts, colour * 0.78, label, Z + L / 2, texture=0.05)
            if lower:  # wheels on the visible side
                for zw in (Z + 0.8, Z1 - 0.8):
                    ang = np.linspace(0, 2 * np.pi, 14, endpoint=False)
                    r = 0.33 if label == CAR else 0.5
                    ring = [self.proj(side_x, r + r * np.sin(a), zw + r * np.cos(a)) for a in ang]
                    c.polygon(ring, (22, 22, 22), label, zw)
        if y1 < self.hc:
            c.polygon([self.proj(Xl, y1, Z), self.proj(Xr, y1, Z), self.proj(Xr, y1, Z1), self.proj(Xl, y1, Z1)],
                      colour * 1.1, label, Z + L / 2)  # fmt: skip
        # the face towards the camera
        x0, yt = self.proj(Xl, y1, Z)
        x1, yb = self.proj(Xr, y0, Z)
        c.rect(x0, yt, x1, yb, colour, label, Z, texture=0.05)
        fw, fh = x1 - x0, yb - yt
        if cabin:  # windscreen / rear window
            c.polygon([(x0 + 0.08 * fw, yb - 0.05 * fh), (x1 - 0.08 * fw, yb - 0.05 * fh),
                       (x1 - 0.16 * fw, yt + 0.12 * fh), (x0 + 0.16 * fw, yt + 0.12 * fh)], glass, label, Z)  # fmt: skip
        if bus:
            c.rect(x0 + 0.06 * fw, yt + 0.1 * fh, x1 - 0.06 * fw, yt + (0.45 if front else 0.3) * fh, glass, label, Z)
            c.rect(x0 + 0.15 * fw, yt + 0.02 * fh, x1 - 0.15 * fw, yt + 0.08 * fh, (20, 20, 20), label, Z)
        if lower:
            lamp = (230, 230, 210) if front else (200, 20, 20)
            c.rect(x0 + 0.03 * fw, yt + 0.15 * fh, x0 + 0.2 * fw, yt + 0.35 * fh, lamp, label, Z)
            c.rect(x1 - 0.2 * fw, yt + 0.15 * fh, x1 - 0.03 * fw, yt + 0.35 * fh, lamp, label, Z)
            c.rect(x0 + 0.38 * fw, yt + 0.5 * fh, x1 - 0.38 * fw, yt + 0.68 * fh, (230, 230, 230), label, Z)
            _, yg = self.proj(X, 0.0, Z)
            c.rect(x0 + 0.02 * fw, yb, x0 + 0.18 * fw, yg, (20, 20, 20), label, Z)
            c.rect(x1 - 0.18 * fw, yb, x1 - 0.02 * fw, yg, (20, 20, 20), label, Z)
        if lower or bus:  # contact shadow on the ground
            _, yg = self.proj(X, 0.0, Z)
            _, yg2 = self.proj(X, 0.0, Z + L * 0.5)
            win = c.window(x0 - 0.1 * fw, yg2, x1 + 0.1 * fw, yg + 0.04 * fh)
            if win is not None:
                box, yy, xx = win
                iy0, iy1, ix0, ix1 = box
                under = (c.lab[iy0:iy1, ix0:ix1] == ROAD) | (c.lab[iy0:iy1, ix0:ix1] == SIDEWALK)
                c.img[iy0:iy1, ix0:ix1][under] *= 0.55

    # -- camera ---------------------------------------------------------------------------------
    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        rng, c = self.rng, self.c
        img = c.img
        # haze: far things fade towards the horizon colour
        visibility = rng.uniform(150, 700)
        haze_col = np.array([190, 195, 205], dtype=np.float32) * rng.uniform(0.85, 1.1)
        d = np.where(c.lab == SKY, 0.0, np.minimum(c.depth, 2000))
        a = (1 - np.exp(-d / visibility))[..., None] * 0.8
        img = img * (1 - a) + haze_col * a
        # exposure, white balance, contrast, gamma
        img = img * rng.uniform(0.7, 1.25) * rng.uniform(0.9, 1.1, 3)
        mean = img.mean()
        img = (img - mean) * rng.uniform(0.75, 1.2) + mean
        img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.8, 1.25)
        # vignetting
        yy = (np.arange(self.h, dtype=np.float32)[:, None] / self.h - 0.5) * 2
        xx = (np.arange(self.w, dtype=np.float32)[None, :] / self.w - 0.5) * 2
        img *= (1 - rng.uniform(0.0, 0.3) * (xx * xx + yy * yy) / 2)[..., None]
        # lens blur, sometimes
        if rng.random() < 0.3:
            img = _blur121(img)
        # sensor noise
        img = img + rng.normal(0, rng.uniform(1.0, 4.0), img.shape).astype(np.float32)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8), c.lab.copy()


def _bind(fn, *args, **kwargs):
    return lambda: fn(*args, **kwargs)


def _bounds(pts):
    pts = np.asarray(pts, dtype=np.float32)
    return pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()


def _convex_mask(pts, yy, xx) -> np.ndarray:
    """Pixels inside a convex polygon (either winding); empty for a degenerate one."""
    pts = np.asarray(pts, dtype=np.float32)
    x, y = pts[:, 0], pts[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    area = float(np.sum(x * yn - xn * y))
    mask = np.full((yy.shape[0], xx.shape[1]), abs(area) > 1e-6)
    sign = 1.0 if area > 0 else -1.0
    for i in range(len(pts)):
        mask &= sign * ((xn[i] - x[i]) * (yy - y[i]) - (yn[i] - y[i]) * (xx - x[i])) >= 0
    return mask


def _blur121(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    v = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    return (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) / 4


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
def render_scene(seed: int, size: tuple[int, int] = (256, 512)) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image HxWx3 uint8, trainIds HxW uint8), a pure function of `seed` and `size`."""
    h, w = size
    if h < 32 or w < 32:
        raise UserError(f"scene size {h}x{w} is too small (at least 32x32)")
    return StreetScene(int(seed), (int(h), int(w))).render()


def scene_seed(seed: int, split: str, index: int) -> int:
    """The seed of scene `index` of `split`: train and val never share a scene."""
    split_id = {"train": 0, "val": 1, "test": 2}[split]
    return int(np.random.SeedSequence([int(seed), split_id, int(index)]).generate_state(1, dtype=np.uint32)[0])


def _write_one(args) -> None:
    out, split, index, seed, size = args
    image, label = render_scene(scene_seed(seed, split, index), size)
    city = "streets"
    stem = f"{city}_{index // 1000:06d}_{index % 1000:06d}"
    img_dir = out / "leftImg8bit" / split / city
    gt_dir = out / "gtFine" / split / city
    Image.fromarray(image).save(img_dir / f"{stem}{IMAGE_SUFFIX}", compress_level=1)
    Image.fromarray(label).save(gt_dir / f"{stem}{TRAIN_IDS_SUFFIX}", compress_level=6)
    Image.fromarray(train_ids_to_label_ids(label)).save(gt_dir / f"{stem}{LABEL_IDS_SUFFIX}", compress_level=6)


def generate_streets(
    out: str | Path,
    n_train: int,
    n_val: int,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Write `n_train` + `n_val` scenes to `out` in the Cityscapes layout (plus `streets.json`)."""
    out = Path(out)
    if n_train < 0 or n_val < 0:
        raise UserError("scene counts must be >= 0")
    jobs = []
    for split, n in (("train", n_train), ("val", n_val)):
        if n == 0:
            continue
        (out / "leftImg8bit" / split / "streets").mkdir(parents=True, exist_ok=True)
        (out / "gtFine" / split / "streets").mkdir(parents=True, exist_ok=True)
        jobs += [(out, split, i, seed, tuple(size)) for i in range(n)]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="scenes", unit="img")
    if workers <= 1 or len(jobs) < 8:
        for job in jobs:
            _write_one(job)
            if bar:
                bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=8):
                if bar:
                    bar.update()
    if bar:
        bar.close()
    meta = {
        "benchmark": "encseg procedural streets (not Cityscapes)",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": list(size),
        "train": n_train,
        "val": n_val,
    }
    (out / "streets.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
