"""Op (a), cls path: the folded cls head's epilogue in one kernel (kernels.md §7), up to the pooled vector.

    z2 [B, h2, w2, T*T*O] = l2 @ V2,  z3 [B, h3, w3, T*T*O] = l3 @ V3   (GEMMs at native resolution, outside;
                                       channels ordered (dx, dy, o): the 5x5 conv's taps x its O = 128 outputs)
    feat[b, y, x, o] = sum_{dy,dx} sum_ij R[y+dy-2, i] C[x+dx-2, j] z[b, i, j, dx, dy, o]  (both layers; R, C rows
                       outside the map are the conv's zero padding)
                     + sum_{dy,dx} map_w[o, dy, dx] seg[b, y+dy-2, x+dx-2]      (the seg-map channel, 5x5 stencil)
                     + bias[y, x, o]                                             (conv bias, BN, border terms)
    x = ReLU(feat);  pooled[b] = [max_yx x, mean_yx x, max seg, mean seg]                              [B, 2*O + 2]

R2/R3 [fh, h], C2/C3 [fw, w] are the same resize + 3x3-pool operators as the seg head's (unshifted: the kernel
shifts by the tap). One program owns an 8x8 output tile and a block of channels of one image; for each of the 25
taps it builds the tile's resampling weights (K [64, window]) and adds K @ z_window on tensor cores; then ReLU
and the tile's max and sum go to `pooled` through atomics (ReLU outputs are >= 0, so zeros start the max). Only
[B, 258] float32 leaves the kernel; the Linear(258, 1) stays in PyTorch. Registered as `ssn::cls_head`.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op
from torch.library import wrap_triton

from kernels.common import MAX_WINDOW
from kernels.common import KernelInputError
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

TILE = (8, 8)  # output pixels per program (rows, cols)
# BO: output channels per program (the dot's N); every one is compiled in CI (kernels/aot.py)
CONFIGS = [  # fp16 / bf16: tensor cores (the first fitting one is what the interpreter runs: fewest programs)
    triton.Config({"BO": 128}, num_warps=8, num_stages=1),
    triton.Config({"BO": 64}, num_warps=4, num_stages=2),
    triton.Config({"BO": 64}, num_warps=8, num_stages=2),
]
FP32_CONFIGS = [triton.Config({"BO": 32}, num_warps=8, num_stages=1)]  # exact fp32 dots on CUDA cores
CHANNEL_BLOCK = 64  # the smallest tensor-core BO: channel counts that are not a multiple take the plain form


# fmt: off
@triton.autotune(
    configs=CONFIGS + FP32_CONFIGS,
    key=["h2", "w2", "h3", "w3", "fh", "fw", "HIDDEN", "CAST_F32"],
    prune_configs_by=pruned(lambda config, args: args["HIDDEN"] % config["BO"] == 0, FP32_CONFIGS),
    restore_value=["pooled_ptr"],  # timing a config runs the atomics: put the starting values back
)
@triton.jit
def cls_head_kernel(
    z2_ptr, z2_sb, z2_sh, z2_sw,  # [B, h2, w2, TAPS*TAPS*HIDDEN] layer-2 tap products, unit channel stride
    z3_ptr, z3_sb, z3_sh, z3_sw,  # [B, h3, w3, TAPS*TAPS*HIDDEN] layer-3 tap products
    r2_ptr, r2_s, r3_ptr, r3_s,  # row operators [fh, h2], [fh, h3], unit column stride
    c2_ptr, c2_s, c3_ptr, c3_s,  # column operators [fw, w2], [fw, w3]
    seg_ptr, seg_sb, seg_sy, seg_sx,  # [B, 1, fh, fw] seg logits
    mapw_ptr,  # [HIDDEN, TAPS*TAPS] stencil weights of the seg-map channel (o, dy, dx), contiguous
    bias_ptr,  # [fh, fw, HIDDEN] folded bias map, contiguous
    pooled_ptr,  # [B, 2*HIDDEN + 2] float32: zeros, -inf in column 2*HIDDEN
    h2, w2, h3, w3, fh, fw, inv_count,
    HIDDEN: tl.constexpr, TAPS: tl.constexpr, TY: tl.constexpr, TX: tl.constexpr,
    WH2: tl.constexpr, WW2: tl.constexpr, WHP2: tl.constexpr, WWP2: tl.constexpr,  # layer-2 window (with halo)
    WH3: tl.constexpr, WW3: tl.constexpr, WHP3: tl.constexpr, WWP3: tl.constexpr,  # layer-3 window
    BH2: tl.constexpr, BW2: tl.constexpr, BH3: tl.constexpr, BW3: tl.constexpr,  # powers of two >= h2, w2, h3, w3
    CAST_F32: tl.constexpr, BO: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    y0, x0, ys, xs = tile_origin(tl.program_id(0), fw, TY, TX)  # ys, xs: [P] output pixels
    valid = (ys < fh) & (xs < fw)
    o = tl.program_id(2) * BO + tl.arange(0, BO)  # [BO] output channels
    half: tl.constexpr = TAPS // 2
    z2_ptr, row2, q2_ok, i2, j2, ok2 = layer_window(z2_ptr, z2_sb, z2_sh, z2_sw, b, r2_ptr, r2_s, c2_ptr, c2_s, y0, x0,
                                                    fh, fw, h2, w2, TY, TX, half, WH2, WW2, WHP2, WWP2, BH2, BW2)
    z3_ptr, row3, q3_ok, i3, j3, ok3 = layer_window(z3_ptr, z3_sb, z3_sh, z3_sw, b, r3_ptr, r3_s, c3_ptr, c3_s, y0, x0,
                                                    fh, fw, h3, w3, TY, TX, half, WH3, WW3, WHP3, WWP3, BH3, BW3)
    # fmt: on
    seg_base = seg_ptr + b * seg_sb

    acc = tl.zeros([TY * TX, BO], dtype=tl.float32)
    for t in range(TAPS * TAPS):
        dy = t // TAPS
        dx = t % TAPS
        yt = y0 + dy - half  # the tile's feature rows and columns for this tap; outside the map: zero padding
        xt = x0 + dx - half
        ch = (dx * TAPS + dy) * HIDDEN + o  # [BO] this tap's channels in z
        k2 = kron_tile(r2_ptr, r2_s, c2_ptr, c2_s, yt, xt, i2, j2, fh, fw, h2, w2, TY, TX, WH2, WW2, WHP2, WWP2)
        z2 = tl.load(z2_ptr + row2[:, None] + ch[None, :], mask=q2_ok[:, None], other=0.0)  # [Q2, BO]
        acc = mma(k2, z2, acc, CAST_F32)
        k3 = kron_tile(r3_ptr, r3_s, c3_ptr, c3_s, yt, xt, i3, j3, fh, fw, h3, w3, TY, TX, WH3, WW3, WHP3, WWP3)
        z3 = tl.load(z3_ptr + row3[:, None] + ch[None, :], mask=q3_ok[:, None], other=0.0)
        acc = mma(k3, z3, acc, CAST_F32)
        ys_t = ys + dy - half  # the seg-map channel: a 5x5 stencil, [P] x [BO] outer products
        xs_t = xs + dx - half
        s_ok = (ys_t >= 0) & (ys_t < fh) & (xs_t >= 0) & (xs_t < fw)
        s = tl.load(seg_base + ys_t * seg_sy + xs_t * seg_sx, mask=s_ok, other=0.0).to(tl.float32)  # [P]
        w = tl.load(mapw_ptr + o * (TAPS * TAPS) + t).to(tl.float32)  # [BO]
        acc += s[:, None] * w[None, :]

    bias = tl.load(bias_ptr + (ys * fw + xs)[:, None] * HIDDEN + o[None, :], mask=valid[:, None], other=0.0)
    x = tl.maximum(acc + bias.to(tl.float32), 0.0)
    x = tl.where(valid[:, None], x, 0.0)  # pixels outside the map: 0, neutral for the max (x >= 0) and the sum
    x = tl.where(ok2 & ok3, x, float("nan"))  # an operator wider than the window: NaN, never a wrong number
    out = pooled_ptr + b * (2 * HIDDEN + 2)
    tl.atomic_max(out + o, tl.max(x, axis=0))
    tl.atomic_add(out + HIDDEN + o, tl.sum(x, axis=0) * inv_count)
    if tl.program_id(2) == 0:  # the seg map's own max and mean, once per tile
        s = tl.load(seg_base + ys * seg_sy + xs * seg_sx, mask=valid, other=0.0).to(tl.float32)
        tl.atomic_max(out + 2 * HIDDEN, tl.max(tl.where(valid, s, float("-inf")), axis=0))
        tl.atomic_add(out + 2 * HIDDEN + 1, tl.sum(s, axis=0) * inv_count)


def _shifted(op: torch.Tensor, taps: int) -> torch.Tensor:
    # op [n_out, n_in] -> [taps, n_out, n_in]: row y of tap d is op[y + d - taps//2], zero outside (zero padding)
    half, n_out = taps // 2, op.shape[0]
    padded = F.pad(op, (0, 0, half, half))
    return torch.stack([padded[d : d + n_out] for d in range(taps)])


def cls_head_torch(z2, z3, rows2, rows3, cols2, cols3, seg_map, map_w, bias_map) -> torch.Tensor:
    """The plain-PyTorch form (the op's CPU implementation; pipeline/folded.py's cls path after its GEMMs, step for
    step, so bench/kernels.py times the eager chain the kernel replaces): same arguments, pooled [B, 2*O + 2]
    float32 (float64 for float64 inputs, which only this form takes)."""
    hidden, taps = map_w.shape[0], map_w.shape[-1]
    batch, fh, fw = z2.shape[0], rows2.shape[0], cols2.shape[0]

    def layer(z, cols):  # z [B, h, w, (dx, dy, o)] -> [B, dy, h, fw, o]: width resize + pool + dx shift, summed
        h, w = z.shape[1:3]
        shift_cols = _shifted(cols, taps).permute(1, 2, 0).reshape(fw, w * taps)  # [fw, (w, dx)]
        t = shift_cols @ z.reshape(batch, h, w * taps, taps * hidden)  # [B, h, fw, (dy, o)]
        return t.unflatten(3, (taps, hidden)).permute(0, 3, 1, 2, 4)

    stacked = torch.cat([layer(z2, cols2), layer(z3, cols3)], dim=2)  # [B, dy, h2 + h3, fw, o]
    rows = torch.cat([_shifted(rows2, taps), _shifted(rows3, taps)], dim=2)  # [dy, fh, h2 + h3]
    rows = rows.permute(1, 0, 2).reshape(fh, -1)  # [fh, (dy, h)]
    feat = (rows @ stacked.flatten(3).flatten(1, 2)).unflatten(2, (fw, hidden))  # [B, fh, fw, o]
    stencil = F.conv2d(seg_map, map_w, padding=taps // 2).permute(0, 2, 3, 1)  # [B, fh, fw, o]
    x = F.relu(feat + stencil + bias_map)
    stats = [x.amax(dim=(1, 2)), x.mean(dim=(1, 2)), seg_map.amax(dim=(2, 3)), seg_map.mean(dim=(2, 3))]
    return torch.cat([s.to(torch.promote_types(s.dtype, torch.float32)) for s in stats], dim=1)


def check_inputs(z2, z3, rows2, rows3, cols2, cols3, seg_map, map_w, bias_map, for_kernel: bool = True) -> None:
    """A KernelInputError naming the first tensor that does not fit (shapes, dtypes, layout)."""
    tensors = dict(z2=z2, z3=z3, rows2=rows2, rows3=rows3, cols2=cols2, cols3=cols3, map_w=map_w, bias_map=bias_map)
    check_floats(z2.dtype, for_kernel, **tensors)
    if seg_map.dtype != z2.dtype:  # any strides
        raise KernelInputError(f"seg_map is {seg_map.dtype}, expected {z2.dtype} like the other inputs; cast it")
    check_shape("map_w", map_w, (None, 1, None, None))
    hidden, taps = map_w.shape[0], map_w.shape[-1]
    if map_w.shape[-2] != taps or taps % 2 == 0:
        raise KernelInputError(f"map_w has {list(map_w.shape[-2:])} taps; the conv needs a square, odd size")
    check_shape("z2", z2, (None, None, None, taps * taps * hidden))
    batch, h2, w2 = z2.shape[:3]
    check_shape("z3", z3, (batch, None, None, taps * taps * hidden))
    h3, w3 = z3.shape[1:3]
    check_shape("rows2", rows2, (None, h2))
    fh = rows2.shape[0]
    check_shape("rows3", rows3, (fh, h3))
    check_shape("cols2", cols2, (None, w2))
    fw = cols2.shape[0]
    check_shape("cols3", cols3, (fw, w3))
    check_shape("seg_map", seg_map, (batch, 1, fh, fw))
    check_shape("bias_map", bias_map, (fh, fw, hidden))
    for name, t in (("map_w", map_w), ("bias_map", bias_map)):
        if for_kernel and not t.is_contiguous():
            raise KernelInputError(f"{name} must be contiguous (strides {list(t.stride())}); pass .contiguous()")


def cls_head_triton(
    z2: torch.Tensor,
    z3: torch.Tensor,
    rows2: torch.Tensor,
    rows3: torch.Tensor,
    cols2: torch.Tensor,
    cols3: torch.Tensor,
    seg_map: torch.Tensor,
    map_w: torch.Tensor,
    bias_map: torch.Tensor,
) -> torch.Tensor:
    """pooled [B, 2*O + 2] float32 (shapes in the module docstring).

    The Triton kernel on CUDA tensors (and on CPU tensors under TRITON_INTERPRET=1). The plain-PyTorch form
    instead: other CPU tensors, channel counts that are not a multiple of 64, windows wider than MAX_WINDOW.
    Bad input raises KernelInputError naming the tensor.
    """
    plain = plain_on_cpu(z2)
    check_inputs(z2, z3, rows2, rows3, cols2, cols3, seg_map, map_w, bias_map, for_kernel=not plain)
    tensors = dict(z2=z2, z3=z3, rows2=rows2, rows3=rows3, cols2=cols2, cols3=cols3, seg_map=seg_map)
    check_device(**tensors, map_w=map_w, bias_map=bias_map)
    if plain:
        return cls_head_torch(z2, z3, rows2, rows3, cols2, cols3, seg_map, map_w, bias_map)
    hidden, taps = map_w.shape[0], map_w.shape[-1]
    batch, h2, w2 = z2.shape[:3]
    h3, w3 = z3.shape[1:3]
    fh, fw = bias_map.shape[:2]
    constexprs = layer_constexprs([(h2, w2), (h3, w3)], fh, fw, TILE, taps // 2)
    if window_size(constexprs) > MAX_WINDOW or hidden % CHANNEL_BLOCK:
        return cls_head_torch(z2, z3, rows2, rows3, cols2, cols3, seg_map, map_w, bias_map)
    pooled = torch.zeros(batch, 2 * hidden + 2, dtype=torch.float32, device=z2.device)
    pooled[:, 2 * hidden] = float("-inf")
    if batch == 0:
        return pooled

    def grid(meta):
        return (triton.cdiv(fh, TILE[0]) * triton.cdiv(fw, TILE[1]), batch, hidden // meta["BO"])

    wrap_triton(cls_head_kernel)[grid](
        z2, *z2.stride()[:3], z3, *z3.stride()[:3],
        rows2, rows2.stride(0), rows3, rows3.stride(0), cols2, cols2.stride(0), cols3, cols3.stride(0),
        seg_map, seg_map.stride(0), seg_map.stride(2), seg_map.stride(3), map_w, bias_map, pooled,
        h2, w2, h3, w3, fh, fw, 1.0 / (fh * fw), HIDDEN=hidden, TAPS=taps, **constexprs, CAST_F32=cast_f32(z2.dtype),
    )  # fmt: skip
    return pooled


cls_head = triton_op("ssn::cls_head", cls_head_triton, mutates_args=())  # torch.ops.ssn.cls_head


@cls_head.register_kernel("cpu")
def _cls_head_cpu(z2, z3, rows2, rows3, cols2, cols3, seg_map, map_w, bias_map):
    check_inputs(z2, z3, rows2, rows3, cols2, cols3, seg_map, map_w, bias_map, for_kernel=False)
    return cls_head_torch(z2, z3, rows2, rows3, cols2, cols3, seg_map, map_w, bias_map)
