"""How close to this CPU's limit: its bf16 capability, a GEMM-rate probe at the backbone's shapes, and each
provider's achieved GMAC/s as a share of that rate (bench/throughput.py prints it after its table).

The probe is every convolution of the backbone written as the GEMM it is (im2col: M = batch x output pixels,
K = input channels x kernel taps, N = output channels), each shape multiplied with `torch.matmul` as often as the
backbone runs it: one pass = the backbone's MACs as plain GEMMs. bench/throughput.py times a pass per dtype (fp32,
and bf16 where the CPU has AVX512-BF16 or AMX-BF16) as one more call in its interleaved rounds, so the probe and the
providers see the same load; MACs / median time = this machine's sustained GEMM rate on the backbone's work. A
provider's GMAC/s counts the MACs it executes per image (`ssn info`; pipeline/stats.py provider_macs) over its
median time; the percentage is that over the probe's rate: memory-bound steps (resampling, postprocess) lower it,
and direct convolutions can beat im2col GEMMs, so a backbone may exceed 100 %.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names; oneDNN uses them for bf16 GEMMs and convs
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MACS_LIKE = {"onnxruntime": "folded", "anomalib": "reference"}  # providers running another provider's computation


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, object]:
    """{'model': ..., 'flags': set of flag names} of the first CPU listed (empty on hosts without /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {"model": "unknown", "flags": set()}
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {"model": fields.get("model name", "unknown"), "flags": set(fields.get("flags", "").split())}


def bf16_problem(info: dict[str, object] | None = None) -> str | None:
    """None when bf16 runs natively on this CPU through oneDNN; else why `--dtype bf16` would mislead."""
    info = cpu_info() if info is None else info
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn), which runs bf16 convolutions and GEMMs on CPU"
    if not set(NATIVE_BF16_FLAGS) & info["flags"]:
        return (
            f"this CPU ({info['model']}) has neither AVX512-BF16 nor AMX-BF16 (no {' / '.join(NATIVE_BF16_FLAGS)} "
            "in /proc/cpuinfo): bf16 would run emulated, usually slower than fp32, and the figures would mislead; "
            "run --dtype fp32 here, or bf16 on a CPU that has one of them"
        )
    return None


def describe_cpu(info: dict[str, object] | None = None) -> str:
    info = cpu_info() if info is None else info
    native = [f for f in NATIVE_BF16_FLAGS if f in info["flags"]]
    bf16 = f"native bf16: {', '.join(native)}" if native else "no native bf16"
    return f"{info['model']}, {bf16}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def backbone_gemms(backbone: nn.Module, image_size: tuple[int, int], batch: int) -> Counter:
    """Counter of (M, K, N) over the backbone's convolutions as GEMMs, for `batch` images (meta device: no compute)."""
    shapes: Counter = Counter()

    def hook(conv: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        kh, kw = conv.kernel_size
        m = output.shape[0] * output.shape[2] * output.shape[3]
        shapes[(m, conv.in_channels // conv.groups * kh * kw, conv.out_channels // conv.groups)] += conv.groups

    with torch.device("meta"):
        meta = type(backbone)(backbone.name)
    hooks = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        meta(torch.empty(batch, 3, *image_size, device="meta"))
    for h in hooks:
        h.remove()
    return shapes


def probe_dtypes(run_dtype: str) -> list[str]:
    """fp32 always, bf16 too where the CPU runs it natively (so each run shows both ceilings), and the run's dtype."""
    dtypes = ["fp32"] + (["bf16"] if bf16_problem() is None else [])
    return dtypes if run_dtype in dtypes else [*dtypes, run_dtype]


PROBE = "gemm-probe"  # provider name of the probe's rows in the results


def probe_calls(backbone: nn.Module, image_size: tuple[int, int], batch: int, dtypes: list[str]) -> dict:
    """{(PROBE, dtype): one pass over the backbone's GEMMs (each shape as often as the backbone runs it)}.

    bench/throughput.py times these in the same interleaved rounds as the providers, so a load change on a shared
    machine hits the probe and the providers alike and the percentages stay meaningful."""
    shapes = backbone_gemms(backbone, image_size, batch)
    calls = {}
    for name in dtypes:
        operands = [
            (torch.randn(m, k, dtype=DTYPES[name]), torch.randn(k, n, dtype=DTYPES[name]), count)
            for (m, k, n), count in shapes.items()
        ]

        def one_pass(operands=operands) -> None:
            for a, b, count in operands:
                for _ in range(count):
                    a @ b

        calls[(PROBE, name)] = one_pass
    return calls


def limits(backbone: nn.Module, image_size: tuple[int, int], results: list[dict]) -> dict:
    """{'cpu', 'backbone', 'gmacs': {batch: backbone GMACs}, 'rates': {dtype: {batch: GMAC/s}}} from the probe rows."""
    rates, gmacs = {}, {}
    for r in results:
        if r["provider"] == PROBE:
            batch = r["batch"]
            if batch not in gmacs:
                shapes = backbone_gemms(backbone, image_size, batch)
                gmacs[batch] = sum(c * m * k * n for (m, k, n), c in shapes.items()) / 1e9
            rates.setdefault(r["stage"], {})[batch] = gmacs[batch] / (r["median_ms"] / 1e3)
    return {"cpu": describe_cpu(), "backbone": backbone.name, "gmacs": gmacs, "rates": rates}


def limit_rows(results: list[dict], macs: dict[str, dict[str, int]], rates: dict[int, float]) -> list[list]:
    """[provider, batch, stage, img/s, GMAC/img, GMAC/s, % of rate] for the e2e and backbone rows."""
    rows = []
    for r in results:
        stage = {"e2e": "total", "backbone": "backbone"}.get(r["stage"])
        counted = macs.get(MACS_LIKE.get(r["provider"], r["provider"]))
        if stage is None or counted is None or r["batch"] not in rates:
            continue
        per_image = counted[stage] / 1e9
        achieved = r["images_per_s"] * per_image
        rows.append([r["provider"], r["batch"], r["stage"], r["images_per_s"], per_image, achieved])
        rows[-1].append(100 * achieved / rates[r["batch"]])
    return rows


def report_limits(payload: dict, providers: list[str]) -> None:
    from bench.harness import print_table

    found = payload.get("limits")
    if not found or not found["rates"]:
        return
    dtype = payload["dtype"]
    print(f"\nCPU: {found['cpu']}")
    for batch, gmacs in found["gmacs"].items():
        rates = ", ".join(f"{d} {r[batch]:.0f} GMAC/s" for d, r in found["rates"].items())
        print(f"GEMM probe, batch {batch} ({found['backbone']} convs as GEMMs, {gmacs:.1f} GMAC): {rates}")
    results = [r for r in payload["results"] if r["stage"] in ("e2e", "backbone")]
    results.sort(key=lambda r: (r["batch"], providers.index(r["provider"]), r["stage"] != "e2e"))
    rows = limit_rows(results, found["macs"], found["rates"][dtype])
    headers = ["provider", "batch", "stage", "img/s", "GMAC/img", "GMAC/s", f"% of {dtype} GEMM rate"]
    print_table(headers, rows)
