"""kernels/cls_head.py (op a, cls path) against a float64 composition of the reference functions: the model's cls
conv block on [upscaled + pooled features (kernels/reference.py), seg map] (5x5 conv, zero padding), + bias map,
ReLU, max/mean pools. The kernel gets the features' tap products z = l @ V (the folded GEMM, done here in float64).
Interpreter on CPU at a few tiles; the same on CUDA, and real preset shapes with -m gpu."""

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

from kernels import cls_head
from kernels import reference
from kernels.common import KernelInputError

pytestmark = needs_kernels
TAPS = 5
SHAPES = {"square": (4, 4, 2, 2), "non-square": (4, 6, 2, 3), "odd": (5, 3, 3, 2)}  # (h2, w2, h3, w3)
CASES = [(1, "non-square", True), (2, "odd", False), (3, "square", False)]  # 2, 4 and 3 tiles: the interpreter is slow


def make(batch: int, shape, align_corners: bool, c2: int = 3, c3: int = 5, hidden: int = 64, seed: int = 0):
    """(float64 op arguments, features l2 and l3, the conv weight [hidden, c2 + c3 + 1, 5, 5])."""
    g = torch.Generator().manual_seed(seed)
    h2, w2, h3, w3 = shape
    fh, fw = 2 * h2, 2 * w2
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    l2, l3, seg_map = rand(batch, c2, h2, w2), rand(batch, c3, h3, w3), rand(batch, 1, fh, fw)
    weight = rand(hidden, c2 + c3 + 1, TAPS, TAPS) / 4
    taps = weight[:, :-1].permute(3, 2, 0, 1).reshape(TAPS * TAPS * hidden, c2 + c3).T  # [C, (dx, dy, o)]
    z2, z3 = l2.permute(0, 2, 3, 1) @ taps[:c2], l3.permute(0, 2, 3, 1) @ taps[c2:]  # [B, h, w, 25 * hidden]
    ops = [reference.resize_pool_matrix_f64(n_in, n_out, align_corners) for n_in, n_out in
           ((h2, fh), (h3, fh), (w2, fw), (w3, fw))]  # fmt: skip
    args = [z2, z3, *ops, seg_map, weight[:, -1:].contiguous(), rand(fh, fw, hidden)]
    return args, (l2, l3), weight


def truth(args, features, weight, align_corners: bool) -> torch.Tensor:
    seg_map, bias_map = args[6], args[8]
    pooled = reference.upscale_pool_reference(*features, align_corners)  # [B, C, fh, fw]
    x = F.relu(F.conv2d(torch.cat([pooled, seg_map], dim=1), weight, padding=TAPS // 2) + bias_map.permute(2, 0, 1))
    stats = [x.amax(dim=(2, 3)), x.mean(dim=(2, 3)), seg_map.amax(dim=(2, 3)), seg_map.mean(dim=(2, 3))]
    return torch.cat(stats, dim=1)  # [B, 2 * hidden + 2]


@pytest.mark.parametrize("batch,shape,align_corners", CASES, ids=lambda v: str(v))
def test_fp32_equals_float64_reference(batch, shape, align_corners):
    """fp32: <= 1e-5 relative to the float64 reference (measured ~3e-7)."""
    args, features, weight = make(batch, SHAPES[shape], align_corners)
    expected = truth(args, features, weight, align_corners)
    got = cls_head.cls_head_triton(*on(torch.float32, args))
    assert got.shape == (batch, 130) and got.dtype == torch.float32
    assert rel_err(got, expected) <= 1e-5


def test_fp16():
    """fp16 inputs, fp32 accumulation: measured 3e-4 relative (the inputs' own rounding)."""
    args, features, weight = make(1, SHAPES["square"], True)
    assert rel_err(cls_head.cls_head_triton(*on(torch.float16, args)), truth(args, features, weight, True)) <= 3e-3


def test_batch_independence():
    """Images never mix (one program per tile of one image; atomics only order the sums: 1e-6)."""
    args = on(torch.float32, make(2, SHAPES["square"], False)[0])
    whole = cls_head.cls_head_triton(*args)
    for i in range(2):
        one = cls_head.cls_head_triton(
            args[0][i : i + 1], args[1][i : i + 1], *args[2:6], args[6][i : i + 1], *args[7:]
        )
        torch.testing.assert_close(whole[i : i + 1], one, rtol=1e-6, atol=1e-6)


def test_operator_wider_than_the_window_gives_nan_not_a_wrong_number():
    """A dense row operator [24, 12] reads outside a tile's window (8 of the 12 rows): NaN, never a wrong number."""
    args, _, _ = make(1, (12, 2, 6, 1), True)
    args[2] = torch.rand_like(args[2]) + 0.1
    assert torch.isfinite(cls_head.cls_head_torch(*args)).all()
    assert torch.isnan(cls_head.cls_head_triton(*on(torch.float32, args))[:, :128]).all()


def test_channels_not_a_multiple_of_the_block_take_the_plain_form():
    args = on(torch.float32, make(1, SHAPES["square"], True, hidden=16)[0])
    torch.testing.assert_close(cls_head.cls_head_triton(*args), cls_head.cls_head_torch(*args))


def test_bad_input_is_named():
    args = on(torch.float32, make(1, SHAPES["square"], True)[0])
    with pytest.raises(KernelInputError, match="map_w has .*square, odd"):
        cls_head.cls_head_triton(*args[:7], torch.zeros(64, 1, 4, 4, device=DEVICE), args[8])
    with pytest.raises(KernelInputError, match="bias_map must be contiguous"):
        cls_head.cls_head_triton(*args[:8], args[8].transpose(0, 1).contiguous().transpose(0, 1))
    with pytest.raises(KernelInputError, match="seg_map is torch.float16, expected torch.float32"):
        cls_head.cls_head_triton(*args[:6], args[6].half(), *args[7:])
    with pytest.raises(KernelInputError, match=r"z2 has shape \[1, 4, 4, 1600\], expected \[\*, \*, \*, 3200\]"):
        cls_head.cls_head_triton(*args[:7], torch.zeros(128, 1, 5, 5, device=DEVICE), torch.zeros(8, 8, 128))
    with pytest.raises(KernelInputError, match=r"seg_map has shape \[1, 1, 8, 7\], expected \[1, 1, 8, 8\]"):
        cls_head.cls_head_triton(*args[:6], args[6][..., :7], *args[7:])


def test_registered_op_runs_the_plain_form_on_cpu():
    args, features, weight = make(2, SHAPES["odd"], False)
    torch.testing.assert_close(torch.ops.ssn.cls_head(*args), truth(args, features, weight, False))
    small = make(1, SHAPES["square"], True, c2=1, c3=1)[0]
    torch.library.opcheck(torch.ops.ssn.cls_head, tuple(on(torch.float32, small, "cpu")))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("preset", sorted(PRESET_SHAPES))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
def test_real_shapes_on_the_gpu(preset, dtype, tol):
    """128 output channels at WRN50 sizes, batch 8, through the registered op (autotuned); 16 feature channels
    keep the float64 reference cheap (the kernel never sees them: it reads the 25 x 128 tap products)."""
    args, features, weight = make(8, PRESET_SHAPES[preset], preset == "mvtec", c2=8, c3=8, hidden=128)
    got = torch.ops.ssn.cls_head(*on(dtype, args, "cuda"))
    assert got.is_cuda and rel_err(got, truth(args, features, weight, preset == "mvtec")) <= tol
