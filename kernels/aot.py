"""Ahead-of-time compilation of every kernel for GPUs that are not here (H100/H200: sm_90, A100: sm_80).

    python -m kernels.aot                       # table: kernel, arch, dtype, config, registers, spills, smem, occupancy
    python -m kernels.aot --json out.json --arch 90 --dtype fp16

The Triton interpreter accepts programs the compiler rejects (block shapes, dot sizes, layouts, register
pressure), so CI compiles each kernel at every autotune config and shipped dtype with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` (PTX, then ptxas to a cubin: no GPU needed)
and reads from ptxas its registers per thread and spill bytes, and from the compiled kernel its shared memory.
Sizes: the mvtec preset (WRN50-2 at 256x256: layer2 32x32x512, layer3 16x16x1024, features 64x64, map 256x256)
and ksdd2 (640x232: layer2 80x29, layer3 40x15, features 160x58). Must run without TRITON_INTERPRET.
"""

import argparse
import contextlib
import io
import json
import multiprocessing
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import anomaly_map
from kernels import cls_head
from kernels import seg_head
from kernels.common import INTERPRET
from kernels.common import layer_constexprs
from kernels.common import next_pow2

ARCHS = (90, 80)
DTYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}
# (name, (h2, w2), (h3, w3), (fh, fw), (H, W))
SIZES = {"mvtec": ((32, 32), (16, 16), (64, 64), (256, 256)), "ksdd2": ((80, 29), (40, 15), (160, 58), (640, 232))}
SEG_HIDDEN, CLS_HIDDEN, TAPS = 1024, 128, 5
H200 = {"sms": 132, "regs_per_sm": 65536, "smem_per_sm": 228 * 1024, "warps_per_sm": 64, "blocks_per_sm": 32}


def _values(size: str) -> dict[str, dict[str, int]]:
    """Integer arguments of each kernel as pipeline/engine.py launches them at `size` (batch 64): the compiler
    specializes on them as the JIT does (16-divisible ints are marked so, ints equal to 1 become constants)."""
    (h2, w2), (h3, w3), (fh, fw), (height, width) = SIZES[size]
    wide = SEG_HIDDEN + TAPS * TAPS * CLS_HIDDEN  # the engine's one GEMM per layer: seg and cls products side by side
    z = {"z2_sb": h2 * w2 * wide, "z2_sh": w2 * wide, "z2_sw": wide, "z3_sb": h3 * w3 * wide, "z3_sh": w3 * wide}
    z |= {"z3_sw": wide, "r2_s": h2 + h3 + 1, "r3_s": h2 + h3 + 1, "c2_s": w2, "c3_s": w3}  # rows: seg_rows views
    sizes = {"h2": h2, "w2": w2, "h3": h3, "w3": w3, "fh": fh, "fw": fw}
    seg = {"seg_sb": fh * fw, "seg_sy": fw, "seg_sx": 1}
    return {
        "seg_head": z | sizes | {"n_hidden": SEG_HIDDEN},
        "cls_head": z | sizes | seg,
        "anomaly_map": seg | {"rows_s": fh, "cols_s": width, "H": height, "W": width, "fh": fh, "fw": fw},
    }


def configs(name: str, dtype: str) -> list:
    """The autotune configs a launch in `dtype` chooses from."""
    module = {"seg_head": seg_head, "cls_head": cls_head, "anomaly_map": anomaly_map}[name]
    return module.FP32_CONFIGS if dtype == "fp32" else module.CONFIGS


