"""What the Triton kernels share: input checks, band windows of the resampling operators, tile helpers.

The folded graph's resampling operators (resize + 3x3 pool, per axis; kernels/reference.py) are banded: output
row y reads a few consecutive input rows, and the band moves forward with y. A kernel tile of output rows
therefore reads one window of input rows; `band_extent` gives its length from the sizes alone (measured on the
reference operators, never on the tensors passed: so it works under torch.compile's fake tensors and inside
CUDA-graph capture), and the kernels find where the window starts from the operator itself (`band_start`). A
kernel whose operator is wider than the window writes NaN instead of a silently wrong number (`band_end`), so a
matrix that is not such an operator cannot pass unnoticed. The window's pixels are the K of a tensor-core dot:
K[tile pixel, window pixel] = R[y, i] * C[x, j] (`kron`), times the window's products z [K, channels].

Knows nothing of the rest of the project.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from kernels import reference

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
MAX_WINDOW = 256  # input pixels of one layer a tile may read (the dot's K); larger -> the plain-PyTorch fallback


class KernelInputError(ValueError):
    """A tensor the kernel was not built for (shape, dtype, layout or device); the message names it."""


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


@functools.cache
def band_extent(n_in: int, n_out: int, tile: int, halo: int) -> int:
    """Input rows that a tile of `tile` consecutive output rows (plus `halo` rows each side, the cls conv's tap
    shift) of a bilinear resize n_in -> n_out followed by the 3-tap pool reads: the largest over tiles and both
    align_corners, measured on the operators kernels/reference.py builds (float64, CPU, cached per size)."""
    worst = 1
    with _real_tensors():  # inside torch.compile's fake-tensor tracing too: these are sizes, not data
        for align_corners in (True, False):
            nonzero = reference.resize_pool_matrix_f64(n_in, n_out, align_corners) != 0  # [n_out, n_in]
            first = nonzero.int().argmax(dim=1)  # first nonzero column per row
            last = n_in - 1 - nonzero.flip(1).int().argmax(dim=1)
            starts = torch.arange(0, n_out, tile)
            top = (starts - halo).clamp(0, n_out - 1)
            bottom = (starts + tile - 1 + halo).clamp(0, n_out - 1)
            worst = max(worst, int((last[bottom] - first[top]).max()) + 1)
    return worst


def _real_tensors():
    try:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
    except ImportError:  # pragma: no cover - older torch
        return contextlib.nullcontext()
    return unset_fake_temporarily()


def check_floats(dtype: torch.dtype, /, for_kernel: bool = True, **tensors: torch.Tensor) -> None:
    """Every tensor is `dtype`; for the kernel (not the plain-PyTorch forms, which also take float64 and any
    strides) one of FLOATS, with a unit stride in its last dimension."""
    allowed = FLOATS if for_kernel else (*FLOATS, torch.float64)
    if dtype not in allowed:
        raise KernelInputError(f"dtype {dtype} is not supported; the kernels take {', '.join(map(str, allowed))}")
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise KernelInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            raise KernelInputError(f"{name} is {t.dtype}, expected {dtype} like the other inputs; cast it")
        if for_kernel and t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
            raise KernelInputError(
                f"{name} (shape {list(t.shape)}, strides {list(t.stride())}) needs a unit stride in its last "
                "dimension; pass .contiguous()"
            )


def check_shape(name: str, t: torch.Tensor, expected: tuple) -> None:
    """expected: ints or None (any) per dimension."""
    ok = t.dim() == len(expected) and all(e is None or s == e for s, e in zip(t.shape, expected))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise KernelInputError(f"{name} has shape {list(t.shape)}, expected {want}")


def check_device(**tensors: torch.Tensor) -> None:
    """All on one device, CUDA (the kernels) or CPU (the interpreter, else the plain-PyTorch forms)."""
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        raise KernelInputError(f"inputs are on several devices: {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type not in ("cuda", "cpu"):
        raise KernelInputError(f"the ops run on CUDA (Triton kernels) or CPU (plain PyTorch) tensors, got {device}")


def windows(h: int, w: int, fh: int, fw: int, tile: tuple[int, int], halo: int) -> dict[str, int]:
    """The input window of one layer (h x w, resampled to fh x fw) that an output tile plus `halo` outputs on each
    side (the cls conv's tap shift) reads: WH x WW pixels, held as WHP x WWP (powers of two whose product, the
    dot's K, is >= 16). Keys as the kernels' constexprs, suffixed by the caller."""
    wh, ww = band_extent(h, fh, tile[0], halo), band_extent(w, fw, tile[1], halo)
    whp, wwp = next_pow2(wh), next_pow2(ww)
    wwp = max(wwp, 16 // whp)
    return {"WH": wh, "WW": ww, "WHP": whp, "WWP": wwp, "BH": next_pow2(h), "BW": next_pow2(w)}


def layer_constexprs(shapes: list[tuple[int, int]], fh: int, fw: int, tile: tuple[int, int], halo: int) -> dict:
    """The windows of layers 2 and 3 (shapes [(h2, w2), (h3, w3)]) as kernel constexprs (WH2, ..., BW3)."""
    out = {"TY": tile[0], "TX": tile[1]}  # int(): under dynamic-shape tracing the sizes are SymInts; the kernels
    for layer, (h, w) in zip((2, 3), shapes):  # specialize on them (torch.compile guards on these sizes)
        out |= {f"{k}{layer}": v for k, v in windows(int(h), int(w), int(fh), int(fw), tile, halo).items()}
    return out


def window_size(constexprs: dict) -> int:
    """The larger layer window (the dot's K) of layer_constexprs' output."""
    return max(constexprs["WHP2"] * constexprs["WWP2"], constexprs["WHP3"] * constexprs["WWP3"])


# ---- device helpers (shared @triton.jit functions) ------------------------------------------------------------
# fmt: off


@triton.jit
def band_start(m_ptr, m_stride, n_rows, n_cols, row, BLOCK: tl.constexpr):
    # first nonzero column of operator row `row` (clamped into [0, n_rows)); n_cols when the row is all zero
    r = tl.minimum(tl.maximum(row, 0), n_rows - 1)
    offs = tl.arange(0, BLOCK)
    v = tl.load(m_ptr + r * m_stride + offs, mask=offs < n_cols, other=0.0)
    return tl.min(tl.where(v != 0, offs, n_cols), axis=0)


@triton.jit
def band_end(m_ptr, m_stride, n_rows, n_cols, row, BLOCK: tl.constexpr):
    # last nonzero column of operator row `row` (clamped into [0, n_rows)); -1 when the row is all zero
    r = tl.minimum(tl.maximum(row, 0), n_rows - 1)
    offs = tl.arange(0, BLOCK)
    v = tl.load(m_ptr + r * m_stride + offs, mask=offs < n_cols, other=0.0)
    return tl.max(tl.where(v != 0, offs, -1), axis=0)


@triton.jit
def tile_window(r_ptr, r_stride, c_ptr, c_stride, y0, x0, fh, fw, h, w, TY: tl.constexpr, TX: tl.constexpr,
                HALO: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    # where the input window of output rows y0 - HALO .. y0 + TY - 1 + HALO and columns x0 - HALO ..
    # x0 + TX - 1 + HALO starts in an h x w layer read through the operators R [fh, h] and C [fw, w]
    # -> (i0, j0, ok: the operators' band fits in WH x WW)
    i0 = band_start(r_ptr, r_stride, fh, h, y0 - HALO, BH)
    i1 = band_end(r_ptr, r_stride, fh, h, y0 + TY - 1 + HALO, BH)
    j0 = band_start(c_ptr, c_stride, fw, w, x0 - HALO, BW)
    j1 = band_end(c_ptr, c_stride, fw, w, x0 + TX - 1 + HALO, BW)
    return i0, j0, (i1 - i0 < WH) & (j1 - j0 < WW)


@triton.jit
def tile_origin(pid, fw, TY: tl.constexpr, TX: tl.constexpr):
    # program `pid`'s TY x TX output tile of an fw-wide map -> (y0, x0, pixel rows ys [P], pixel columns xs [P])
    tiles_x = tl.cdiv(fw, TX)
    y0 = (pid // tiles_x) * TY
    x0 = (pid % tiles_x) * TX
    p = tl.arange(0, TY * TX)
    return y0, x0, y0 + p // TX, x0 + p % TX


@triton.jit
def layer_window(z_ptr, z_sb, z_sh, z_sw, b, r_ptr, r_stride, c_ptr, c_stride, y0, x0, fh, fw, h, w,
                 TY: tl.constexpr, TX: tl.constexpr, HALO: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
                 WHP: tl.constexpr, WWP: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    # one layer's window for the tile: (image b's products z [h, w, C] (a 64-bit base; offsets inside stay
    # 32-bit), each window pixel's offset [Q], its mask [Q], the window origin i0, j0, ok: the band fits)
    i0, j0, ok = tile_window(r_ptr, r_stride, c_ptr, c_stride, y0, x0, fh, fw, h, w, TY, TX, HALO, WH, WW, BH, BW)
    qi, qj, q_ok = window_pixels(i0, j0, h, w, WH, WW, WHP, WWP)
    return z_ptr + b * z_sb, qi * z_sh + qj * z_sw, q_ok, i0, j0, ok


@triton.jit
def window_pixels(i0, j0, h, w, WH: tl.constexpr, WW: tl.constexpr, WHP: tl.constexpr, WWP: tl.constexpr):
    # the window's pixels, q = a * WWP + c -> (row i0 + a, col j0 + c, inside the window and the layer): [Q] each
    q = tl.arange(0, WHP * WWP)
    a = q // WWP
    c = q % WWP
    return i0 + a, j0 + c, (a < WH) & (c < WW) & (i0 + a < h) & (j0 + c < w)


@triton.jit
def axis_weights(m_ptr, m_stride, y0, i0, n_out, n_in, T: tl.constexpr, W: tl.constexpr, WP: tl.constexpr):
    # M[y0 + t, i0 + a] for t < T, a < WP in fp32: one axis of the resampling weights of a tile's T output rows
    # (or columns) on its window; zero for rows outside [0, n_out) (the cls conv's zero padding) and for window
    # entries past W or past the layer -> [T, WP]
    y = y0 + tl.arange(0, T)
    a = tl.arange(0, WP)
    mask = ((y >= 0) & (y < n_out))[:, None] & ((a < W) & (i0 + a < n_in))[None, :]
    return tl.load(m_ptr + y[:, None] * m_stride + (i0 + a)[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def kron(rv, cv, TY: tl.constexpr, TX: tl.constexpr, WHP: tl.constexpr, WWP: tl.constexpr):
    # rv [TY, WHP], cv [TX, WWP] -> K [TY * TX, WHP * WWP], K[p, q] = rv[p // TX, q // WWP] * cv[p % TX, q % WWP]:
    # the 2-D resampling weights of output pixel p on window pixel q (separable operators)
    return tl.reshape(rv[:, None, :, None] * cv[None, :, None, :], (TY * TX, WHP * WWP))


@triton.jit
def kron_tile(r_ptr, r_stride, c_ptr, c_stride, y0, x0, i0, j0, fh, fw, h, w, TY: tl.constexpr, TX: tl.constexpr,
              WH: tl.constexpr, WW: tl.constexpr, WHP: tl.constexpr, WWP: tl.constexpr):
    # the tile at (y0, x0) on the window at (i0, j0) through R [fh, h] and C [fw, w] -> K [TY * TX, WHP * WWP]
    rv = axis_weights(r_ptr, r_stride, y0, i0, fh, h, TY, WH, WHP)
    cv = axis_weights(c_ptr, c_stride, x0, j0, fw, w, TX, WW, WWP)
    return kron(rv, cv, TY, TX, WHP, WWP)


@triton.jit
def mma(k, z, acc, CAST_F32: tl.constexpr):
    # acc [P, N] += k [P, Q] (fp32 weights) @ z [Q, N]: on tensor cores in z's dtype (fp16/bf16), or in exact fp32
    # when CAST_F32 (fp32 inputs: TF32 would change results by ~1e-3; and the interpreter, which cannot multiply
    # bf16: kernels.md §5)
    if CAST_F32:
        return tl.dot(k, z.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(k.to(z.dtype), z, acc)

# fmt: on

INTERPRET = not isinstance(band_start, JITFunction)  # TRITON_INTERPRET=1 was set before triton was imported


def plain_on_cpu(t: torch.Tensor) -> bool:
    """Whether a launcher computes the plain-PyTorch form instead: CPU tensors outside the interpreter, and fake
    CPU tensors (torch.compile / torch.export trace the op by running its launcher under fake tensors; on CPU
    that trace must be the plain form, which is also what the op's CPU kernel runs)."""
    from torch._subclasses.fake_tensor import is_fake

    return t.device.type == "cpu" and (not INTERPRET or is_fake(t))


def cast_f32(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or INTERPRET


def pruned(fits, fp32_configs: list) -> dict:
    """`prune_configs_by` for triton.autotune: the configs for which fits(config.kwargs, launch args) holds and
    whose dtype class matches the launch (fp32_configs: CUDA-core dots for fp32 inputs; the others: tensor cores
    for fp16/bf16); under the interpreter only the first fitting one (it would time every one on the CPU)."""

    def early_config_prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        kept = [c for c in configs if fits(c.kwargs, args)]
        if not INTERPRET:
            kept = [c for c in kept if any(c is f for f in fp32_configs) == bool(args["CAST_F32"])]
        if not kept:
            raise KernelInputError(f"no kernel configuration fits these sizes ({kwargs})")
        return kept[:1] if INTERPRET else kept

    return {"early_config_prune": early_config_prune}
