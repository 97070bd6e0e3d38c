"""2-D Perlin noise masks for the feature-level anomaly generator (spec §2.1 step 4).

Semantics of DSR's `rand_perlin_2d` (used by the official code): a lattice of `res` cells per axis with random unit
gradients, quintic fade 6t^5 - 15t^4 + 10t^3, output scaled by sqrt(2). Written here from the formula: each pixel
`i` of an axis of length `n` sits at lattice coordinate `u = i * res / n` (cell `floor(u)`, offset `u - floor(u)`),
which equals DSR's tiled grid whenever `res` divides `n` and also works when it does not.

Per mask: per-axis scales 2^k, k uniform in {0..5}; noise on a power-of-2 grid; bilinear resize to the feature size
(align_corners=False); binarise at the threshold; with probability 0.5 the mask is replaced by all zeros ("empty").
Random draws, in the official order, all from the caller's `torch.Generator` on the target device:
scale x, scale y, gradient angles, then the empty-mask coin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE_EXPONENTS = (0, 6)  # torch.randint(0, 6): scales 1, 2, 4, 8, 16, 32
NO_ANOMALY = ("empty", "full", "none")  # what a mask becomes with probability 0.5 (official option `no_anomaly`)


def next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def _lattice(n: int, res: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # one axis: cell index [n] (int64) and offset inside the cell [n] (float32) for n pixels over res cells
    u = torch.arange(n, device=device, dtype=torch.float64) * (res / n)
    cell = u.floor()
    return cell.long(), (u - cell).float()


def perlin_2d(
    shape: tuple[int, int], res: tuple[int, int], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Perlin noise [H, W] with res[0] x res[1] lattice cells; gradient angles drawn from `generator`."""
    angles = 2 * math.pi * torch.rand(res[0] + 1, res[1] + 1, generator=generator, device=device)
    grads = torch.stack((angles.cos(), angles.sin()), dim=-1)  # [res0 + 1, res1 + 1, 2]
    cy, fy = _lattice(shape[0], res[0], device)
    cx, fx = _lattice(shape[1], res[1], device)
    fy, fx = fy[:, None], fx[None, :]  # [H, 1], [1, W]

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = grads[(cy + dy)[:, None], (cx + dx)[None, :]]  # [H, W, 2]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = fade(fy), fade(fx)
    top = torch.lerp(corner(0, 0), corner(1, 0), ty)  # along axis 0 first, as DSR
    bottom = torch.lerp(corner(0, 1), corner(1, 1), ty)
    return math.sqrt(2) * torch.lerp(top, bottom, tx)


def random_scales(generator: torch.Generator, device: torch.device) -> tuple[int, int]:
    lo, hi = SCALE_EXPONENTS
    k = torch.randint(lo, hi, (2,), generator=generator, device=device).tolist()  # two draws: x, then y
    return 2 ** k[0], 2 ** k[1]


def perlin_mask(
    size: tuple[int, int],
    threshold: float,
    generator: torch.Generator,
    no_anomaly: str = "empty",
) -> tuple[torch.Tensor, tuple[int, int]]:
    """One binary mask [1, 1, fh, fw] (float32, on the generator's device) and the scales it used."""
    if no_anomaly not in NO_ANOMALY:
        raise ValueError(f"no_anomaly={no_anomaly!r}; accepted: {', '.join(NO_ANOMALY)}")
    device = generator.device
    grid = (next_power_of_2(size[0]), next_power_of_2(size[1]))
    scales = random_scales(generator, device)
    noise = perlin_2d(grid, scales, generator, device)[None, None]  # [1, 1, gh, gw]
    noise = F.interpolate(noise, size=tuple(size), mode="bilinear", align_corners=False)
    mask = (noise > threshold).float()
    coin = torch.rand(1, generator=generator, device=device).item()
    if coin > 0.5 and no_anomaly == "empty":
        mask = torch.zeros_like(mask)
    elif coin > 0.5 and no_anomaly == "full":
        mask = torch.ones_like(mask)
    return mask, scales
