"""kernels/seg_head.py (op a, seg path) against a float64 composition of the reference functions: upscale + pool
(kernels/reference.py, F.interpolate + avg_pool2d), bias, LeakyReLU, the 1x1 conv. Interpreter on CPU at a few
tiles; the same on CUDA, and real preset shapes with -m gpu."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import DEVICE
from kernel_helpers import PRESET_SHAPES
from kernel_helpers import needs_cuda
from kernel_helpers import needs_kernels
from kernel_helpers import on
from kernel_helpers import rel_err

from kernels import common
from kernels import reference
from kernels import seg_head
from kernels.common import KernelInputError

pytestmark = needs_kernels
SLOPE = 0.2
# (h2, w2, h3, w3): square; non-square; odd (layer3 not half of layer2, as KSDD2's 80x29 -> 40x15)
SHAPES = {"square": (4, 4, 2, 2), "non-square": (4, 6, 2, 3), "odd": (5, 3, 3, 2)}
CASES = [(1, "square", True), (2, "odd", False), (3, "non-square", True), (2, "square", False), (1, "odd", True)]


def make(batch: int, shape, align_corners: bool, n: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """float64 op arguments: products z2, z3 [B, h, w, n], the resize + pool operators, bias, w_out."""
    g = torch.Generator().manual_seed(seed)
    h2, w2, h3, w3 = shape
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    ops = [reference.resize_pool_matrix_f64(n_in, n_out, align_corners) for n_in, n_out in
           ((h2, 2 * h2), (h3, 2 * h2), (w2, 2 * w2), (w3, 2 * w2))]  # fmt: skip
    return [rand(batch, h2, w2, n), rand(batch, h3, w3, n), *ops, rand(n), rand(n) / n**0.5]


def truth(args: list[torch.Tensor], align_corners: bool) -> torch.Tensor:
    # the model's seg head on the two layers' products: both resized to 2x layer2 and pooled by the reference,
    # summed (they are one GEMM's halves), + bias, LeakyReLU, Conv2d(n, 1, 1)
    z2, z3, *_, bias, w_out = args
    n = z2.shape[-1]
    pooled = reference.upscale_pool_reference(z2.permute(0, 3, 1, 2), z3.permute(0, 3, 1, 2), align_corners)
    hidden = F.leaky_relu(pooled[:, :n] + pooled[:, n:] + bias[:, None, None], SLOPE)
    return F.conv2d(hidden, w_out.view(1, n, 1, 1))  # [B, 1, fh, fw]


@pytest.mark.parametrize("batch,shape,align_corners", CASES, ids=lambda v: str(v))
def test_fp32_equals_float64_reference(batch, shape, align_corners):
    """fp32 (exact fp32 dots): <= 1e-5 relative to the float64 reference (measured ~2e-7)."""
    args = make(batch, SHAPES[shape], align_corners)
    expected = truth(args, align_corners)
    got = seg_head.seg_head_triton(*on(torch.float32, args), SLOPE)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert rel_err(got, expected) <= 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 3e-2)], ids=["fp16", "bf16"])
def test_half_precision(dtype, tol):
    """fp16 / bf16 inputs, fp32 accumulation: measured 7e-4 / 9e-3 relative (the inputs' own rounding)."""
    args = make(2, SHAPES["odd"], False)
    got = seg_head.seg_head_triton(*on(dtype, args), SLOPE)
    assert got.dtype == dtype and rel_err(got, truth(args, False)) <= tol


def test_constant_products_show_the_pool_border():
    """Constant products: interior = LeakyReLU(a + c + bias) . w; edges and corners see the zero-padded pool's
    6/9 and 4/9 (count_include_pad)."""
    args = make(1, SHAPES["square"], True, n=16)
    a, c = torch.linspace(-1, 1, 16, dtype=torch.float64), torch.linspace(2, -0.5, 16, dtype=torch.float64)
    args[0], args[1] = a.expand_as(args[0]).clone(), c.expand_as(args[1]).clone()
    bias, w_out = args[6], args[7]
    got = seg_head.seg_head_triton(*on(torch.float32, args), SLOPE).double().cpu()[0, 0]
    for (y, x), factor in (((3, 3), 1.0), ((0, 3), 6 / 9), ((3, 0), 6 / 9), ((0, 0), 4 / 9), ((7, 7), 4 / 9)):
        expected = F.leaky_relu(factor * (a + c) + bias, SLOPE) @ w_out
        torch.testing.assert_close(got[y, x], expected, rtol=1e-5, atol=1e-6)


def test_batch_independence_is_exact():
    args = on(torch.float32, make(3, SHAPES["odd"], False))
    whole = seg_head.seg_head_triton(*args, SLOPE)
    parts = [seg_head.seg_head_triton(args[0][i : i + 1], args[1][i : i + 1], *args[2:], SLOPE) for i in range(3)]
    assert torch.equal(whole, torch.cat(parts))


def test_operator_wider_than_the_window_gives_nan_not_a_wrong_number():
    """A row operator that is not a resize + pool band (dense) reads outside the window of a tile (6 of the 16
    rows here): the kernel writes NaN there."""
    args = make(1, (16, 4, 8, 2), True)
    args[2] = torch.rand_like(args[2]) + 0.1  # dense [fh, h2]
    assert torch.isfinite(seg_head.seg_head_torch(*args, SLOPE)).all()
    assert torch.isnan(seg_head.seg_head_triton(*on(torch.float32, args), SLOPE)).all()


def test_windows_beyond_the_limit_take_the_plain_form(monkeypatch):
    args = on(torch.float32, make(1, SHAPES["square"], True))
    monkeypatch.setattr(seg_head, "MAX_WINDOW", 8)
    torch.testing.assert_close(seg_head.seg_head_triton(*args, SLOPE), seg_head.seg_head_torch(*args, SLOPE))


def test_bad_input_is_named():
    args = on(torch.float32, make(1, SHAPES["square"], True))
    with pytest.raises(KernelInputError, match="dtype torch.float64 is not supported"):
        seg_head.seg_head_triton(*make(1, SHAPES["square"], True), SLOPE)
    with pytest.raises(KernelInputError, match=r"bias is torch.float16, expected torch.float32"):
        seg_head.seg_head_triton(*args[:6], args[6].half(), args[7], SLOPE)
    with pytest.raises(KernelInputError, match=r"rows3 has shape \[8, 2\], expected \[8, 3\]"):
        seg_head.seg_head_triton(args[0], torch.zeros(1, 3, 2, 64, device=DEVICE), *args[2:], SLOPE)
    with pytest.raises(KernelInputError, match="z2 .* needs a unit stride in its last dimension"):
        seg_head.seg_head_triton(args[0].transpose(1, 3).contiguous().transpose(1, 3), *args[1:], SLOPE)
    with pytest.raises(KernelInputError, match=r"w_out has shape \[32\], expected \[64\]"):
        seg_head.seg_head_triton(*args[:7], args[7][:32], SLOPE)
    with pytest.raises(KernelInputError, match="CUDA .* or CPU .* tensors, got meta"):
        seg_head.seg_head_triton(*[a.to("meta") for a in args], SLOPE)


def test_cpu_tensors_outside_the_interpreter_take_the_plain_form(monkeypatch):
    args = on(torch.float32, make(1, SHAPES["odd"], True), "cpu")
    monkeypatch.setattr(common, "INTERPRET", False)
    assert torch.equal(seg_head.seg_head_triton(*args, SLOPE), seg_head.seg_head_torch(*args, SLOPE))


def test_registered_op_runs_the_plain_form_on_cpu():
    """torch.ops.ssn.seg_head: the plain-PyTorch form on CPU tensors (float64 too); schema and fake tensors pass
    torch.library.opcheck (the fake implementation is the launcher itself, shape logic only)."""
    args = make(2, SHAPES["odd"], True)
    torch.testing.assert_close(torch.ops.ssn.seg_head(*args, SLOPE), truth(args, True), rtol=1e-10, atol=1e-10)
    torch.library.opcheck(torch.ops.ssn.seg_head, (*on(torch.float32, args, "cpu"), SLOPE))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("preset", sorted(PRESET_SHAPES))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
def test_real_shapes_on_the_gpu(preset, dtype, tol):
    """WRN50 sizes (1024 hidden channels) at batch 8, through the registered op (autotuned)."""
    args = make(8, PRESET_SHAPES[preset], preset == "mvtec", n=1024)
    got = torch.ops.ssn.seg_head(*on(dtype, args, "cuda"), SLOPE)
    assert got.is_cuda and rel_err(got, truth(args, preset == "mvtec")) <= tol
