"""Procedural defects for the synthetic dataset: a mask per kind, and how the masked pixels change.

Kinds (the folder names): thin scratches (1-3.5 px wide, 10-64 px long at 128 px), spots (4-18 px), jagged cracks
(1-2.8 px) and stains (12-40 px). Looks: darker or brighter by a fraction `a` of the room left, a colour cast, or a
colour-only change (luminance kept, hue moved, e.g. a blue tint). Contrast goes down to a = 0.1 for the large
stains; thin defects keep a >= 0.25. A defect's mask is exactly the set of pixels it changes, each by >= 4 levels
in at least one channel (textures stay in [40, 215], synthetic_textures.LOW/HIGH).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from training.data.synthetic_textures import _grid
from training.data.synthetic_textures import _smooth_noise

LUMA = np.array([0.299, 0.587, 0.114])


def _stroke(points: np.ndarray, width: float, size: int) -> np.ndarray:
    """Polyline points [N, 2] (y, x) -> bool mask of pixels within width / 2 of it (width 1: the line itself)."""
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
    """A thin, slightly curved line (quadratic Bezier), 1-3.5 px wide."""
    start = rng.uniform(0.15, 0.85, 2) * size
    angle, length = rng.uniform(0, np.pi), rng.uniform(0.08, 0.5) * size
    end = start + length * np.array([np.sin(angle), np.cos(angle)])
    bend = (start + end) / 2 + rng.normal(0, 0.06 * length + 0.01 * size, 2)
    t = np.linspace(0, 1, 40)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
    return _stroke(curve, rng.uniform(1.0, 3.5), size)


def crack(rng: np.random.Generator, size: int) -> np.ndarray:
    """A jagged random walk with an optional branch."""
    mask = np.zeros((size, size), dtype=bool)
    point, heading = rng.uniform(0.25, 0.75, 2) * size, rng.uniform(0, 2 * np.pi)
    for branch in range(1 + int(rng.random() < 0.6)):
        points = [point.copy()]
        steps = int(rng.uniform(0.15, 0.45) * size / 1.5) if branch == 0 else int(rng.uniform(6, 16))
        for _ in range(steps):
            heading += rng.normal(0, 0.25)
            points.append(points[-1] + 1.5 * np.array([np.sin(heading), np.cos(heading)]))
        mask |= _stroke(np.array(points), rng.uniform(1.0, 2.8), size)
        point, heading = points[len(points) // 2], heading + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
    return mask


def spot(rng: np.random.Generator, size: int) -> np.ndarray:
    """A small rotated ellipse, 4-18 px across."""
    y, x = _grid(size)
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    ry, rx, angle = rng.uniform(2, 9), rng.uniform(2, 9), rng.uniform(0, np.pi)
    dy, dx = y - cy, x - cx
    u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def stain(rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular blob: an ellipse with a noisy outline."""
    y, x = _grid(size)
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    ry, rx = rng.uniform(6, 20), rng.uniform(6, 20)
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
# kind -> ((look, lowest a, highest a), ...): one is drawn per defect
_LOOKS = {
    "scratch": (("bright", 0.25, 0.75), ("dark", 0.25, 0.75)),
    "spot": (("dark", 0.2, 0.7), ("bright", 0.2, 0.7), ("hue", 0.2, 0.5)),
    "crack": (("dark", 0.3, 0.8),),
    "stain": (("dark", 0.1, 0.35), ("cast", 0.2, 0.6), ("hue", 0.15, 0.35)),
}


def _hue_shift(rng: np.random.Generator) -> np.ndarray:
    """A unit RGB direction that keeps luminance (orthogonal to LUMA), often towards blue."""
    target = np.array([-0.3, -0.3, 1.0]) if rng.random() < 0.5 else rng.standard_normal(3)
    direction = target - LUMA * (target @ LUMA) / (LUMA @ LUMA)
    return direction / np.linalg.norm(direction)


def apply_defect(rng: np.random.Generator, clean: np.ndarray, mask: np.ndarray, kind: str) -> np.ndarray:
    """clean float [H, W, 3] -> defective copy; only `mask` pixels change, each by >= 4 levels in some channel."""
    look, low, high = _LOOKS[kind][rng.integers(len(_LOOKS[kind]))]
    size = clean.shape[0]
    a = rng.uniform(low, high) + rng.uniform(0, 0.1) * (0.5 + 0.5 * _smooth_noise(rng, (size, size), 1.5))
    a = np.clip(a, low, 0.95)[..., None]
    if look == "bright":
        changed = clean + a * (255.0 - clean)
    elif look == "dark":
        changed = clean * (1.0 - a)
    elif look == "cast":  # darker, with a colour cast (rust, oil, water)
        cast = rng.uniform(0.3, 1.0, 3)
        changed = clean * (1.0 - a * (cast / cast.max())[None, None, :])
    else:  # "hue": colour only, luminance kept; a of 0.1 moves a channel by >= 0.1 * 100 / sqrt(3) levels
        changed = clean + 100.0 * a * _hue_shift(rng)[None, None, :]
    out = clean.copy()
    out[mask] = np.clip(changed[mask], 0.0, 255.0)
    return out


def make_defect(rng: np.random.Generator, size: int, kind: str, min_pixels: int = 10) -> np.ndarray:
    """A non-empty defect mask of `kind` (redrawn while it has fewer than `min_pixels` pixels)."""
    while True:
        mask = DEFECTS[kind](rng, size)
        if mask.sum() >= min_pixels:
            return mask
