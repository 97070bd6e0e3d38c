"""Procedural surfaces and defects for the synthetic dataset (numpy + scipy only; deterministic from a Generator).

Every texture varies naturally from image to image (phase, period, lighting, tint, grain) and stays within
[40, 215] per channel, so a defect changes each of its pixels by at least ~16 levels: darkening multiplies by
(1 - a) and brightening moves by a * (255 - value), with a >= 0.4. A defect's mask is exactly the set of pixels
it changes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

LOW, HIGH = 40.0, 215.0  # texture value range (per channel)
MIN_STRENGTH = 0.4


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean, unit std; `sigma` scalar or (sy, sx); wraps at the borders."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return y, x


def _lighting(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """A soft linear light gradient in a random direction, [-amplitude, amplitude] across the image."""
    y, x = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (x - size / 2) + np.sin(angle) * (y - size / 2)) / (size / 2)
    return amplitude * rng.uniform(0.3, 1.0) * ramp


def _colorize(intensity: np.ndarray, color: np.ndarray) -> np.ndarray:
    """[H, W] relative intensity around 1 x RGB base -> [H, W, 3] clipped to the texture range."""
    return np.clip(intensity[..., None] * color[None, None, :], LOW, HIGH)


def brushed_metal(rng: np.random.Generator, size: int) -> np.ndarray:
    level = rng.uniform(125, 150)
    streaks = _smooth_noise(rng, (size, size), (0.7, rng.uniform(18, 30)))  # long along x, thin along y
    grain = _smooth_noise(rng, (size, size), 0.6)
    value = level + 11 * streaks + 3 * grain + _lighting(rng, size, 12)
    color = np.array([0.97, 1.0, 1.04]) * rng.uniform(0.98, 1.02, 3)
    return _colorize(value / 100.0, color * 100.0)


def woven_fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = _grid(size)
    period = rng.uniform(7.5, 8.5)
    u = (x + rng.uniform(0, period)) / period
    v = (y + rng.uniform(0, period)) / period
    over = (np.floor(u) + np.floor(v)) % 2 == 0  # plain weave: the thread on top alternates cell by cell
    shade = np.where(over, np.sin(np.pi * (v % 1.0)), np.sin(np.pi * (u % 1.0))) ** 0.6
    fibres = _smooth_noise(rng, (size, size), 0.7)
    intensity = 0.62 + 0.38 * shade + 0.04 * fibres + _lighting(rng, size, 0.06)
    color = np.array([78.0, 102.0, 160.0]) * rng.uniform(0.95, 1.05, 3)  # denim blue
    return _colorize(intensity, color)


def wood_grain(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = _grid(size)
    warp = _smooth_noise(rng, (size, size), (rng.uniform(10, 16), rng.uniform(24, 40)))  # stretched along x
    rings = y / rng.uniform(9, 13) + 0.4 * warp + 0.15 * np.sin(2 * np.pi * x / rng.uniform(60, 120))
    grain = (0.5 + 0.5 * np.sin(2 * np.pi * (rings + rng.uniform(0, 1)))) ** 2.5
    fibres = _smooth_noise(rng, (size, size), (0.5, 8))
    light = np.array([200.0, 150.0, 98.0]) * rng.uniform(0.96, 1.04)
    dark = np.array([140.0, 92.0, 55.0]) * rng.uniform(0.96, 1.04)
    t = np.clip(grain + 0.06 * fibres, 0, 1)[..., None]
    rgb = light * (1 - t) + dark * t + _lighting(rng, size, 8)[..., None]
    return np.clip(rgb, LOW, HIGH)


def speckled_stone(rng: np.random.Generator, size: int) -> np.ndarray:
    fractal = sum(a * _smooth_noise(rng, (size, size), s) for a, s in ((1.0, 14), (0.5, 6), (0.3, 2.5), (0.2, 0.8)))
    value = 1.0 + 0.09 * fractal / 1.2 + _lighting(rng, size, 0.05)
    color = np.array([168.0, 160.0, 146.0]) * rng.uniform(0.96, 1.04, 3)
    rgb = value[..., None] * color
    speckles = rng.random((size, size))  # small dark and light grains belong to the normal surface
    rgb[speckles < 0.012] *= 0.65
    rgb[speckles > 0.992] *= 1.2
    return np.clip(rgb, LOW, HIGH)


TEXTURES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "metal": brushed_metal,
    "fabric": woven_fabric,
    "wood": wood_grain,
    "stone": speckled_stone,
}


def _stroke(points: np.ndarray, width: float, size: int) -> np.ndarray:
    """Polyline points [N, 2] (y, x) -> bool mask of pixels within width / 2 of it."""
    dense = [points[0]]
    for a, b in zip(points[:-1], points[1:]):
        steps = max(int(np.ceil(np.hypot(*(b - a)) * 2)), 1)
        dense.extend(a + (b - a) * t for t in np.linspace(0, 1, steps + 1)[1:])
    seeds = np.zeros((size, size), dtype=bool)
    idx = np.round(np.array(dense)).astype(int)
    keep = (idx >= 0).all(1) & (idx < size).all(1)
    seeds[idx[keep, 0], idx[keep, 1]] = True
    return ndimage.distance_transform_edt(~seeds) <= width / 2


def scratch(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin, slightly curved line (quadratic Bezier)."""
    start = rng.uniform(0.15, 0.85, 2) * size
    angle, length = rng.uniform(0, np.pi), rng.uniform(0.2, 0.5) * size
    end = start + length * np.array([np.sin(angle), np.cos(angle)])
    bend = (start + end) / 2 + rng.normal(0, 0.08 * size, 2)
    t = np.linspace(0, 1, 40)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
    return _stroke(curve, rng.uniform(1.5, 3.5), size)


