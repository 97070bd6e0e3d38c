"""kernels/anomaly_map.py (op b) against the reference composition: F.interpolate (bilinear, align_corners=False),
25x25 Gaussian conv2d with reflect padding, sigmoid (kernels/reference.anomaly_map_reference, float64).
Interpreter on CPU at a few tiles; the same on CUDA, and real preset sizes with -m gpu."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import DEVICE
from kernel_helpers import needs_cuda
from kernel_helpers import needs_kernels
from kernel_helpers import on
from kernel_helpers import rel_err

from kernels import anomaly_map
from kernels import reference
from kernels.common import KernelInputError

pytestmark = needs_kernels
SIGMA = 4.0
# (fh, fw) -> 4x: square, non-square, odd
SIZES = {"square": (16, 16), "non-square": (16, 24), "odd": (18, 25)}
CASES = [(1, "square", True), (2, "non-square", False), (3, "odd", True), (2, "odd", False)]


def make(batch: int, size, seed: int = 0) -> list:
    fh, fw = size
    seg = torch.randn(batch, 1, fh, fw, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows = reference.upsample_blur_matrix_f64(fh, 4 * fh, SIGMA)  # [H, fh]
    cols = reference.upsample_blur_matrix_f64(fw, 4 * fw, SIGMA).T.contiguous()  # [fw, W]
    return [seg, rows, cols]


@pytest.mark.parametrize("batch,size,sigmoid", CASES, ids=lambda v: str(v))
def test_fp32_equals_float64_reference(batch, size, sigmoid):
    """map and per-image max: <= 1e-6 relative to the float64 reference (measured ~1e-7)."""
    seg, rows, cols = make(batch, SIZES[size])
    expected = reference.anomaly_map_reference(seg, (rows.shape[0], cols.shape[1]), SIGMA, sigmoid)
    got, peak = anomaly_map.anomaly_map_triton(*on(torch.float32, [seg, rows, cols]), sigmoid)
    assert got.shape == expected.shape and got.dtype == torch.float32 and peak.dtype == torch.float32
    assert rel_err(got, expected) <= 1e-6
    torch.testing.assert_close(peak.double().cpu(), expected.amax(dim=(1, 2, 3)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 3e-2)], ids=["fp16", "bf16"])
def test_half_precision(dtype, tol):
    """fp16 / bf16 logits and operators, fp32 accumulation: measured 4e-4 / 4e-3 relative."""
    seg, rows, cols = make(2, SIZES["odd"])
    expected = reference.anomaly_map_reference(seg, (72, 100), SIGMA)
    got, peak = anomaly_map.anomaly_map_triton(*on(dtype, [seg, rows, cols]), False)
    assert got.dtype == dtype and rel_err(got, expected) <= tol
    assert rel_err(peak, expected.amax(dim=(1, 2, 3))) <= tol


def test_constant_map_stays_constant():
    """Bilinear upsampling and the reflect-padded, normalised blur keep a constant: every pixel = c."""
    _, rows, cols = make(1, SIZES["odd"])
    seg = torch.full((2, 1, 18, 25), -1.75, dtype=torch.float64)
    got, peak = anomaly_map.anomaly_map_triton(*on(torch.float32, [seg, rows, cols]), False)
    torch.testing.assert_close(got.cpu(), torch.full((2, 1, 72, 100), -1.75), rtol=0, atol=2e-6)
    torch.testing.assert_close(peak.cpu(), torch.full((2,), -1.75), rtol=0, atol=2e-6)


def test_batch_independence_is_exact():
    seg, rows, cols = on(torch.float32, make(3, SIZES["non-square"]))
    whole, peak = anomaly_map.anomaly_map_triton(seg, rows, cols, True)
    parts = [anomaly_map.anomaly_map_triton(seg[i : i + 1], rows, cols, True) for i in range(3)]
    assert torch.equal(whole, torch.cat([p[0] for p in parts])) and torch.equal(peak, torch.cat([p[1] for p in parts]))


def test_strided_seg_map_is_read_as_is():
    """The seg map may be any view (e.g. a channel of a wider tensor): no copy, same result."""
    seg, rows, cols = on(torch.float32, make(2, SIZES["square"]))
    wide = torch.cat([seg, seg + 1], dim=1)[:, 1:]  # strided view
    got = anomaly_map.anomaly_map_triton(wide, rows, cols, False)[0]
    torch.testing.assert_close(got, anomaly_map.anomaly_map_triton((seg + 1).contiguous(), rows, cols, False)[0])


def test_wide_maps_take_the_plain_form(monkeypatch):
    args = on(torch.float32, make(1, SIZES["square"]))
    monkeypatch.setattr(anomaly_map, "MAX_FW", 8)
    got, peak = anomaly_map.anomaly_map_triton(*args, True)
    expected, expected_peak = anomaly_map.anomaly_map_torch(*args, True)
    assert torch.equal(got, expected) and torch.equal(peak, expected_peak)


def test_bad_input_is_named():
    seg, rows, cols = on(torch.float32, make(1, SIZES["square"]))
    with pytest.raises(KernelInputError, match=r"cols has shape \[24, 96\], expected \[16, \*\]"):
        anomaly_map.anomaly_map_triton(seg, rows, make(1, SIZES["non-square"])[2].float().to(DEVICE), True)
    with pytest.raises(KernelInputError, match=r"seg has shape \[1, 2, 16, 16\], expected \[\*, 1, \*, \*\]"):
        anomaly_map.anomaly_map_triton(seg.expand(1, 2, 16, 16), rows, cols, True)
    with pytest.raises(KernelInputError, match="rows is torch.float16, expected torch.float32"):
        anomaly_map.anomaly_map_triton(seg, rows.half(), cols, True)
    with pytest.raises(KernelInputError, match="rows .* needs a unit stride"):
        anomaly_map.anomaly_map_triton(seg, rows.T.contiguous().T, cols, True)


def test_upsample_blur_and_registered_op():
    """upsample_blur builds the operators from the reference (cached) and equals it; torch.ops.ssn.anomaly_map
    runs the plain form on CPU tensors and passes torch.library.opcheck."""
    seg, rows, cols = make(2, SIZES["non-square"])
    expected = reference.anomaly_map(seg, (64, 96), SIGMA, sigmoid=True)
    got, peak = anomaly_map.upsample_blur(seg, (64, 96), SIGMA, sigmoid=True)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(peak, expected.amax(dim=(1, 2, 3)).float())
    with pytest.raises(ValueError, match="must exceed the blur half-width"):
        anomaly_map.upsample_blur(seg, (12, 96), SIGMA)
    torch.library.opcheck(torch.ops.ssn.anomaly_map, (*on(torch.float32, [seg, rows, cols], "cpu"), True))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("size", [(64, 64), (160, 58)], ids=["mvtec", "ksdd2"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
def test_real_sizes_on_the_gpu(size, dtype, tol):
    """256x256 and 640x232 maps at batch 32, through the registered op (autotuned), sigmoid on."""
    seg, rows, cols = make(32, size)
    expected = reference.anomaly_map_reference(seg, (rows.shape[0], cols.shape[1]), SIGMA, True)
    got, peak = torch.ops.ssn.anomaly_map(*on(dtype, [seg, rows, cols], "cuda"), True)
    assert got.is_cuda and rel_err(got, expected) <= tol
    assert rel_err(peak, expected.amax(dim=(1, 2, 3))) <= tol
