"""How much an attack recovered: block placement (direct and neighbour comparison) and image
similarity (SSIM after Wang et al. 2004, PSNR) against the plain image."""

from __future__ import annotations

import numpy as np


def direct_comparison(source: np.ndarray) -> float:
    """Fraction of grid cells holding the right block. `source[r, c]` is the original (row-major)
    index of the block the attack put at (r, c); the right answer is r * C + c."""
    source = np.asarray(source)
    return float(np.mean(source.ravel() == np.arange(source.size)))


def neighbour_comparison(source: np.ndarray) -> float:
    """Fraction of adjacent pairs (left-right and top-bottom) in the reconstruction that were
    adjacent in the same relation in the original, wherever they sit (Cho et al. 2010's measure)."""
    source = np.asarray(source)
    R, C = source.shape
    r, c = np.divmod(source, C)
    right = (r[:, 1:] == r[:, :-1]) & (c[:, 1:] == c[:, :-1] + 1)
    down = (c[1:, :] == c[:-1, :]) & (r[1:, :] == r[:-1, :] + 1)
    total = right.size + down.size
    return float((right.sum() + down.sum()) / total) if total else 1.0


def chance_direct(n_blocks: int) -> float:
    """Expected direct comparison of a uniformly random placement."""
    return 1.0 / n_blocks


def _filter(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Valid-mode separable filtering of (H, W) with the normalised 1-D window w along both axes
    (a weighted sum of k shifted views per axis)."""
    k = len(w)
    h, wd = x.shape[0] - k + 1, x.shape[1] - k + 1
    rows = sum(w[i] * x[i : i + h] for i in range(k))
    return sum(w[i] * rows[:, i : i + wd] for i in range(k))


def _window(win_size: int, sigma: float, gaussian: bool) -> np.ndarray:
    if gaussian:
        d = np.arange(win_size) - (win_size - 1) / 2
        w = np.exp(-(d**2) / (2 * sigma**2))
    else:
        w = np.ones(win_size)
    return w / w.sum()


def ssim(
    x: np.ndarray,
    y: np.ndarray,
    data_range: float = 255.0,
    win_size: int = 11,
    sigma: float = 1.5,
    gaussian: bool = True,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean SSIM of two images (H x W or H x W x C; channels averaged) after Wang et al. 2004:
    Gaussian 11x11 window (sigma 1.5) with weights summing to one, no sample-covariance correction,
    C1 = (k1 L)^2, C2 = (k2 L)^2, averaged over the windows that fit inside the image."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if min(x.shape[:2]) < win_size:
        raise ValueError(f"images {x.shape[0]}x{x.shape[1]} are smaller than the {win_size}-pixel SSIM window")
    w = _window(win_size, sigma, gaussian)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    vals = []
    for ch in range(x.shape[2]):
        a, b = x[..., ch], y[..., ch]
        mu_a, mu_b = _filter(a, w), _filter(b, w)
        var_a = _filter(a * a, w) - mu_a**2
        var_b = _filter(b * b, w) - mu_b**2
        cov = _filter(a * b, w) - mu_a * mu_b
        num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
        den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
        vals.append(np.mean(num / den))
    return float(np.mean(vals))


def psnr(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def luminance(img: np.ndarray) -> np.ndarray:
    """BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B (float, 0..255) of an RGB image."""
    x = np.asarray(img, np.float64)
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def ssim_luminance(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of the luminance only, as Wang et al. 2004 define it for grey images."""
    return ssim(luminance(x), luminance(y))
