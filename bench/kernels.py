"""Each Triton kernel against its eager PyTorch form (the folded graph's), per batch and preset size, on CUDA.

    python bench/kernels.py                                   # all ops, batch 1 8 32 64, mvtec and ksdd2, fp16
    python bench/kernels.py --ops anomaly_map --batch 64 --dtype bf16 --json bench/results/kernels.json
    python bench/kernels.py --roofline                        # the byte model alone (any machine, no GPU)

Ops: seg_head and cls_head (op a: the epilogues after the native-resolution GEMMs, fed contiguous products z;
eager: the folded graph's steps, kernels/*_torch), anomaly_map (op b). Timing: triton.testing.do_bench (L2
flushed before every call), do_bench_cudagraph at batch 1 (launch overhead would dominate). Columns:
microseconds, speed-up over eager, GB/s and TFLOP/s, and the percentage of the H200 roofline: the time the bytes
and FLOPs would need at 4.8 TB/s and 989 TFLOP/s (dense fp16/bf16), over the time measured. Bytes: what the op
must move at least (inputs read once, output written once); FLOPs: those of the folded graph's formulation of
the op (dense operator matmuls). Inputs are random; the operators are the real ones (kernels/reference.py). On a
machine without CUDA it says so and exits 0. `--roofline` prints the byte model the kernels were decided on
(bench/README.md "Kernels"): HBM bytes of the eager chain (every intermediate written and read back) vs the
fused kernel, kernel launches, and the H200 lower bounds, beside the FLOPs of the GEMM that feeds the op.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import environment  # noqa: E402
from bench.harness import print_table  # noqa: E402
from bench.harness import write_json  # noqa: E402

H200_BYTES_PER_S, H200_FLOPS = 4.8e12, 989e12  # HBM3e; dense fp16/bf16 tensor cores (kernels.md §6)
SIZES = {"mvtec": ((32, 32), (16, 16), (256, 256)), "ksdd2": ((80, 29), (40, 15), (640, 232))}  # l2, l3, image
SEG, CLS, TAPS = 1024, 128, 5
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def operators(size: str, dtype, device) -> dict[str, torch.Tensor]:
    from kernels import reference

    (h2, w2), (h3, w3), (height, width) = SIZES[size]
    fh, fw = 2 * h2, 2 * w2
    rp = lambda n, out: reference.resize_pool_matrix(n, out, True, dtype, device)  # noqa: E731
    return {
        "rows2": rp(h2, fh), "rows3": rp(h3, fh), "cols2": rp(w2, fw), "cols3": rp(w3, fw),
        "map_rows": reference.upsample_blur_matrix(fh, height, 4.0, dtype, device),
        "map_cols": reference.upsample_blur_matrix(fw, width, 4.0, dtype, device).T.contiguous(),
    }  # fmt: skip


def cases(op: str, size: str, batch: int, dtype, device) -> tuple[tuple, dict, float, float]:
    """(args, {"eager": fn, "triton": fn}, minimal bytes, FLOPs of the folded formulation) for one measurement."""
    from kernels import anomaly_map
    from kernels import cls_head
    from kernels import seg_head

    g = torch.Generator(device).manual_seed(0)
    (h2, w2), (h3, w3), (height, width) = SIZES[size]
    fh, fw = 2 * h2, 2 * w2
    m = operators(size, dtype, device)
    item = torch.tensor([], dtype=dtype).element_size()
    rand = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=dtype)  # noqa: E731
    seg_map = rand(batch, 1, fh, fw)
    ops = (m["rows2"], m["rows3"], m["cols2"], m["cols3"])
    if op == "seg_head":
        args = (rand(batch, h2, w2, SEG), rand(batch, h3, w3, SEG), *ops, rand(SEG), rand(SEG), 0.2)
        fns = {"eager": seg_head.seg_head_torch, "triton": seg_head.seg_head}
        moved = batch * (h2 * w2 + h3 * w3) * SEG * item + batch * fh * fw * item
        flops = 2 * batch * SEG * fw * (h2 * w2 + h3 * w3 + fh * (h2 + h3) + 2 * fh)
    elif op == "cls_head":
        n = TAPS * TAPS * CLS
        z2, z3 = rand(batch, h2, w2, n), rand(batch, h3, w3, n)
        args = (z2, z3, *ops, seg_map, rand(CLS, 1, TAPS, TAPS), rand(fh, fw, CLS))
        fns = {"eager": cls_head.cls_head_torch, "triton": cls_head.cls_head}
        moved = batch * (h2 * w2 + h3 * w3) * n * item + batch * fh * fw * item + batch * (2 * CLS + 2) * 4
        flops = 2 * batch * n * fw * (h2 * w2 + h3 * w3) + 2 * batch * fh * fw * CLS * TAPS * (h2 + h3 + TAPS)
    else:
        args = (seg_map, m["map_rows"], m["map_cols"], True)
        fns = {"eager": anomaly_map.anomaly_map_torch, "triton": anomaly_map.anomaly_map}
        moved = batch * (fh * fw + height * width) * item
        flops = 2 * batch * (height * fh * fw + height * fw * width)
    return args, fns, moved, flops


def traffic(op: str, size: str, batch: int, item: int = 2) -> dict[str, float]:
    """HBM bytes of the eager chain and of the fused kernel, their launches, and the feeding GEMM's FLOPs."""
    (h2, w2), (h3, w3), (height, width) = SIZES[size]
    fh, fw, native = 2 * h2, 2 * w2, h2 * w2 + h3 * w3
    if op == "seg_head":  # cols@z (x2), cat (+ bias), rows@, LeakyReLU in place, @ w_out
        z, cols, hidden = batch * native * SEG, batch * (h2 + h3) * fw * SEG, batch * fh * fw * SEG
        eager = z + 2 * cols + 2 * (cols + batch * fw * SEG) + 4 * hidden + batch * fh * fw
        fused, launches = z + batch * fh * fw, 6
        gemm = 2 * batch * (h2 * w2 * 512 + h3 * w3 * 1024) * SEG
    elif op == "cls_head":  # cols@z (x2), cat, rows@, conv stencil, + stencil, + bias, ReLU, amax, mean
        n = TAPS * TAPS * CLS
        z, cols, feat = batch * native * n, batch * (h2 + h3) * fw * n, batch * fh * fw * CLS
        eager, fused, launches = z + 4 * cols + 11 * feat + 3 * batch * fh * fw, z + batch * fh * fw, 10
        gemm = 2 * batch * (h2 * w2 * 512 + h3 * w3 * 1024) * n
    else:  # rows@seg, @cols, sigmoid, amax
        seg, t, amap = batch * fh * fw, batch * height * fw, batch * height * width
        eager, fused, launches, gemm = seg + 2 * t + 4 * amap, seg + amap, 4, 0
    return {"eager_bytes": eager * item, "fused_bytes": fused * item, "eager_launches": launches, "gemm_flops": gemm}


