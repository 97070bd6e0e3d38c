"""Procedural surfaces for the synthetic dataset (numpy + scipy only; deterministic from a Generator).

Thirteen surface families. Like a production line, each dataset is one product under one camera: its look
(direction and scale of streaks, grain and rings, weave pitch and angle, colour, sensor noise) is drawn once per
(seed, family) from `look`, and varies widely from seed to seed; each image then differs from the line's look
as a line's images do (a little angle, scale and brightness, its own texture noise, placement and lighting
gradient, from `rng`). Every image stays within [40, 215] per
channel, so a defect (training/data/synthetic_defects.py) always has room to change its pixels.

The families are built in different ways on purpose, so a recipe tuned on some can be checked on others
(bench/quality.py): `metal` is Gaussian-filtered noise stretched along a direction, `hairline` is brushed metal
made another way (a 1-D profile of fine lines, modulated along them); `fabric` is a plain weave, `twill` a twill;
`mesh` (wire cloth: dark openings between round wires), `halftone` (printed dots of varying size) and `perforated`
(round holes punched in a plate) are surfaces whose normal structure is a regular grid of dark shapes, the kind a
dark defect can hide beside.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

LOW, HIGH = 40.0, 215.0  # texture value range (per channel)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean, unit std; `sigma` scalar or (sy, sx); wraps at the borders."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return y, x


def _rotated_grid(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(along, across) coordinates of every pixel in a frame rotated by `angle` (radians) about the centre."""
    y, x = _grid(size)
    y, x = y - size / 2, x - size / 2
    return np.cos(angle) * x + np.sin(angle) * y, -np.sin(angle) * x + np.cos(angle) * y


def _rotate(field: np.ndarray, angle: float) -> np.ndarray:
    """A periodic field [N, N] sampled on a grid rotated by `angle` (it wraps, so no border appears)."""
    size = field.shape[0]
    along, across = _rotated_grid(size, angle)
    return ndimage.map_coordinates(field, [across + size / 2, along + size / 2], order=1, mode="grid-wrap")


def _direction(look: np.random.Generator) -> float:
    """A line's direction: half the lines axis-aligned (0 or 90 degrees, +-5), the other half at any angle."""
    if look.random() < 0.5:
        return look.choice([0.0, np.pi / 2]) + look.normal(0, 0.08)
    return look.uniform(0, np.pi)


def _near(rng: np.random.Generator, value, spread: float):
    """`value` moved by a relative U(-spread, spread): the image-to-image variation of a line's parameter."""
    return value * (1.0 + rng.uniform(-spread, spread))


