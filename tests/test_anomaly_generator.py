"""Feature-level anomaly generation (spec §2.1, §8.8): Perlin masks, noise statistics, targets, keyed seeds."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.generator import AnomalyGenerator
from training.generator import GeneratorConfig
from training.generator import downsample_mask
from training.generator import mix_seed
from training.generator import resize_loss_mask
from training.generator import sample_seeds
from training.perlin import next_power_of_2
from training.perlin import perlin_2d
from training.perlin import perlin_mask
from training.perlin import random_scales


def dsr_tiled_perlin(shape, res, angles):
    """DSR's construction (gradients tiled per cell, grid of offsets), written independently for the check."""
    d = (shape[0] // res[0], shape[1] // res[1])
    off0 = (torch.arange(shape[0], dtype=torch.float64) % d[0]) / d[0]
    off1 = (torch.arange(shape[1], dtype=torch.float64) % d[1]) / d[1]
    g = torch.stack((angles.cos(), angles.sin()), -1).double()

    def tile(a0, a1):
        return g[a0 : a0 + res[0], a1 : a1 + res[1]].repeat_interleave(d[0], 0).repeat_interleave(d[1], 1)

    def dot(grad, s0, s1):
        return (off0[:, None] + s0) * grad[..., 0] + (off1[None, :] + s1) * grad[..., 1]

    n00, n10 = dot(tile(0, 0), 0, 0), dot(tile(1, 0), -1, 0)
    n01, n11 = dot(tile(0, 1), 0, -1), dot(tile(1, 1), -1, -1)
    t0 = 6 * off0**5 - 15 * off0**4 + 10 * off0**3
    t1 = 6 * off1**5 - 15 * off1**4 + 10 * off1**3
    a = torch.lerp(n00, n10, t0[:, None].expand_as(n00))
    b = torch.lerp(n01, n11, t0[:, None].expand_as(n00))
    return math.sqrt(2) * torch.lerp(a, b, t1[None, :].expand_as(a))


@pytest.mark.parametrize("shape,res", [((64, 64), (4, 8)), ((32, 16), (1, 16)), ((16, 32), (16, 2))])
def test_perlin_matches_dsr_construction(shape, res):
    gen = torch.Generator().manual_seed(3)
    ours = perlin_2d(shape, res, gen, torch.device("cpu"))
    angles = 2 * math.pi * torch.rand(res[0] + 1, res[1] + 1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours.double(), dsr_tiled_perlin(shape, res, angles), atol=1e-5, rtol=0)
    assert ours.abs().max() <= math.sqrt(2) * 1.0001


def test_scales_only_powers_of_two_up_to_32():
    gen = torch.Generator().manual_seed(0)
    seen = {s for _ in range(400) for s in random_scales(gen, torch.device("cpu"))}
    assert seen == {1, 2, 4, 8, 16, 32}


def test_perlin_mask_grid_and_coin():
    assert next_power_of_2(36) == 64 and next_power_of_2(58) == 64 and next_power_of_2(64) == 64
    gen = torch.Generator().manual_seed(1)
    masks = [perlin_mask((20, 12), -10.0, gen)[0] for _ in range(400)]  # threshold below every value
    assert all(m.shape == (1, 1, 20, 12) for m in masks)
    full = sum(bool(m.all()) for m in masks)
    empty = sum(not m.any() for m in masks)
    assert full + empty == 400 and 0.4 < empty / 400 < 0.6  # the 0.5 coin, nothing else empties them


def test_generator_statistics():
    b, c, size = 100, 64, (16, 24)
    torch.manual_seed(0)
    adapted = torch.randn(b, c, *size)
    out = AnomalyGenerator(GeneratorConfig(threshold=0.2))(
        adapted, None, torch.zeros(b, 1, *size), torch.zeros(b), sample_seeds(42, 0, range(b))
    )
    assert (
        out.adapted.shape == (2 * b, c, *size) and out.mask.shape == (2 * b, 1, *size) and out.label.shape == (2 * b,)
    )
    assert out.pooled is None
    # labels equal any(mask); masks are exactly where noise went
    assert torch.equal(out.label, out.mask.flatten(1).amax(1))
    assert torch.equal(out.mask, out.noise_mask)
    empty = float((out.label == 0).float().mean())
    assert 0.5 <= empty < 0.75, empty  # the 0.5 coin plus threshold-induced empties
    delta = out.adapted - torch.cat((adapted, adapted))
    inside = out.mask.expand_as(delta) > 0
    assert torch.count_nonzero(delta[~inside]) == 0  # exactly 0 outside
    assert abs(float(delta[inside].std()) - 0.015) < 0.0005 and abs(float(delta[inside].mean())) < 0.0005


def test_jims_same_noise_on_pooled_and_keyed_seeds():
    b, c, size = 6, 8, (8, 8)
    adapted, pooled = torch.randn(b, c, *size), torch.randn(b, c, *size)
    gen = AnomalyGenerator(GeneratorConfig(threshold=-1.0, no_anomaly="none"))
    seeds = sample_seeds(7, 3, range(b))
    out = gen(adapted, pooled, torch.zeros(b, 1, *size), torch.zeros(b), seeds)
    torch.testing.assert_close(out.adapted - torch.cat((adapted, adapted)), out.pooled - torch.cat((pooled, pooled)))
    # the perturbation of a sample depends on its seed only, not on the batch it is in
    first = gen(adapted[:2], pooled[:2], torch.zeros(2, 1, *size), torch.zeros(2), seeds[0:2] + seeds[b : b + 2])
    assert torch.equal(first.adapted[:2], out.adapted[:2]) and torch.equal(first.adapted[2:], out.adapted[b : b + 2])


def test_overlap_and_bad_options():
    b, c, size = 4, 4, (8, 8)
    mask = torch.zeros(b, 1, *size)
    mask[0, :, :4] = 1
    label = torch.tensor([1.0, 0, 0, 0])
    x = torch.randn(b, c, *size)
    seeds = sample_seeds(0, 0, range(b))
    cfg = GeneratorConfig(threshold=-10.0, no_anomaly="none")  # every Perlin mask full
    no_overlap = AnomalyGenerator(replace(cfg, overlap=False))(x, None, mask, label, seeds)
    gt = torch.cat((mask, mask)) > 0
    assert not (no_overlap.noise_mask.bool() & gt).any()  # no noise on GT-defect pixels
    assert torch.equal(no_overlap.mask.bool(), torch.ones_like(gt))  # GT + noise cover everything
    no_bad = AnomalyGenerator(replace(cfg, bad=False))(x, None, mask, label, seeds)
    assert no_bad.noise_mask[0].sum() == 0 and no_bad.noise_mask[b].sum() == 0 and no_bad.noise_mask[1].all()
    assert torch.equal(no_bad.label, torch.ones(2 * b))


def _bilinear(a: np.ndarray, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    """[H, W] -> size, bilinear without antialiasing, from the textbook formula in float64: each output index maps
    to a source coordinate (corners aligned: i * (n - 1) / (m - 1); else pixel centres: (i + 0.5) * n / m - 0.5,
    clamped at 0), weighted between its two neighbours."""

    def axis(n: int, m: int):
        i = np.arange(m, dtype=np.float64)
        src = i * (n - 1) / (m - 1) if align_corners else np.maximum((i + 0.5) * n / m - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n - 1)
        return lo, np.minimum(lo + 1, n - 1), src - lo

    (y0, y1, fy), (x0, x1, fx) = axis(a.shape[0], size[0]), axis(a.shape[1], size[1])
    rows = a[y0] * (1 - fy)[:, None] + a[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def test_downsample_mask_hand_cases():
    # 4 x 4 -> 2 x 2. Pixel centres: each output is the mean of one 2 x 2 block; >= 0.5 keeps half-covered blocks.
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 1, 1], [1, 0, 1, 1]], dtype=torch.float32)[None, None]
    assert downsample_mask(mask, (2, 2), align_corners=False)[0, 0].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    # corners aligned: the outputs sit exactly on the four corner pixels
    assert downsample_mask(mask, (2, 2), align_corners=True)[0, 0].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    mask[0, 0, 3, 3] = 0
    assert downsample_mask(mask, (2, 2), align_corners=True)[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert downsample_mask(mask, (2, 2), align_corners=False)[0, 0].tolist() == [[1.0, 0.0], [1.0, 1.0]]  # 3 of 4


@pytest.mark.parametrize("align_corners", [False, True])
def test_downsample_mask_equals_textbook_bilinear_then_half(align_corners):
    mask = (torch.rand(2, 1, 64, 96, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    small = downsample_mask(mask, (16, 24), align_corners)
    assert small.shape == (2, 1, 16, 24) and small.dtype == torch.float32
    for image in range(2):
        ref = _bilinear(mask[image, 0].double().numpy(), (16, 24), align_corners)
        if align_corners:  # weights 63/15 and 95/23 apart: float32 and float64 may round apart, only 0.5 matters
            decided = np.abs(ref - 0.5) > 1e-6
            assert decided.mean() > 0.95
        else:  # 4x: every output is the mean of a 2 x 2 block, exact in both; over a quarter are 0.5
            decided = np.ones_like(ref, dtype=bool)
            assert (ref == 0.5).mean() > 0.1
        np.testing.assert_array_equal(small[image, 0].numpy()[decided], (ref >= 0.5)[decided])
        assert 0.05 < small[image].mean() < 0.5


def test_resize_loss_mask_is_bilinear_with_corners_aligned():
    """Distance-transform weights go to the feature grid with align_corners=True (OFF-JIMS), values kept."""
    weights = 1 + torch.rand(2, 1, 40, 56, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    small = resize_loss_mask(weights, (10, 14))
    assert small.shape == (2, 1, 10, 14) and small.dtype == torch.float32
    for image in range(2):
        ref = _bilinear(weights[image, 0].numpy(), (10, 14), align_corners=True)
        np.testing.assert_allclose(small[image, 0].numpy(), ref, rtol=1e-5)
    assert float(small[0, 0, 0, 0]) == pytest.approx(float(weights[0, 0, 0, 0]))  # corners kept exactly


def test_sample_seeds_order_and_what_keys_them():
    """2B seeds: copy 0 of every sample, then copy 1; each depends on the run seed, the epoch, the position and
    the copy."""
    seeds = sample_seeds(42, 3, [5, 9])
    assert seeds == [mix_seed(42, 3, 5, 0), mix_seed(42, 3, 9, 0), mix_seed(42, 3, 5, 1), mix_seed(42, 3, 9, 1)]
    grid = [sample_seeds(base, epoch, range(16)) for base in (42, 456654) for epoch in range(4)]
    flat = [s for seeds in grid for s in seeds]
    assert len(set(flat)) == len(flat) == 2 * 4 * 2 * 16  # no two (base, epoch, position, copy) share a seed


def test_mix_seed_spreads_over_63_bits():
    """A usable generator seed: distinct over a grid of inputs, using the whole 63-bit range, and one flipped input
    bit changes about half the output bits (avalanche)."""
    values = [mix_seed(base, epoch, p, c) for base in (0, 42) for epoch in range(8) for p in range(64) for c in (0, 1)]
    assert len(set(values)) == len(values) and all(0 <= v < 2**63 for v in values)
    assert max(values) > 2**62 and sum(v >> 62 for v in values) > len(values) // 3  # the top bit is used
    rng = np.random.default_rng(0)
    flips = []
    for _ in range(300):
        base, epoch, position = (int(x) for x in rng.integers(0, 2**31, 3))
        bit = 1 << int(rng.integers(0, 31))
        flips.append(bin(mix_seed(base, epoch, position, 0) ^ mix_seed(base, epoch, position ^ bit, 0)).count("1"))
    assert 29 < np.mean(flips) < 34 and min(flips) > 10


def test_generator_refuses_bad_settings_and_seed_counts():
    with pytest.raises(ValueError) as err:
        GeneratorConfig(no_anomaly="half")
    assert str(err.value) == "no_anomaly='half'; accepted: empty, full, none"
    with pytest.raises(ValueError) as err:
        GeneratorConfig(noise_std=-0.1)
    assert str(err.value) == "noise_std=-0.1 must be >= 0"
    off = AnomalyGenerator(GeneratorConfig(noise_std=0.0, threshold=-10.0, no_anomaly="none"))  # masks, no noise
    x = torch.randn(2, 4, 8, 8)
    out = off(x, None, torch.zeros(2, 1, 8, 8), torch.zeros(2), sample_seeds(0, 0, range(2)))
    assert torch.equal(out.adapted, torch.cat((x, x)))
    assert bool(out.mask.all()) and torch.equal(out.label, torch.ones(4))
    with pytest.raises(ValueError) as err:
        off(x, None, torch.zeros(2, 1, 8, 8), torch.zeros(2), [1, 2, 3])
    assert str(err.value) == "need 2B = 4 seeds (one per duplicated sample), got 3"


def test_a_disabled_generator_passes_the_batch_through_once():
    """enabled=False (synthetic_with_masks=False): the B samples come back as they went in, in float32, with no
    noise mask, whatever the seeds; an enabled generator with the same inputs duplicates them to 2B."""
    b, size = 3, (8, 12)
    g = torch.Generator().manual_seed(4)
    adapted = torch.randn(b, 5, *size, generator=g).double()
    pooled = torch.randn(b, 5, *size, generator=g)
    mask = (torch.rand(b, 1, *size, generator=g) > 0.7).double()
    label = torch.tensor([0.0, 1.0, 1.0])
    off = AnomalyGenerator(GeneratorConfig(threshold=-10.0, enabled=False))
    out = off(adapted, pooled, mask, label, seeds=[])
    assert out.adapted.dtype == out.mask.dtype == out.label.dtype == torch.float32
    assert torch.equal(out.adapted, adapted.float()) and torch.equal(out.pooled, pooled)
    assert torch.equal(out.mask, mask.float()) and torch.equal(out.label, label)
    assert out.noise_mask.shape == (b, 1, *size) and not out.noise_mask.any()
    assert off(adapted, None, mask, label, seeds=[]).pooled is None  # the ICPR head has no pooled features
    on = AnomalyGenerator(GeneratorConfig(threshold=-10.0, no_anomaly="none"))(
        adapted, pooled, mask, label, sample_seeds(0, 0, range(b))
    )
    assert on.adapted.shape[0] == 2 * b and bool(on.noise_mask.all())  # every Perlin mask full at -10
