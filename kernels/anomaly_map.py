"""Op (b): the anomaly map, upsample + Gaussian blur (+ sigmoid) + the per-image max, in one kernel (kernels.md G).

    map[b, 0] = rows @ seg[b, 0] @ cols      rows [H, fh], cols [fw, W]: bilinear upsample (align_corners=False)
                                             then the 25x25 Gaussian (sigma 4, reflect border), one matrix per axis
                                             (kernels/reference.upsample_blur_matrix_f64: exact at the borders)
    map = sigmoid(map) if asked;  peak[b] = max over the map                    -> map [B, 1, H, W], peak [B] fp32

One program owns a BM x BN tile of one image's map: T = rows[tile rows, :] @ seg [BM, fw] (a loop over fh), then
T @ cols[:, tile cols] on tensor cores, the sigmoid, one store, and the tile's max into `peak` with an atomic max.
The op is bound by writing the map and by launch latency (kernels.md §6), so one launch replaces the eager
chain's four (two matmuls, sigmoid, amax) and its intermediate maps. Registered as `ssn::anomaly_map`; also
`upsample_blur`, the whole op from a config's sizes (the ensemble's postprocess step uses it on GPU tensors).
"""

import functools

import torch
import triton
import triton.language as tl
from torch.library import triton_op
from torch.library import wrap_triton

from kernels import reference
from kernels.common import cast_f32
from kernels.common import check_device
from kernels.common import check_floats
from kernels.common import check_shape
from kernels.common import next_pow2
from kernels.common import plain_on_cpu
from kernels.common import pruned

MAX_FW = 256  # widest seg map (columns) the kernel keeps in registers; wider -> the plain-PyTorch form
BK = 32  # seg-map rows per step of the first product
# output tile (BM rows x BN columns); every one is compiled in CI (kernels/aot.py)
CONFIGS = [  # fp16 / bf16: tensor cores
    triton.Config({"BM": 64, "BN": 64}, num_warps=4, num_stages=2),
    triton.Config({"BM": 32, "BN": 128}, num_warps=4, num_stages=2),
    triton.Config({"BM": 64, "BN": 128}, num_warps=8, num_stages=2),
]
FP32_CONFIGS = [triton.Config({"BM": 32, "BN": 64}, num_warps=8, num_stages=1)]  # exact fp32 dots on CUDA cores


# fmt: off
@triton.autotune(
    configs=CONFIGS + FP32_CONFIGS,
    key=["H", "W", "fh", "fw", "SIGMOID", "CAST_F32"],
    prune_configs_by=pruned(lambda config, args: config["BN"] <= max(64, next_pow2(args["W"])), FP32_CONFIGS),
)
@triton.jit
def anomaly_map_kernel(
    seg_ptr, seg_sb, seg_sy, seg_sx,  # [B, 1, fh, fw] seg logits, any strides
    rows_ptr, rows_s,  # [H, fh] upsample + blur along y, unit column stride
    cols_ptr, cols_s,  # [fw, W] upsample + blur along x (transposed), unit column stride
    out_ptr,  # [B, 1, H, W] the map, contiguous
    peak_ptr,  # [B] float32, -inf: the per-image max
    H, W, fh, fw,
    FW: tl.constexpr,  # power of two >= fw (and >= 16): the seg map's columns in registers
    BK: tl.constexpr, SIGMOID: tl.constexpr, CAST_F32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):
    # fmt: on
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    r = pid_m * BM + tl.arange(0, BM)  # [BM] map rows
    c = pid_n * BN + tl.arange(0, BN)  # [BN] map columns
    kx = tl.arange(0, FW)  # seg-map columns
    r_ok = r < H
    c_ok = c < W
    dtype = out_ptr.dtype.element_ty
    seg_ptr += b * seg_sb  # this image (64-bit); offsets inside it stay 32-bit
    out_ptr += b * H * W

    t = tl.zeros([BM, FW], dtype=tl.float32)  # rows[tile rows] @ seg
    for k0 in range(0, fh, BK):
        ky = k0 + tl.arange(0, BK)
        a = tl.load(rows_ptr + r[:, None] * rows_s + ky[None, :], mask=r_ok[:, None] & (ky < fh)[None, :], other=0.0)
        x = tl.load(
            seg_ptr + ky[:, None] * seg_sy + kx[None, :] * seg_sx,
            mask=(ky < fh)[:, None] & (kx < fw)[None, :],
            other=0.0,
        )  # [BK, FW]
        if CAST_F32:  # noqa: SIM108 (a constexpr branch; both sides are different programs)
            t = tl.dot(a.to(tl.float32), x.to(tl.float32), t, input_precision="ieee")
        else:
            t = tl.dot(a, x, t)
    m = tl.load(cols_ptr + kx[:, None] * cols_s + c[None, :], mask=(kx < fw)[:, None] & c_ok[None, :], other=0.0)
    if CAST_F32:  # noqa: SIM108
        y = tl.dot(t, m.to(tl.float32), input_precision="ieee")  # [BM, BN]
    else:
        y = tl.dot(t.to(dtype), m)  # the intermediate rounded to the model's dtype, as the eager matmul chain does
    if SIGMOID:
        y = tl.sigmoid(y)
    y = y.to(dtype)
    ok = r_ok[:, None] & c_ok[None, :]
    tl.store(out_ptr + r[:, None] * W + c[None, :], y, mask=ok)
    tl.atomic_max(peak_ptr + b, tl.max(tl.max(tl.where(ok, y.to(tl.float32), float("-inf")), axis=1), axis=0))


