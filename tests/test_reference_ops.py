"""kernels/reference.py: the two ops, their properties, and the fast CPU forms proved equal (spec §8.4, §8.10)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from kernels import reference as ref

# (l2 h, l2 w, l3 h, l3 w): square, odd (KSDD2-like 80x29 -> 40x15), prime, 1-pixel layer3
FEATURE_SHAPES = [(8, 8, 4, 4), (10, 7, 5, 4), (7, 5, 4, 3), (4, 6, 1, 3)]


def _features(shape, c2=6, c3=10, batch=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w, h3, w3 = shape
    l2 = torch.randn(batch, c2, h, w, generator=g, dtype=dtype)
    l3 = torch.randn(batch, c3, h3, w3, generator=g, dtype=dtype)
    weight = torch.randn(c2 + c3, c2 + c3, 1, 1, generator=g, dtype=dtype) / (c2 + c3) ** 0.5
    bias = torch.randn(c2 + c3, generator=g, dtype=dtype)
    return l2, l3, weight, bias


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("shape", FEATURE_SHAPES, ids=str)
def test_feature_stage_fast_equals_reference_float64(shape, align_corners):
    args = _features(shape, dtype=torch.float64)
    pooled, adapted = ref.feature_stage_reference(*args, align_corners)
    pooled_f, adapted_f = ref.feature_stage_fast(*args, align_corners)
    assert pooled.shape == (2, 16, 2 * shape[0], 2 * shape[1])
    torch.testing.assert_close(pooled_f, pooled, atol=1e-10, rtol=0)
    torch.testing.assert_close(adapted_f, adapted, atol=1e-10, rtol=0)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("shape", FEATURE_SHAPES, ids=str)
def test_feature_stage_fast_equals_reference_float32(shape, align_corners):
    args = _features(shape, c2=64, c3=128)
    pooled, adapted = ref.feature_stage_reference(*args, align_corners)
    pooled_f, adapted_f = ref.feature_stage_fast(*args, align_corners)
    assert (pooled_f - pooled).abs().max().item() <= 1e-5
    assert (adapted_f - adapted).abs().max().item() <= 1e-5
    assert ref.feature_stage_fast(*args, align_corners, need_pooled=False)[0] is None


def test_pool_border_is_four_ninths():
    """count_include_pad=True: on a constant input the corners are 4/9, the edges 6/9 of the interior."""
    ones2, ones3 = torch.ones(1, 1, 4, 4), torch.ones(1, 1, 2, 2)
    for pooled in (
        ref.upscale_pool_reference(ones2, ones3, True),
        ref.feature_stage_fast(ones2, ones3, torch.zeros(2, 2, 1, 1), torch.zeros(2), True)[0],
    ):
        assert pooled.shape == (1, 2, 8, 8)
        torch.testing.assert_close(pooled[0, :, 0, 0], torch.full((2,), 4 / 9))
        torch.testing.assert_close(pooled[0, :, 0, 3], torch.full((2,), 6 / 9))
        torch.testing.assert_close(pooled[0, :, 3, 3], torch.ones(2))


def test_resize_targets_twice_layer2_size():
    l2, l3 = torch.randn(1, 2, 80, 29), torch.randn(1, 3, 40, 15)
    assert ref.upscale_pool_reference(l2, l3, True).shape == (1, 5, 160, 58)


@pytest.mark.parametrize(
    "align_corners,along_width",
    [
        # [0, 1] resized to 4: src = dst * (in - 1) / (out - 1) -> [0, 1/3, 2/3, 1]; 3-tap zero-padded mean
        (True, [1 / 9, 1 / 3, 2 / 3, 5 / 9]),
        # src = (dst + 0.5) * in / out - 0.5, clamped at 0 -> [0, 1/4, 3/4, 1]; 3-tap zero-padded mean
        (False, [1 / 12, 1 / 3, 2 / 3, 7 / 12]),
    ],
    ids=["ac-true", "ac-false"],
)
def test_upscale_pool_hand_computed(align_corners, along_width):
    """2x2 -> 4x4, worked by hand: columns [0, 1] along the width, constant along the height (pooled: 2/3 at the
    top and bottom rows, whose zero padding counts); layer3 holds the mirrored image."""
    l2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)[None, None]
    rows = torch.tensor([2 / 3, 1, 1, 2 / 3], dtype=torch.float64)
    cols = torch.tensor(along_width, dtype=torch.float64)
    expected = torch.stack([rows[:, None] * cols, rows[:, None] * cols.flip(0)])[None]  # [1, 2, 4, 4]
    zeros = torch.zeros(2, 2, 1, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for impl in ref.IMPLS:
        pooled, _ = ref.feature_stage(l2, l2.flip(-1), *zeros, align_corners, impl)
        torch.testing.assert_close(pooled, expected, atol=1e-15, rtol=0)
    torch.testing.assert_close(ref.resize_pool_matrix_f64(2, 4, align_corners)[:, 1], cols, atol=1e-15, rtol=0)


def test_align_corners_changes_the_result():
    l2, l3, w, b = _features((6, 6, 3, 3))
    a = ref.upscale_pool_reference(l2, l3, True)
    b_ = ref.upscale_pool_reference(l2, l3, False)
    assert (a - b_).abs().max() > 1e-2


def test_gaussian_kernel():
    g = ref.gaussian_kernel1d(4.0)
    assert g.numel() == 25 == ref.blur_kernel_size(4.0)
    assert g.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(g, g.flip(0)) and g.argmax() == 12


MAP_CASES = [((16, 16), (64, 64)), ((8, 12), (32, 48)), ((5, 7), (23, 31)), ((16, 16), (16, 16))]


@pytest.mark.parametrize("sigma,kernel", [(4.0, 25), (3.5, 23)], ids=["sigma4", "sigma3.5"])
@pytest.mark.parametrize("src,dst", MAP_CASES, ids=str)
def test_anomaly_map_matches_torchvision_blur(src, dst, sigma, kernel):
    """Reference = official: interpolate (align_corners False) + torchvision GaussianBlur(2 ceil(3 sigma) + 1,
    sigma), reflect; at sigma 3.5 the kernel is 23 (ceil of 10.5), not 21 (round)."""
    seg = torch.randn(3, 1, *src, dtype=torch.float64)
    official = gaussian_blur(F.interpolate(seg, size=dst, mode="bilinear"), [kernel, kernel], [sigma, sigma])
    for impl in ref.IMPLS:
        torch.testing.assert_close(ref.anomaly_map(seg, dst, sigma, impl=impl), official, atol=1e-12, rtol=0)


@pytest.mark.parametrize("src,dst", MAP_CASES, ids=str)
@pytest.mark.parametrize("sigmoid", [False, True])
def test_anomaly_map_fast_equals_reference(src, dst, sigmoid):
    seg64 = torch.randn(2, 1, *src, dtype=torch.float64) * 3
    torch.testing.assert_close(
        ref.anomaly_map_fast(seg64, dst, 4.0, sigmoid),
        ref.anomaly_map_reference(seg64, dst, 4.0, sigmoid),
        atol=1e-10,
        rtol=0,
    )
    seg = seg64.float()
    diff = ref.anomaly_map_fast(seg, dst, 4.0, sigmoid) - ref.anomaly_map_reference(seg, dst, 4.0, sigmoid)
    assert diff.abs().max().item() <= 1e-5


@pytest.mark.parametrize("impl", ref.IMPLS)
def test_constant_map_stays_constant(impl):
    seg = torch.full((1, 1, 9, 11), -2.5)
    out = ref.anomaly_map(seg, (36, 44), impl=impl)
    torch.testing.assert_close(out, torch.full((1, 1, 36, 44), -2.5))


def test_too_small_map_is_refused():
    with pytest.raises(ValueError, match="blur half-width 12"):
        ref.anomaly_map(torch.zeros(1, 1, 3, 3), (12, 40))


def test_unknown_impl_is_refused():
    l2, l3, w, b = _features((4, 4, 2, 2))
    with pytest.raises(ValueError, match="accepted: reference, fast-cpu"):
        ref.feature_stage(l2, l3, w, b, True, impl="cuda-magic")
    with pytest.raises(ValueError, match="accepted: reference, fast-cpu"):
        ref.anomaly_map(torch.zeros(1, 1, 16, 16), (32, 32), impl="nope")
