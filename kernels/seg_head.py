"""Op (a), seg path: the folded seg head's epilogue in one kernel (kernels.md §6 F3 + seg folding).

    z2 [B, h2, w2, N] = l2 @ W_seg2,  z3 [B, h3, w3, N] = l3 @ W_seg3   (the GEMMs at native resolution, outside)
    hidden[b, y, x, :] = sum_ij R2[y, i] C2[x, j] z2[b, i, j, :] + (same for layer 3) + bias      [B, fh, fw, N]
    seg[b, 0, y, x]    = LeakyReLU(hidden[b, y, x, :], slope) . w_out                             [B, 1, fh, fw]

R2/R3 [fh, h] and C2/C3 [fw, w] are the folded graph's resize + 3x3-pool operators (banded, kernels/common.py).
One program owns an 8x8 tile of output pixels of one image: it builds the tile's 2-D resampling weights once
(K [64, window], per layer), then walks the N hidden channels in blocks: acc = K2 @ z2_window + K3 @ z3_window on
tensor cores, + bias, LeakyReLU, and the dot with w_out, so the [B, fh, fw, N] hidden tensor never reaches memory.
Registered as `ssn::seg_head` (torch.library.triton_op): Triton on CUDA, the plain-PyTorch form on CPU.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op
from torch.library import wrap_triton

from kernels.common import MAX_WINDOW
from kernels.common import cast_f32
from kernels.common import check_device
from kernels.common import check_floats
from kernels.common import check_shape
from kernels.common import kron_tile
from kernels.common import layer_constexprs
from kernels.common import layer_window
from kernels.common import mma
from kernels.common import plain_on_cpu
from kernels.common import pruned
from kernels.common import tile_origin
from kernels.common import window_size

TILE = (8, 8)  # output pixels per program (rows, cols): K has 64 rows, the dot's M
# the hidden-channel block (the dot's N) and the launch shape; every one is compiled in CI (kernels/aot.py)
CONFIGS = [  # fp16 / bf16: tensor cores
    triton.Config({"BN": 64}, num_warps=4, num_stages=2),
    triton.Config({"BN": 128}, num_warps=4, num_stages=2),
    triton.Config({"BN": 128}, num_warps=8, num_stages=3),
]
FP32_CONFIGS = [triton.Config({"BN": 32}, num_warps=4, num_stages=1)]  # exact fp32 dots on CUDA cores


# fmt: off
@triton.autotune(
    configs=CONFIGS + FP32_CONFIGS,
    key=["n_hidden", "h2", "w2", "h3", "w3", "fh", "fw", "CAST_F32"],
    prune_configs_by=pruned(lambda config, args: config["BN"] <= max(64, args["n_hidden"]), FP32_CONFIGS),
)
@triton.jit
def seg_head_kernel(
    z2_ptr, z2_sb, z2_sh, z2_sw,  # [B, h2, w2, n_hidden] layer-2 products, unit channel stride
    z3_ptr, z3_sb, z3_sh, z3_sw,  # [B, h3, w3, n_hidden] layer-3 products, unit channel stride
    r2_ptr, r2_s, r3_ptr, r3_s,  # row operators [fh, h2], [fh, h3], unit column stride
    c2_ptr, c2_s, c3_ptr, c3_s,  # column operators [fw, w2], [fw, w3], unit column stride
    bias_ptr, w_ptr,  # [n_hidden] folded bias, [n_hidden] weights of the 1024 -> 1 conv
    out_ptr,  # [B, fh, fw] seg logits, contiguous
    h2, w2, h3, w3, fh, fw, n_hidden, slope,
    TY: tl.constexpr, TX: tl.constexpr,  # output tile
    WH2: tl.constexpr, WW2: tl.constexpr, WHP2: tl.constexpr, WWP2: tl.constexpr,  # layer-2 window, padded
    WH3: tl.constexpr, WW3: tl.constexpr, WHP3: tl.constexpr, WWP3: tl.constexpr,  # layer-3 window
    BH2: tl.constexpr, BW2: tl.constexpr, BH3: tl.constexpr, BW3: tl.constexpr,  # powers of two >= h2, w2, h3, w3
    CAST_F32: tl.constexpr, BN: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    y0, x0, ys, xs = tile_origin(tl.program_id(0), fw, TY, TX)  # ys, xs: [P] output pixels
    z2_ptr, row2, q2_ok, i2, j2, ok2 = layer_window(z2_ptr, z2_sb, z2_sh, z2_sw, b, r2_ptr, r2_s, c2_ptr, c2_s, y0, x0,
                                                    fh, fw, h2, w2, TY, TX, 0, WH2, WW2, WHP2, WWP2, BH2, BW2)
    z3_ptr, row3, q3_ok, i3, j3, ok3 = layer_window(z3_ptr, z3_sb, z3_sh, z3_sw, b, r3_ptr, r3_s, c3_ptr, c3_s, y0, x0,
                                                    fh, fw, h3, w3, TY, TX, 0, WH3, WW3, WHP3, WWP3, BH3, BW3)
    k2 = kron_tile(r2_ptr, r2_s, c2_ptr, c2_s, y0, x0, i2, j2, fh, fw, h2, w2, TY, TX, WH2, WW2, WHP2, WWP2)
    k3 = kron_tile(r3_ptr, r3_s, c3_ptr, c3_s, y0, x0, i3, j3, fh, fw, h3, w3, TY, TX, WH3, WW3, WHP3, WWP3)
    if not CAST_F32:  # [P, Q] weights in the products' dtype, for the tensor cores
        k2 = k2.to(z2_ptr.dtype.element_ty)
        k3 = k3.to(z3_ptr.dtype.element_ty)
    # fmt: on

    seg = tl.zeros([TY * TX], dtype=tl.float32)
    for n0 in range(0, n_hidden, BN):
        n = n0 + tl.arange(0, BN)
        n_ok = n < n_hidden
        z2 = tl.load(z2_ptr + row2[:, None] + n[None, :], mask=q2_ok[:, None] & n_ok[None, :], other=0.0)
        z3 = tl.load(z3_ptr + row3[:, None] + n[None, :], mask=q3_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.zeros([TY * TX, BN], dtype=tl.float32)
        acc = mma(k2, z2, acc, CAST_F32)  # [P, BN] resampled layer 2
        acc = mma(k3, z3, acc, CAST_F32)
        hidden = acc + tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        hidden = tl.where(hidden > 0, hidden, hidden * slope)
        seg += tl.sum(hidden * tl.load(w_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :], axis=1)

    seg = tl.where(ok2 & ok3, seg, float("nan"))  # an operator wider than the window: NaN, never a wrong number
    out_ptr += b * fh * fw
    tl.store(out_ptr + ys * fw + xs, seg.to(out_ptr.dtype.element_ty), mask=(ys < fh) & (xs < fw))


def seg_head_torch(z2, z3, rows2, rows3, cols2, cols3, bias, w_out, slope: float) -> torch.Tensor:
    """The plain-PyTorch form (the op's CPU implementation; pipeline/folded.py's seg path after its GEMMs, step for
    step, so bench/kernels.py times the eager chain the kernel replaces): same arguments, same result."""
    batch, fw, n = z2.shape[0], cols2.shape[0], z2.shape[-1]
    ones = torch.ones(rows2.shape[0], 1, dtype=rows2.dtype, device=rows2.device)
    rows = torch.cat([rows2, rows3, ones], dim=1)  # [fh, h2 + h3 + 1]: the bias enters as one more input row
    stacked = torch.cat([cols2 @ z2, cols3 @ z3, bias.expand(batch, 1, fw, n)], dim=1)  # [B, h2 + h3 + 1, fw, N]
    hidden = (rows @ stacked.flatten(2)).unflatten(2, (fw, n))  # [B, fh, fw, N]
    hidden = F.leaky_relu(hidden, slope, inplace=True)
    return (hidden @ w_out).unsqueeze(1)  # [B, 1, fh, fw]


def check_inputs(z2, z3, rows2, rows3, cols2, cols3, bias, w_out, for_kernel: bool = True) -> None:
    """A KernelInputError naming the first tensor that does not fit (shapes, dtypes, layout)."""
    tensors = dict(z2=z2, z3=z3, rows2=rows2, rows3=rows3, cols2=cols2, cols3=cols3, bias=bias, w_out=w_out)
    check_floats(z2.dtype, for_kernel, **tensors)
    check_shape("z2", z2, (None, None, None, None))
    batch, h2, w2, n = z2.shape
    check_shape("z3", z3, (batch, None, None, n))
    h3, w3 = z3.shape[1:3]
    check_shape("rows2", rows2, (None, h2))
    fh = rows2.shape[0]
    check_shape("rows3", rows3, (fh, h3))
    check_shape("cols2", cols2, (None, w2))
    check_shape("cols3", cols3, (cols2.shape[0], w3))
    check_shape("bias", bias, (n,))
    check_shape("w_out", w_out, (n,))


def seg_head_triton(
    z2: torch.Tensor,
    z3: torch.Tensor,
    rows2: torch.Tensor,
    rows3: torch.Tensor,
    cols2: torch.Tensor,
    cols3: torch.Tensor,
    bias: torch.Tensor,
    w_out: torch.Tensor,
    slope: float,
) -> torch.Tensor:
    """seg logits [B, 1, fh, fw] from the native-resolution products (shapes in the module docstring).

    The Triton kernel on CUDA tensors (and on CPU tensors under TRITON_INTERPRET=1). The plain-PyTorch form
    instead: other CPU tensors, and windows wider than MAX_WINDOW (operators that are not 2x-4x upsamplings).
    Bad input raises KernelInputError naming the tensor.
    """
    plain = plain_on_cpu(z2)
    check_inputs(z2, z3, rows2, rows3, cols2, cols3, bias, w_out, for_kernel=not plain)
    check_device(z2=z2, z3=z3, rows2=rows2, rows3=rows3, cols2=cols2, cols3=cols3, bias=bias, w_out=w_out)
    if plain:
        return seg_head_torch(z2, z3, rows2, rows3, cols2, cols3, bias, w_out, slope)
    batch, h2, w2, n = z2.shape
    h3, w3 = z3.shape[1:3]
    fh, fw = rows2.shape[0], cols2.shape[0]
    constexprs = layer_constexprs([(h2, w2), (h3, w3)], fh, fw, TILE, 0)
    if window_size(constexprs) > MAX_WINDOW:
        return seg_head_torch(z2, z3, rows2, rows3, cols2, cols3, bias, w_out, slope)
    out = z2.new_empty(batch, 1, fh, fw)
    if batch == 0:
        return out
    grid = (triton.cdiv(fh, TILE[0]) * triton.cdiv(fw, TILE[1]), batch)
    wrap_triton(seg_head_kernel)[grid](
        z2, *z2.stride()[:3], z3, *z3.stride()[:3],
        rows2, rows2.stride(0), rows3, rows3.stride(0), cols2, cols2.stride(0), cols3, cols3.stride(0),
        bias, w_out, out,
        h2, w2, h3, w3, fh, fw, n, float(slope), **constexprs, CAST_F32=cast_f32(z2.dtype),
    )  # fmt: skip
    return out


seg_head = triton_op("ssn::seg_head", seg_head_triton, mutates_args=())  # torch.ops.ssn.seg_head


@seg_head.register_kernel("cpu")
def _seg_head_cpu(z2, z3, rows2, rows3, cols2, cols3, bias, w_out, slope):
    check_inputs(z2, z3, rows2, rows3, cols2, cols3, bias, w_out, for_kernel=False)
    return seg_head_torch(z2, z3, rows2, rows3, cols2, cols3, bias, w_out, slope)