def crack(rng: np.random.Generator, size: int) -> np.ndarray:
    """A jagged random walk with an optional branch."""
    mask = np.zeros((size, size), dtype=bool)
    point, heading = rng.uniform(0.25, 0.75, 2) * size, rng.uniform(0, 2 * np.pi)
    for branch in range(1 + int(rng.random() < 0.6)):
        points = [point.copy()]
        steps = int(rng.uniform(0.2, 0.45) * size / 1.5) if branch == 0 else int(rng.uniform(8, 16))
        for _ in range(steps):
            heading += rng.normal(0, 0.25)
            points.append(points[-1] + 1.5 * np.array([np.sin(heading), np.cos(heading)]))
        mask |= _stroke(np.array(points), rng.uniform(1.5, 2.8), size)
        point, heading = points[len(points) // 2], heading + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
    return mask


def spot(rng: np.random.Generator, size: int) -> np.ndarray:
    """A small rotated ellipse."""
    y, x = _grid(size)
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    ry, rx, angle = rng.uniform(3, 9), rng.uniform(3, 9), rng.uniform(0, np.pi)
    dy, dx = y - cy, x - cx
    u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def stain(rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular blob: an ellipse with a noisy outline."""
    y, x = _grid(size)
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    ry, rx = rng.uniform(8, 20), rng.uniform(8, 20)
    outline = _smooth_noise(rng, (size, size), 4.0)
    blob = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 + 0.35 * outline <= 1.0
    labels, count = ndimage.label(blob)
    if count > 1:  # keep the main body only
        sizes = ndimage.sum(blob, labels, range(1, count + 1))
        blob = labels == (1 + int(np.argmax(sizes)))
    return blob


DEFECTS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "scratch": scratch,
    "spot": spot,
    "crack": crack,
    "stain": stain,
}
# how each defect changes its pixels: bright scratches, dark spots and cracks, tinted dark stains
_LOOKS = {"scratch": ("bright", "dark"), "spot": ("dark", "bright"), "crack": ("dark",), "stain": ("tint",)}


def apply_defect(rng: np.random.Generator, clean: np.ndarray, mask: np.ndarray, kind: str) -> np.ndarray:
    """clean float [H, W, 3] -> defective copy; only `mask` pixels change, each by >= ~16 levels."""
    look = _LOOKS[kind][rng.integers(len(_LOOKS[kind]))]
    size = clean.shape[0]
    a = rng.uniform(MIN_STRENGTH, 0.75) + rng.uniform(0, 0.15) * (0.5 + 0.5 * _smooth_noise(rng, (size, size), 1.5))
    a = np.clip(a, MIN_STRENGTH, 0.95)[..., None]
    if look == "bright":
        changed = clean + a * (255.0 - clean)
    elif look == "dark":
        changed = clean * (1.0 - a)
    else:  # darker, with a colour cast (rust, oil, water)
        cast = rng.uniform(0.5, 1.0, 3)
        changed = clean * (1.0 - a * (cast / cast.max())[None, None, :])
    out = clean.copy()
    out[mask] = changed[mask]
    return out


def make_defect(rng: np.random.Generator, size: int, kind: str, min_pixels: int = 12) -> np.ndarray:
    """A non-empty defect mask of `kind` (redrawn while it has fewer than `min_pixels` pixels)."""
    while True:
        mask = DEFECTS[kind](rng, size)
        if mask.sum() >= min_pixels:
            return mask


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