def anomaly_map_torch(seg, rows, cols, sigmoid: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain-PyTorch form (the op's CPU implementation; pipeline/folded.py's postprocess)."""
    out = rows @ seg @ cols  # [B, 1, H, W]
    if sigmoid:
        out = out.sigmoid()
    return out, out.amax(dim=(1, 2, 3)).float()


def check_inputs(seg, rows, cols, for_kernel: bool = True) -> None:
    """A KernelInputError naming the first tensor that does not fit (shapes, dtypes, layout)."""
    check_floats(seg.dtype, for_kernel, rows=rows, cols=cols)  # seg: any strides
    check_shape("seg", seg, (None, 1, None, None))
    check_shape("rows", rows, (None, seg.shape[2]))
    check_shape("cols", cols, (seg.shape[3], None))


def anomaly_map_triton(
    seg: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, sigmoid: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(map [B, 1, H, W] in seg's dtype, peak [B] float32).

    The Triton kernel on CUDA tensors (and on CPU tensors under TRITON_INTERPRET=1). The plain-PyTorch form
    instead: other CPU tensors, and seg maps wider than MAX_FW columns. Bad input raises KernelInputError naming
    the tensor.
    """
    plain = plain_on_cpu(seg)
    check_inputs(seg, rows, cols, for_kernel=not plain)
    check_device(seg=seg, rows=rows, cols=cols)
    if plain:
        return anomaly_map_torch(seg, rows, cols, sigmoid)
    batch, _, fh, fw = seg.shape
    height, width = rows.shape[0], cols.shape[1]
    if next_pow2(int(fw)) > MAX_FW:
        return anomaly_map_torch(seg, rows, cols, sigmoid)
    out = seg.new_empty(batch, 1, height, width)
    peak = torch.full((batch,), float("-inf"), dtype=torch.float32, device=seg.device)
    if batch == 0:
        return out, peak

    def grid(meta):
        return (triton.cdiv(height, meta["BM"]), triton.cdiv(width, meta["BN"]), batch)

    wrap_triton(anomaly_map_kernel)[grid](
        seg, seg.stride(0), seg.stride(2), seg.stride(3), rows, rows.stride(0), cols, cols.stride(0), out, peak,
        height, width, fh, fw,
        FW=max(16, next_pow2(int(fw))), BK=BK, SIGMOID=bool(sigmoid), CAST_F32=cast_f32(seg.dtype),
    )  # fmt: skip
    return out, peak


anomaly_map = triton_op("ssn::anomaly_map", anomaly_map_triton, mutates_args=())  # torch.ops.ssn.anomaly_map


@anomaly_map.register_kernel("cpu")
def _anomaly_map_cpu(seg, rows, cols, sigmoid):
    check_inputs(seg, rows, cols, for_kernel=False)
    return anomaly_map_torch(seg, rows, cols, sigmoid)


@functools.cache
def _operators(fh: int, fw: int, size: tuple[int, int], sigma: float, dtype, device) -> tuple:
    rows = reference.upsample_blur_matrix(fh, size[0], sigma, dtype, device)  # [H, fh]
    cols = reference.upsample_blur_matrix(fw, size[1], sigma, dtype, device).T.contiguous()  # [fw, W]
    return rows, cols


def upsample_blur(seg: torch.Tensor, size: tuple[int, int], sigma: float = 4.0, sigmoid: bool = False):
    """seg [B, 1, fh, fw] -> (map [B, 1, *size], peak [B]) through `ssn::anomaly_map` on seg's device; equals
    reference.anomaly_map(seg, size, sigma, sigmoid) (the operators are built from it, cached per size)."""
    reference.check_blur_size(tuple(size), sigma)
    rows, cols = _operators(seg.shape[2], seg.shape[3], tuple(size), float(sigma), seg.dtype, seg.device)
    return anomaly_map(seg, rows, cols, bool(sigmoid))