def _lighting(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """A soft light gradient in a random direction, [-amplitude, amplitude] x U(0.2, 1) across the image; on
    a third of the images a vignette (darker corners) too."""
    along, _ = _rotated_grid(size, rng.uniform(0, 2 * np.pi))
    light = amplitude * rng.uniform(0.2, 1.0) * along / (size / 2)
    if rng.random() < 1 / 3:
        y, x = _grid(size)
        radius = np.hypot(y - size / 2, x - size / 2) / (size / np.sqrt(2))
        light -= amplitude * rng.uniform(0.3, 1.0) * radius**2
    return light


def _finish(look: np.random.Generator, rng: np.random.Generator, rgb: np.ndarray, light: float) -> np.ndarray:
    """Lighting gradient (per image, `light`: relative amplitude), sensor noise (the line's camera: std 0-3
    levels), clipped to the range."""
    size = rgb.shape[0]
    noise = look.uniform(0.0, 3.0)
    rgb = rgb * (1.0 + _lighting(rng, size, light))[..., None]
    rgb = rgb + _near(rng, noise, 0.2) * rng.standard_normal(rgb.shape)
    return np.clip(rgb, LOW, HIGH)


def _tint(look: np.random.Generator, base, spread: float = 0.04) -> np.ndarray:
    return np.asarray(base, dtype=np.float64) * look.uniform(1 - spread, 1 + spread, 3)


def brushed_metal(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """Streaks of filtered noise along a direction, fine grain."""
    length, width, angle = look.uniform(6, 40), look.uniform(0.5, 1.5), _direction(look)
    streak, grain = look.uniform(0.04, 0.11), look.uniform(0.01, 0.03)
    grain_sigma = look.uniform(0.5, 1.0)
    color = _tint(look, [0.97, 1.0, 1.04]) * look.uniform(100, 165)
    streaks = _rotate(_smooth_noise(rng, (size, size), (width, _near(rng, length, 0.1))), angle + rng.normal(0, 0.02))
    value = 1.0 + streak * streaks + grain * _smooth_noise(rng, (size, size), grain_sigma)
    return _finish(look, rng, value[..., None] * _near(rng, color, 0.03), 0.15)


def hairline_metal(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed metal made another way: a 1-D profile of fine lines across the direction, each line fading in and
    out along it, a slow sheen."""
    angle, pitch, depth = _direction(look), look.uniform(0.6, 2.0), look.uniform(0.03, 0.09)  # pitch: px/sample
    fade_sigma, sheen_period, sheen = look.uniform(3, 8), look.uniform(size, 3 * size), look.uniform(0.02, 0.08)
    color = _tint(look, [1.0, 1.0, 1.0]) * look.uniform(110, 170)
    along, across = _rotated_grid(size, angle + rng.normal(0, 0.02))
    samples = int(size * 1.5 / pitch) + 2
    profile = rng.standard_normal(samples) * depth
    lines = np.interp((across + size * 0.75) / pitch, np.arange(samples), profile)
    fade = _smooth_noise(rng, (size, size), fade_sigma)
    shine = np.sin(2 * np.pi * along / sheen_period + rng.uniform(0, 2 * np.pi))
    value = 1.0 + lines * (0.6 + 0.4 * fade) + sheen * shine
    return _finish(look, rng, value[..., None] * _near(rng, color, 0.03), 0.1)


_FABRIC_COLORS = ([78.0, 102.0, 160.0], [150.0, 150.0, 150.0], [160.0, 70.0, 70.0], [80.0, 130.0, 85.0])
_TWILL_COLORS = ([170.0, 150.0, 105.0], [70.0, 75.0, 110.0], [120.0, 120.0, 125.0], [140.0, 95.0, 70.0])


def _threads(look, rng: np.random.Generator, size: int, pattern, colors) -> np.ndarray:
    """A woven surface: `pattern(i, j)` says where the warp thread (along one axis) lies on top of the weft."""
    angle = look.uniform(-0.6, 0.6) + look.choice([0.0, np.pi / 2])
    pitch, sharpness, depth = look.uniform(5.0, 12.0), look.uniform(0.4, 0.9), look.uniform(0.25, 0.45)
    color = _tint(look, colors[look.integers(len(colors))], 0.06)
    along, across = _rotated_grid(size, angle + rng.normal(0, 0.01))
    pitch = _near(rng, pitch, 0.02)
    u, v = (along + rng.uniform(0, pitch)) / pitch, (across + rng.uniform(0, pitch)) / pitch
    warp_on_top = pattern(np.floor(u).astype(int), np.floor(v).astype(int))
    shade = np.where(warp_on_top, np.sin(np.pi * (v % 1.0)), np.sin(np.pi * (u % 1.0))) ** sharpness
    intensity = 1.0 - depth + depth * shade + 0.04 * _smooth_noise(rng, (size, size), 0.7)
    return _finish(look, rng, intensity[..., None] * _near(rng, color, 0.03), 0.08)


def woven_fabric(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """Plain weave: the thread on top alternates cell by cell."""
    return _threads(look, rng, size, lambda i, j: (i + j) % 2 == 0, _FABRIC_COLORS)


def twill_fabric(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """Twill: each thread floats over two (2/1) or three (3/1) and the pattern shifts by one per row (ribs)."""
    period = int(look.integers(3, 5))
    return _threads(look, rng, size, lambda i, j: (i + j) % period != 0, _TWILL_COLORS)


def wood_grain(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    angle, spacing, wave = _direction(look), look.uniform(6, 16), look.uniform(60, 120)
    sharpness = look.uniform(1.5, 3.5)
    light = _tint(look, [200.0, 150.0, 98.0]) * look.uniform(0.85, 1.05)
    dark = _tint(look, [140.0, 92.0, 55.0]) * look.uniform(0.8, 1.05)
    angle += rng.normal(0, 0.05)  # boards differ a little
    along, across = _rotated_grid(size, angle)
    warp = _rotate(_smooth_noise(rng, (size, size), (rng.uniform(8, 16), rng.uniform(24, 40))), angle)
    rings = across / _near(rng, spacing, 0.15) + 0.4 * warp + 0.15 * np.sin(2 * np.pi * along / wave)
    grain = (0.5 + 0.5 * np.sin(2 * np.pi * (rings + rng.uniform(0, 1)))) ** _near(rng, sharpness, 0.1)
    fibres = _rotate(_smooth_noise(rng, (size, size), (0.5, 8)), angle)
    t = np.clip(grain + 0.06 * fibres, 0, 1)[..., None]
    return _finish(look, rng, light * (1 - t) + dark * t, 0.08)


def speckled_stone(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    scale, amplitude, rate = look.uniform(0.6, 1.6), look.uniform(0.06, 0.12), look.uniform(0.004, 0.015)
    color = _tint(look, [168.0, 160.0, 146.0]) * look.uniform(0.8, 1.1)
    octaves = ((1.0, 14), (0.5, 6), (0.3, 2.5), (0.2, 0.8))
    fractal = sum(a * _smooth_noise(rng, (size, size), s * scale) for a, s in octaves)
    rgb = (1.0 + amplitude * fractal / 1.2)[..., None] * _near(rng, color, 0.03)
    speckles = rng.random((size, size))  # small dark and light grains belong to the normal surface
    rgb[speckles < rate] *= 0.65
    rgb[speckles > 1 - rate * 0.7] *= 1.2
    return _finish(look, rng, rgb, 0.06)


def _cells(rng: np.random.Generator, size: int, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances from every pixel to the nearest and second-nearest random seed (periodic Voronoi cells)."""
    count = max(int((size / cell) ** 2), 4)
    seeds = rng.uniform(0, size, (count, 2))
    tiled = np.concatenate([seeds + size * np.array([dy, dx]) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    y, x = _grid(size)
    distances, _ = cKDTree(tiled).query(np.stack([y.ravel(), x.ravel()], 1), k=2)
    return distances[:, 0].reshape(size, size), distances[:, 1].reshape(size, size)


def leather(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """Pebbled grain: Voronoi cells, darker creases between them, a fine pore texture."""
    cell, crease_width, crease_depth = look.uniform(6, 14), look.uniform(0.8, 1.8), look.uniform(0.12, 0.25)
    colors = ([120.0, 80.0, 50.0], [60.0, 55.0, 55.0], [175.0, 140.0, 100.0])
    color = _tint(look, colors[look.integers(3)], 0.08)
    near, second = _cells(rng, size, _near(rng, cell, 0.05))
    crease = np.exp(-(((second - near) / crease_width) ** 2))
    dome = np.clip(1 - near / (second + 1e-9), 0, 1)
    value = 0.88 + 0.1 * dome - crease_depth * crease + 0.025 * _smooth_noise(rng, (size, size), 0.6)
    return _finish(look, rng, value[..., None] * _near(rng, color, 0.03), 0.1)


def carpet(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """Dense tufts: high-frequency blotches in two yarn colours over a soft pile shading."""
    tuft_sigma, pile_sigma = look.uniform(0.7, 1.4), look.uniform(5, 12)
    first = _tint(look, [150.0, 60.0, 60.0] if look.random() < 0.5 else [90.0, 110.0, 130.0], 0.1)
    second = first * look.uniform(0.7, 0.9)
    tufts = _smooth_noise(rng, (size, size), tuft_sigma)
    pile = _smooth_noise(rng, (size, size), pile_sigma)
    mix = 1 / (1 + np.exp(-3.0 * (tufts + 0.4 * pile)))[..., None]
    rgb = (first * mix + second * (1 - mix)) * _near(rng, 1.0, 0.03)
    return _finish(look, rng, rgb * (1 + 0.05 * pile[..., None]), 0.08)


def concrete(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """Fine grey grain with lighter aggregate and small dark pores (1-2 px, normal here)."""
    cell, radius, pore_rate = look.uniform(10, 20), look.uniform(2, 4), look.uniform(0.001, 0.004)
    color = _tint(look, [150.0, 150.0, 145.0], 0.03) * look.uniform(0.8, 1.15)
    grain = _smooth_noise(rng, (size, size), 0.8) + 0.6 * _smooth_noise(rng, (size, size), 4)
    near, _ = _cells(rng, size, cell)
    aggregate = (near < radius).astype(float)
    value = 1.0 + 0.04 * grain + 0.06 * ndimage.gaussian_filter(aggregate, 1.0)
    rgb = value[..., None] * _near(rng, color, 0.03)
    pores = ndimage.binary_dilation(rng.random((size, size)) < pore_rate)
    rgb[pores] *= 0.7
    return _finish(look, rng, rgb, 0.1)


def perforated_plate(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """A metal plate with a regular grid of round holes (square or staggered), dark behind."""
    angle, pitch, staggered = look.uniform(-0.3, 0.3), look.uniform(8, 16), look.random() < 0.5
    radius, dark = look.uniform(0.22, 0.34), look.uniform(0.35, 0.5)
    brushing, brightness = look.uniform(0, np.pi), _tint(look, [1.0, 1.0, 1.02]) * look.uniform(130, 175)
    along, across = _rotated_grid(size, angle + rng.normal(0, 0.01))
    u, v = along / pitch + rng.uniform(0, 1), across / pitch + rng.uniform(0, 1)
    if staggered:
        u = u + 0.5 * (np.round(v) % 2)
    distance = np.hypot(u - np.round(u), v - np.round(v))
    hole = 1 / (1 + np.exp((distance - radius) / 0.03))
    plate = 1.0 + 0.03 * _rotate(_smooth_noise(rng, (size, size), (0.7, 20)), brushing)
    value = plate * (1 - hole) + dark * hole
    return _finish(look, rng, value[..., None] * _near(rng, brightness, 0.03), 0.12)


def marble(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """A light stone with thin dark veins (turbulent sine) and soft clouds."""
    angle, period, swirl = look.uniform(0, np.pi), look.uniform(30, 70), look.uniform(0.8, 1.6)
    thinness = look.uniform(0.15, 0.3)
    colors = ([205.0, 200.0, 195.0], [170.0, 190.0, 175.0], [210.0, 180.0, 175.0])
    color = _tint(look, colors[look.integers(3)], 0.03)
    along, across = _rotated_grid(size, angle + rng.normal(0, 0.3))  # slabs are cut at varying angles
    turbulence = sum(a * _smooth_noise(rng, (size, size), s) for a, s in ((1.0, 20), (0.3, 6), (0.1, 2)))
    phase = np.pi * across / _near(rng, period, 0.2) + swirl * turbulence
    veins = np.abs(np.sin(phase)) ** thinness  # 0 on the vein, 1 between veins
    value = 0.72 + 0.25 * veins + 0.03 * _smooth_noise(rng, (size, size), 10)
    return _finish(look, rng, value[..., None] * _near(rng, color, 0.02), 0.06)


def wire_mesh(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """Woven wire cloth: round wires along two axes over a dark background, the wire on top alternating at each
    crossing (plain weave), dark square openings between them."""
    angle = look.uniform(-0.3, 0.3) + look.choice([0.0, np.pi / 4])
    pitch, diameter, dark = look.uniform(7, 14), look.uniform(0.35, 0.55), look.uniform(0.35, 0.5)  # per pitch
    colors = ([1.0, 1.0, 1.03], [1.05, 0.92, 0.7])
    color = _tint(look, colors[look.integers(2)], 0.04) * look.uniform(120, 165)
    along, across = _rotated_grid(size, angle + rng.normal(0, 0.01))
    pitch = _near(rng, pitch, 0.02)
    u, v = along / pitch + rng.uniform(0, 1), across / pitch + rng.uniform(0, 1)

    def height(t: np.ndarray) -> np.ndarray:  # a round wire's height across it (1 on its axis, 0 beside it)
        return np.sqrt(np.clip(1 - (np.abs(t - np.round(t)) / (diameter / 2)) ** 2, 0, 1))

    warp, weft = height(v), height(u)
    warp_on_top = (np.round(u) + np.round(v)) % 2 == 0
    top, under = np.where(warp_on_top, warp, weft), np.where(warp_on_top, weft, warp)
    wire = np.where(top > 0, top, 0.75 * under)
    value = np.where((warp > 0) | (weft > 0), 0.65 + 0.35 * wire, dark)
    value = ndimage.gaussian_filter(value + 0.03 * _smooth_noise(rng, (size, size), 0.7), 0.6, mode="wrap")
    return _finish(look, rng, value[..., None] * _near(rng, color, 0.03), 0.1)


def halftone(look: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """A printed halftone: round ink dots on a regular screen at a print angle, each dot's size following a soft
    tone (smooth noise), on paper with a faint fibre."""
    angle = look.choice([np.pi / 12, np.pi / 4, 5 * np.pi / 12]) + look.normal(0, 0.03)  # screen angles 15/45/75
    pitch, tone, spread = look.uniform(6, 12), look.uniform(0.2, 0.32), look.uniform(0.04, 0.1)
    inks = ([0.35, 0.35, 0.38], [0.35, 0.65, 0.8], [0.8, 0.4, 0.6])  # black, cyan, magenta (paper fraction kept)
    ink = np.asarray(inks[look.integers(3)]) * look.uniform(0.9, 1.1)
    paper = _tint(look, [1.0, 0.98, 0.94], 0.02) * look.uniform(160, 195)
    along, across = _rotated_grid(size, angle + rng.normal(0, 0.005))
    u, v = along / pitch + rng.uniform(0, 1), across / pitch + rng.uniform(0, 1)
    distance = np.hypot(u - np.round(u), v - np.round(v))
    radius = np.clip(tone + spread * _smooth_noise(rng, (size, size), look.uniform(15, 40)), 0.1, 0.45)
    dot = (1 / (1 + np.exp((distance - radius) / 0.04)))[..., None]
    fibre = 1.0 + 0.02 * _smooth_noise(rng, (size, size), 0.8)[..., None]
    return _finish(look, rng, fibre * _near(rng, paper, 0.02) * (1 - dot * (1 - ink)), 0.06)


TEXTURES: dict[str, Callable[[np.random.Generator, np.random.Generator, int], np.ndarray]] = {
    "metal": brushed_metal,
    "fabric": woven_fabric,
    "wood": wood_grain,
    "stone": speckled_stone,
    "leather": leather,
    "carpet": carpet,
    "hairline": hairline_metal,
    "twill": twill_fabric,
    "concrete": concrete,
    "perforated": perforated_plate,
    "marble": marble,
    "mesh": wire_mesh,
    "halftone": halftone,
}


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
