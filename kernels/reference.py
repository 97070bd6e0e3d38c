"""Plain-PyTorch references for the two ops the Triton kernels fuse (spec §1.1, §1.4; kernels.md §1).

(a) feature stage: resize layer2 and layer3 to 2x the layer2 size (bilinear), concatenate layer2-first,
    AvgPool 3/1/1 with count_include_pad, then the 1x1 adaptor conv with bias.
(b) anomaly map: bilinear upsample (align_corners=False) to the image size, then a Gaussian blur
    (kernel 2*ceil(3*sigma)+1, reflect border) on logits, optionally followed by a sigmoid.

Two formulations of each, selected by the caller:
- `*_reference`: the straightforward composition, exactly as the official code writes it (25x25 2-D blur).
- `*_fast`: exact algebraic reorderings, cheaper on CPU:
    * every resize, pool and blur here is separable and linear, so each 2-D operator is `R_h @ X @ R_w^T`
      with small 1-D matrices built by pushing an identity basis through the reference functions;
    * the adaptor commutes with per-channel resampling: `W @ pool(up(x)) = pool(up(W @ x))`, so the GEMM
      runs at the backbone's native resolution (8x fewer MACs at 256x256); the bias is added afterwards.
  `tests/test_reference_ops.py` proves both equal to the reference (float64 to 1e-10, float32 to 1e-5).
The same identity-basis construction gives the 1-D operators of the folded inference graph: resize + pool +
tap shift of a "same" 5x5 conv (zero fill), and the conv's in-bounds masks.

This module knows nothing of the rest of the project.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------------
# (a) upscale + concat + avg-pool + adaptor


def upscale_pool_reference(l2: torch.Tensor, l3: torch.Tensor, align_corners: bool) -> torch.Tensor:
    # l2: [B, C2, h, w], l3: [B, C3, h3, w3] -> pooled: [B, C2 + C3, 2h, 2w]
    size = (2 * l2.shape[-2], 2 * l2.shape[-1])
    up2 = F.interpolate(l2, size=size, mode="bilinear", align_corners=align_corners)
    up3 = F.interpolate(l3, size=size, mode="bilinear", align_corners=align_corners)
    return F.avg_pool2d(torch.cat([up2, up3], dim=1), kernel_size=3, stride=1, padding=1, count_include_pad=True)


def feature_stage_reference(
    l2: torch.Tensor, l3: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, align_corners: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    # weight: [C, C, 1, 1], bias: [C] -> (pooled, adapted): both [B, C, 2h, 2w]
    pooled = upscale_pool_reference(l2, l3, align_corners)
    return pooled, F.conv2d(pooled, weight, bias)


def _matrix_of(signal_map, n_in: int) -> torch.Tensor:
    """The matrices of a linear 1-D map, found by pushing the n_in unit signals through it (float64).

    signal_map: [n_in, 1, n_in] -> [n_in, K, n_out] (K output signals per input); returns (K, n_out, n_in).
    """
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]  # n_in unit signals
    return signal_map(eye).permute(1, 2, 0).contiguous()


def _resize_pool_signals(x: torch.Tensor, n_out: int, align_corners: bool) -> torch.Tensor:
    # x: [N, 1, n_in] -> [N, 1, n_out]: bilinear resize, then the 3-tap zero-padded mean (count_include_pad)
    up = F.interpolate(x, size=n_out, mode="linear", align_corners=align_corners)
    return F.avg_pool1d(up, 3, 1, 1, count_include_pad=True)


def _tap_shift_signals(x: torch.Tensor, taps: int) -> torch.Tensor:
    # x: [N, 1, n] -> [N, taps, n]: output d reads x[i + d - taps//2], zero outside (a "same" conv's zero padding)
    return F.conv1d(x, torch.eye(taps, dtype=x.dtype, device=x.device)[:, None, :], padding="same")


@functools.cache
def resize_pool_matrix_f64(n_in: int, n_out: int, align_corners: bool) -> torch.Tensor:
    # (n_out, n_in): one axis of "bilinear resize to n_out, then 3-tap zero-padded mean"
    return _matrix_of(lambda x: _resize_pool_signals(x, n_out, align_corners), n_in)[0]


def resize_pool_matrix(n_in: int, n_out: int, align_corners: bool, dtype: torch.dtype, device) -> torch.Tensor:
    return resize_pool_matrix_f64(n_in, n_out, align_corners).to(dtype=dtype, device=device)


@functools.cache
def resize_pool_shift_f64(n_in: int, n_out: int, align_corners: bool, taps: int) -> torch.Tensor:
    """(taps, n_out, n_in), float64: one axis of resize + pool, then tap d of a `taps`-wide "same" conv.

    Row y of tap d is the resized-and-pooled signal read at y + d - taps//2, zero outside [0, n_out): the
    conv's zero padding. Summing `S_dy (x) S_dx` over the taps applies the conv's spatial part (kernels.md §7).
    """
    return _matrix_of(lambda x: _tap_shift_signals(_resize_pool_signals(x, n_out, align_corners), taps), n_in)


@functools.cache
def tap_in_bounds_f64(n: int, taps: int) -> torch.Tensor:
    """(taps, n), float64: 1 where tap d of a `taps`-wide "same" conv reads inside [0, n), else 0 (padding)."""
    return _tap_shift_signals(torch.ones(1, 1, n, dtype=torch.float64), taps)[0]


def _separable(x: torch.Tensor, m_h: torch.Tensor, m_w: torch.Tensor) -> torch.Tensor:
    # x: [B, C, h, w], m_h: [H, h], m_w: [W, w] -> [B, C, H, W]
    return torch.matmul(torch.matmul(m_h, x), m_w.T)


def _resize_pool(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    m_h = resize_pool_matrix(x.shape[-2], size[0], align_corners, x.dtype, x.device)
    m_w = resize_pool_matrix(x.shape[-1], size[1], align_corners, x.dtype, x.device)
    return _separable(x, m_h, m_w)


def feature_stage_fast(
    l2: torch.Tensor,
    l3: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    align_corners: bool,
    need_pooled: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Same as `feature_stage_reference`; the adaptor GEMM runs at native resolution. pooled is None unless asked."""
    c2 = l2.shape[1]
    size = (2 * l2.shape[-2], 2 * l2.shape[-1])
    w = weight.flatten(1)  # [C, C2 + C3]
    z2 = torch.einsum("oc,bchw->bohw", w[:, :c2], l2)  # [B, C, h, w]
    z3 = torch.einsum("oc,bchw->bohw", w[:, c2:], l3)  # [B, C, h3, w3]
    adapted = _resize_pool(z2, size, align_corners) + _resize_pool(z3, size, align_corners) + bias[:, None, None]
    pooled = None
    if need_pooled:
        pooled = torch.cat([_resize_pool(l2, size, align_corners), _resize_pool(l3, size, align_corners)], dim=1)
    return pooled, adapted