def kernel_flops(op: str, size: str, batch: int) -> float:
    """Tensor-core FLOPs the fused kernel executes: per 8x8 tile, K [64, window] @ z [window, channels] per layer
    (x 25 taps for cls); anomaly_map at 64x64 output tiles (rows @ seg over all of fh, then @ cols)."""
    from kernels.common import layer_constexprs
    from kernels.common import next_pow2

    (h2, w2), (h3, w3), (height, width) = SIZES[size]
    fh, fw = 2 * h2, 2 * w2
    if op == "anomaly_map":
        tiles = -(-height // 64) * -(-width // 64)
        return 2 * batch * tiles * (64 * -(-fh // 32) * 32 * max(16, next_pow2(fw)) + 64 * max(16, next_pow2(fw)) * 64)
    c = layer_constexprs([(h2, w2), (h3, w3)], fh, fw, (8, 8), TAPS // 2 if op == "cls_head" else 0)
    window = c["WHP2"] * c["WWP2"] + c["WHP3"] * c["WWP3"]
    tiles = -(-fh // 8) * -(-fw // 8)
    per_tile = 2 * 64 * window * (TAPS * TAPS * CLS if op == "cls_head" else SEG)
    return batch * tiles * per_tile


def print_roofline(batches: list[int], sizes: list[str], ops: list[str]) -> None:
    rows = []
    for op in ops:
        for size in sizes:
            for batch in batches:
                t = traffic(op, size, batch)
                eager_us, fused_us = (
                    1e6 * t["eager_bytes"] / H200_BYTES_PER_S,
                    1e6 * t["fused_bytes"] / H200_BYTES_PER_S,
                )
                mma_us = 1e6 * kernel_flops(op, size, batch) / H200_FLOPS
                gemm_us = 1e6 * t["gemm_flops"] / H200_FLOPS
                fused_bound = max(fused_us, mma_us)
                rows.append([op, size, batch, t["eager_bytes"] / 1e6, t["fused_bytes"] / 1e6, t["eager_launches"],
                             eager_us, fused_us, mma_us, eager_us / fused_bound, gemm_us])  # fmt: skip
    headers = ["op", "size", "batch", "eager MB", "fused MB", "eager launches", "eager us", "fused us", "fused MMA us"]
    print("fp16 HBM traffic and its time at 4.8 TB/s (H200); 'fused MMA us': the kernel's tensor-core FLOPs at")
    print("989 TFLOP/s; 'bound ratio': eager us / max(fused us, fused MMA us); 'GEMM us': the feeding GEMM at peak")
    print_table([*headers, "bound ratio", "GEMM us"], rows)


def run(args: argparse.Namespace) -> dict:
    import triton.testing

    device = torch.device("cuda")
    dtype = DTYPES[args.dtype]
    rows = []
    for op in args.ops:
        for size in args.sizes:
            for batch in args.batch:
                inputs, fns, moved, flops = cases(op, size, batch, dtype, device)
                bound = max(moved / H200_BYTES_PER_S, flops / H200_FLOPS)
                with torch.inference_mode():
                    ref, got = fns["eager"](*inputs), fns["triton"](*inputs)
                    diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(_tuple(ref), _tuple(got)))
                    times = {}
                    for name, fn in fns.items():
                        call = lambda fn=fn, inputs=inputs: fn(*inputs)  # noqa: E731
                        if batch == 1:
                            times[name] = triton.testing.do_bench_cudagraph(call) * 1e-3
                        else:
                            times[name] = triton.testing.do_bench(call) * 1e-3
                for name, seconds in times.items():
                    rows.append(
                        {
                            "op": op, "size": size, "batch": batch, "impl": name, "us": seconds * 1e6,
                            "speedup": times["eager"] / seconds, "GB/s": moved / seconds / 1e9,
                            "TFLOP/s": flops / seconds / 1e12, "roofline_pct": 100 * bound / seconds,
                            "max_abs_diff": diff,
                        }
                    )  # fmt: skip
    return {"dtype": args.dtype, "env": environment(device), "results": rows}


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", default=["seg_head", "cls_head", "anomaly_map"])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    parser.add_argument("--json", default="bench/results/kernels.json")
    parser.add_argument("--roofline", action="store_true", help="print the byte model only (no GPU needed)")
    args = parser.parse_args(argv)
    bad = set(args.ops) - {"seg_head", "cls_head", "anomaly_map"}
    if bad:
        parser.error(f"--ops: unknown {sorted(bad)}; accepted: seg_head cls_head anomaly_map")
    if args.roofline:
        print_roofline(args.batch, args.sizes, args.ops)
        return 0
    if not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA device (the Triton kernels run on NVIDIA GPUs); nothing measured here.")
        return 0
    payload = run(args)
    headers = ["op", "size", "batch", "impl", "us", "speedup", "GB/s", "TFLOP/s", "roofline_pct", "max_abs_diff"]
    print(f"{args.dtype} on {payload['env']['gpu']}; roofline: H200 (4.8 TB/s, 989 TFLOP/s)")
    print_table(headers, [[r[h] for h in headers] for r in payload["results"]])
    print(f"JSON: {write_json(args.json, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