def kernel_sources(size: str, dtype: str) -> list[tuple[str, object, dict, dict]]:
    """(kernel name, Autotuner, pointer/float types, constexprs without the config) of the kernels at `size`."""
    t = f"*{DTYPES[dtype]}"
    cast = dtype == "fp32"
    (h2, w2), (h3, w3), (fh, fw), _ = SIZES[size]
    layers = [(h2, w2), (h3, w3)]
    ops = {f"{n}_ptr": t for n in ("r2", "r3", "c2", "c3")}
    seg = {"z2_ptr": t, "z3_ptr": t, **ops, "bias_ptr": t, "w_ptr": t, "out_ptr": t, "slope": "fp32"}
    cls = {"z2_ptr": t, "z3_ptr": t, **ops, "seg_ptr": t, "mapw_ptr": t, "bias_ptr": t, "pooled_ptr": "*fp32"}
    cls |= {"inv_count": "fp32"}
    amap = {"seg_ptr": t, "rows_ptr": t, "cols_ptr": t, "out_ptr": t, "peak_ptr": "*fp32"}
    return [
        (
            "seg_head",
            seg_head.seg_head_kernel,
            seg,
            layer_constexprs(layers, fh, fw, seg_head.TILE, 0) | {"CAST_F32": cast},
        ),
        (
            "cls_head",
            cls_head.cls_head_kernel,
            cls,
            layer_constexprs(layers, fh, fw, cls_head.TILE, TAPS // 2)
            | {"HIDDEN": CLS_HIDDEN, "TAPS": TAPS, "CAST_F32": cast},
        ),
        (
            "anomaly_map",
            anomaly_map.anomaly_map_kernel,
            amap,
            {"FW": max(16, next_pow2(fw)), "BK": anomaly_map.BK, "SIGMOID": True, "CAST_F32": cast},
        ),
    ]


def specialize(fn, types: dict, ints: dict, constexprs: dict) -> ASTSource:
    """An ASTSource as the JIT would build it: pointers 16-byte aligned, ints typed i32 and marked 16-divisible
    when they are, ints equal to 1 folded in as constants."""
    signature, consts, attrs = {}, dict(constexprs), {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in types:
            signature[name] = types[name]
            if types[name].startswith("*"):
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif ints[name] == 1:
            signature[name], consts[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return ASTSource(fn, signature, constexprs=consts, attrs=attrs)


def _ptxas_usage(ptx: str, arch: int, log: str = "") -> tuple[int, int, int]:
    """(registers per thread, spill store bytes, spill load bytes) from ptxas's -v log of this PTX: the one Triton
    printed while compiling, or (a cached compile prints none) a second ptxas run with Triton's flags."""
    if "Used" not in log:
        gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "k.ptx"
            src.write_text(ptx)
            cmd = [triton.knobs.nvidia.ptxas.path, "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}", str(src)]
            run = subprocess.run([*cmd, "-o", str(src.with_suffix(".o"))], capture_output=True, text=True, check=True)
        log = run.stderr + run.stdout
    text = log
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    stores, loads = (int(v) for v in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text).groups())
    return regs, stores, loads


def occupancy(regs: int, smem: int, warps: int) -> dict:
    """Resident blocks and warps per SM on an H200 (sm_90) for this kernel: registers are allocated per warp in
    units of 256 (per-thread count rounded up to 8), shared memory per block, at most 64 warps / 32 blocks."""
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = H200["regs_per_sm"] // (regs_per_warp * warps)
    by_smem = H200["smem_per_sm"] // smem if smem else H200["blocks_per_sm"]
    blocks = min(by_regs, by_smem, H200["warps_per_sm"] // warps, H200["blocks_per_sm"])
    return {"blocks_per_sm": blocks, "occupancy": blocks * warps / H200["warps_per_sm"]}


def compile_one(job: tuple) -> dict:
    name, size, dtype, arch, index = job
    _, fn, types, constexprs = next(k for k in kernel_sources(size, dtype) if k[0] == name)
    config = configs(name, dtype)[index]
    src = specialize(fn.fn, types, _values(size)[name], constexprs | config.kwargs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    triton.knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v's report: keep it
    with contextlib.redirect_stdout(io.StringIO()) as log:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    regs, spill_stores, spill_loads = _ptxas_usage(compiled.asm["ptx"], arch, log.getvalue())
    smem = compiled.metadata.shared
    row = {"kernel": name, "size": size, "arch": f"sm_{arch}", "dtype": dtype, "config": _config_text(config)}
    row |= {"registers": regs, "spill_stores": spill_stores, "spill_loads": spill_loads, "shared_bytes": smem}
    row |= {"cubin_bytes": len(compiled.asm["cubin"])}
    return row | (occupancy(regs, smem, config.num_warps) if arch == 90 else {})


def _config_text(config) -> str:
    params = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{params} w{config.num_warps} s{config.num_stages}"


def jobs(archs=ARCHS, dtypes=tuple(DTYPES), sizes=tuple(SIZES)) -> list[tuple]:
    """Every kernel x config x dtype x arch at the mvtec size; the ksdd2 size at the first config, fp16, sm_90."""
    out = []
    for name, _, _, _ in kernel_sources("mvtec", "fp16"):
        for size in sizes:
            for arch in archs:
                for dtype in dtypes:
                    for index in range(len(configs(name, dtype))):
                        if size == "mvtec" or (arch == archs[0] and dtype == dtypes[0] and index == 0):
                            out.append((name, size, dtype, arch, index))
    return out


def compile_all(job_list: list[tuple], workers: int = 2) -> list[dict]:
    if INTERPRET:
        raise RuntimeError("kernels.aot compiles for real: run it without TRITON_INTERPRET=1")
    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    ) as pool:  # no fork: torch threads
        return list(pool.map(compile_one, job_list))


def print_rows(rows: list[dict]) -> None:
    headers = ["kernel", "size", "arch", "dtype", "config", "registers", "spill_stores", "shared_bytes"]
    headers += ["blocks_per_sm", "occupancy"]
    cells = [[f"{r[h]:.0%}" if h == "occupancy" and h in r else str(r.get(h, "-")) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def markdown(rows: list[dict]) -> list[str]:
    """The table bench/README.md shows (tests/test_kernel_compile.py checks that it does)."""
    lines = ["| kernel | size | arch | dtype | config | registers | spills (bytes) | shared memory | H200 blocks/SM "
             "| H200 occupancy |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        occupancy = f"{r['occupancy']:.0%}" if "occupancy" in r else "-"
        lines.append(
            f"| {r['kernel']} | {r['size']} | {r['arch']} | {r['dtype']} | {r['config']} | {r['registers']} | "
            f"{r['spill_stores'] + r['spill_loads']} | {r['shared_bytes'] // 1024} KiB | {r.get('blocks_per_sm', '-')} "
            f"| {occupancy} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--size", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--workers", type=int, default=2, help="compiler processes")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--markdown", action="store_true", help="print bench/README.md's table instead")
    args = parser.parse_args(argv)
    rows = compile_all(jobs(tuple(args.arch), tuple(args.dtype), tuple(args.size)), args.workers)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(markdown(rows))) if args.markdown else print_rows(rows)
    spilled = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    for r in spilled:
        print(f"SPILLS: {r['kernel']} {r['size']} {r['arch']} {r['dtype']} {r['config']}", file=sys.stderr)
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