# ---------------------------------------------------------------------------------------------------------------
# (b) upsample + Gaussian blur (+ sigmoid)


def blur_kernel_size(sigma: float) -> int:
    return 2 * math.ceil(3 * sigma) + 1


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of 2*ceil(3*sigma)+1 taps, as torchvision's GaussianBlur builds it."""
    k = blur_kernel_size(sigma)
    x = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def check_blur_size(size: tuple[int, int], sigma: float) -> None:
    half = blur_kernel_size(sigma) // 2
    if min(size) <= half:
        raise ValueError(f"anomaly map size {tuple(size)} must exceed the blur half-width {half} (reflect padding)")


def anomaly_map_reference(
    seg: torch.Tensor, size: tuple[int, int], sigma: float = 4.0, sigmoid: bool = False
) -> torch.Tensor:
    # seg: [B, 1, h, w] logits -> [B, 1, H, W] blurred logits (or probabilities with sigmoid)
    check_blur_size(size, sigma)
    up = F.interpolate(seg, size=tuple(size), mode="bilinear", align_corners=False)
    g = gaussian_kernel1d(sigma, up.dtype, up.device)
    half = g.numel() // 2
    kernel2d = (g[:, None] * g[None, :])[None, None]  # [1, 1, k, k]
    out = F.conv2d(F.pad(up, (half, half, half, half), mode="reflect"), kernel2d)
    return out.sigmoid() if sigmoid else out


def _upsample_blur_signals(x: torch.Tensor, n_out: int, sigma: float) -> torch.Tensor:
    # x: [N, 1, n_in] -> [N, 1, n_out]: bilinear upsample (align_corners=False), then reflect-padded Gaussian
    up = F.interpolate(x, size=n_out, mode="linear", align_corners=False)
    g = gaussian_kernel1d(sigma)
    half = g.numel() // 2
    return F.conv1d(F.pad(up, (half, half), mode="reflect"), g[None, None])


@functools.cache
def upsample_blur_matrix_f64(n_in: int, n_out: int, sigma: float) -> torch.Tensor:
    """(n_out, n_in), float64: one axis of the anomaly-map upsample + blur (reflect border folded in)."""
    return _matrix_of(lambda x: _upsample_blur_signals(x, n_out, sigma), n_in)[0]


def upsample_blur_matrix(n_in: int, n_out: int, sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    return upsample_blur_matrix_f64(n_in, n_out, float(sigma)).to(dtype=dtype, device=device)


def anomaly_map_fast(seg: torch.Tensor, size: tuple[int, int], sigma: float = 4.0, sigmoid: bool = False):
    """Same as `anomaly_map_reference`, as two small matrix products (upsample and blur folded per axis)."""
    check_blur_size(size, sigma)
    m_h = upsample_blur_matrix(seg.shape[-2], size[0], sigma, seg.dtype, seg.device)
    m_w = upsample_blur_matrix(seg.shape[-1], size[1], sigma, seg.dtype, seg.device)
    out = _separable(seg, m_h, m_w)
    return out.sigmoid() if sigmoid else out


IMPLS = ("reference", "fast-cpu")


def feature_stage(l2, l3, weight, bias, align_corners: bool, impl: str = "reference", need_pooled: bool = True):
    if impl == "reference":
        pooled, adapted = feature_stage_reference(l2, l3, weight, bias, align_corners)
        return (pooled if need_pooled else None), adapted
    if impl == "fast-cpu":
        return feature_stage_fast(l2, l3, weight, bias, align_corners, need_pooled)
    raise ValueError(f"impl={impl!r} is unknown; accepted: {', '.join(IMPLS)}")


def anomaly_map(seg, size, sigma: float = 4.0, sigmoid: bool = False, impl: str = "reference"):
    if impl == "reference":
        return anomaly_map_reference(seg, size, sigma, sigmoid)
    if impl == "fast-cpu":
        return anomaly_map_fast(seg, size, sigma, sigmoid)
    raise ValueError(f"impl={impl!r} is unknown; accepted: {', '.join(IMPLS)}")
