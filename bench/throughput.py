"""Throughput and latency per stage and end to end, for a batch sweep and several providers.

    python bench/throughput.py                         # tiny preset on CPU, under a minute
    python bench/throughput.py --preset mvtec --batch 1 8 --providers reference folded
    python bench/throughput.py --preset mvtec --device cuda --dtype fp16 --batch 1 16 64
    python bench/throughput.py --preset mvtec --batch 1 8 --providers reference folded onnxruntime anomalib
    python bench/throughput.py --preset mvtec --batch 1 8 --providers reference folded onnxruntime anomalib --dtype bf16
    python bench/throughput.py --preset mvtec --device cuda --dtype fp16 --batch 1 64 \
        --providers reference folded triton torch-compile

Served provider: `triton-grpc` (bench/stream_grpc.py: N cameras streaming JPEG frames over gRPC to a tritonserver,
beside in-process inference of the same frames; its own table).
Providers: `reference` (straightforward composition), `fast-cpu` (exact reorderings of the two fused ops,
kernels/reference.py), `folded` (pipeline/folded.py: heads folded into a few GEMMs at the backbone's native
resolution; its backbone is fed channels_last), `onnxruntime` (the folded graph exported to ONNX, full and split,
run by onnxruntime's CPU execution provider; bench/ort_provider.py) and the peer `anomalib` (anomalib's
SupersimplenetModel with these weights, checked equal to `reference` first; bench/peer_anomalib.py; optional extra
`peers`, skipped with one line when absent; with it the model is configured as anomalib computes:
align_corners=False); on CUDA also `triton` (pipeline/engine.py: the folded graph with the Triton kernels, a CUDA
graph per batch; off CUDA it falls back to `folded`, with a warning) and `torch-compile` (the folded graph through
torch.compile, mode max-autotune: inductor's own kernels and CUDA graphs; compiles during the warm-up calls,
minutes). The model runs with map_sigmoid=True (the served outputs: map probabilities).
Stages, each fed with precomputed inputs of the previous one:
- every provider: backbone, feat+heads (backbone features -> seg map + score logit: everything between the
  backbone and the postprocess, so the providers compare like for like), postprocess (upsample + blur), e2e (the
  module's forward) and, on CUDA, e2e+io (host->device input copy, forward, score and map copied back: the
  paper's latency protocol);
- reference and fast-cpu also: feature (upscale + pool + adaptor) and heads (seg + cls heads on its output);
- folded also: seg (seg path) and cls (cls path), the two parts of its feat+heads;
- seg+score (images -> seg logits + score logit, all but the postprocess: the `split` graph): reference, fast-cpu,
  folded, onnxruntime; onnxruntime and anomalib have e2e (and anomalib its backbone) besides.
- triton: backbone, feat+heads, postprocess (the kernels, no CUDA graph), e2e (CUDA graph); torch-compile: e2e.
The ratio column compares a stage with the same stage of the first provider ("-" where it has none).
Rounds go through every provider and stage in turn (warm-up rounds excluded), so a load change on a shared
machine hits them alike; the median of the repeats is reported, with p90/p99.
The backbone runs on random weights: weights do not change timing, and none are downloaded.
`--dtype bf16` on CPU needs AVX512-BF16 or AMX-BF16 (refused otherwise) and also prints how far each provider's
outputs move from the fp32 reference. After the table: this CPU's GEMM rate at the backbone's shapes and each
provider's GMAC/s as a share of it (bench/cpu_probe.py).
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cpu_probe  # noqa: E402
from bench import ort_provider  # noqa: E402
from bench import peer_anomalib  # noqa: E402
from bench import stream_grpc  # noqa: E402
from bench.gpu_providers import GPU_PROVIDERS  # noqa: E402
from bench.gpu_providers import engine_stage_calls  # noqa: E402
from bench.gpu_providers import gpu_provider_module  # noqa: E402
from bench.harness import environment  # noqa: E402
from bench.harness import print_table  # noqa: E402
from bench.harness import summarize  # noqa: E402
from bench.harness import time_calls  # noqa: E402
from bench.harness import write_json  # noqa: E402
from kernels import reference  # noqa: E402
from pipeline.backbone import load_backbone  # noqa: E402
from pipeline.config import PRESETS  # noqa: E402
from pipeline.config import get_preset  # noqa: E402
from pipeline.deploy.export import split_forward  # noqa: E402
from pipeline.engine import GpuEngine  # noqa: E402
from pipeline.folded import FoldedSSN  # noqa: E402
from pipeline.model import Features  # noqa: E402
from pipeline.model import SuperSimpleNet  # noqa: E402
from pipeline.stats import provider_macs  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_PROVIDERS = (*reference.IMPLS, "folded")
PROVIDERS = (*DEFAULT_PROVIDERS, *GPU_PROVIDERS, ort_provider.NAME, peer_anomalib.PEER)
SERVED_PROVIDERS = ("triton-grpc",)  # bench/stream_grpc.py
STAGES = ("backbone", "feature", "heads", "seg", "cls", "feat+heads", "seg+score", "postprocess", "e2e", "e2e+io")


def reference_stage_calls(model: SuperSimpleNet, x: torch.Tensor) -> dict[str, callable]:
    """One zero-argument callable per stage, each fed with precomputed inputs of the previous stage."""
    cfg = model.config
    need_pooled = not cfg.adapt_cls_features
    w, b = model.adaptor.weight, model.adaptor.bias

    def feature_stage():
        return Features(*reference.feature_stage(l2, l3, w, b, cfg.align_corners, model.impl, need_pooled))

    def feat_heads():
        feats = feature_stage()
        return model.heads(feats.adapted, model.cls_input(feats))

    with torch.inference_mode():
        l2, l3 = model.backbone(x)
        feats = feature_stage()
        seg_map, _ = model.heads(feats.adapted, model.cls_input(feats))
    return {
        "backbone": lambda: model.backbone(x),
        "feature": feature_stage,
        "heads": lambda: model.heads(feats.adapted, model.cls_input(feats)),
        "feat+heads": feat_heads,
        "seg+score": lambda: split_forward(model, x),
        "postprocess": lambda: model.postprocess(seg_map),
        "e2e": lambda: model(x),
    }


def folded_stage_calls(folded: FoldedSSN, x: torch.Tensor) -> dict[str, callable]:
    with torch.inference_mode():
        l2, l3 = folded.backbone_features(x)
        seg_map = folded.seg_path(l2, l3)
    return {
        "backbone": lambda: folded.backbone_features(x),
        "seg": lambda: folded.seg_path(l2, l3),
        "cls": lambda: folded.cls_path(l2, l3, seg_map),
        "feat+heads": lambda: folded.heads(l2, l3),
        "seg+score": lambda: folded.seg_and_score(x),
        "postprocess": lambda: folded.postprocess(seg_map),
        "e2e": lambda: folded(x),
    }


def stage_calls(module: torch.nn.Module, x: torch.Tensor) -> dict[str, callable]:
    if isinstance(module, ort_provider.OrtProvider):
        return ort_provider.stage_calls(module, x)
    if isinstance(module, peer_anomalib.AnomalibSSN):
        return {"backbone": lambda: module.backbone(x), "e2e": lambda: module(x)}
    kinds = ((GpuEngine, engine_stage_calls), (FoldedSSN, folded_stage_calls), (SuperSimpleNet, reference_stage_calls))
    make = next((fn for kind, fn in kinds if isinstance(module, kind)), None)
    calls = make(module, x) if make else {"e2e": lambda: module(x)}  # compiled: end to end only
    if x.device.type == "cuda":  # the paper's protocol: host->device copy, forward, both outputs back to the host
        x_host = x.cpu().pin_memory()

        def with_io():
            pred = module(x_host.to(x.device, non_blocking=True))
            return pred.score.cpu(), pred.anomaly_map.cpu()

        calls["e2e+io"] = with_io
    return calls


def provider_modules(model: SuperSimpleNet, providers: list[str], compile_backbone: bool) -> dict[str, torch.nn.Module]:
    """provider name -> the inference module it runs (reference formulations share the one model)."""
    folded = FoldedSSN.from_model(model) if "folded" in providers else None
    if folded is not None and compile_backbone:
        folded.compile_backbone()
    modules = {p: folded if p == "folded" else model for p in providers}
    return modules | {p: gpu_provider_module(model, p) for p in providers if p in GPU_PROVIDERS}


def cpu_provider_modules(model: SuperSimpleNet, args: argparse.Namespace, notes: list[str]) -> dict[str, object]:
    """The fp32-built providers (onnxruntime, anomalib) of args.providers; a skipped one gets a line in `notes`."""
    built = {}
    for name in args.providers:
        if name == ort_provider.NAME:
            reason = ort_provider.unsupported(args.dtype, args.device)
            if reason is None:
                built[name] = ort_provider.OrtProvider(FoldedSSN.from_model(model), max(args.batch), args.threads)
                notes.append(built[name].describe())
        elif name == peer_anomalib.PEER:
            reason = peer_anomalib.missing()
            if reason is None:
                check = torch.randn(2, 3, *model.config.image_size, generator=torch.Generator().manual_seed(1))
                built[name] = peer_anomalib.build_peer(model)
                diff = peer_anomalib.check_equal(built[name], model, check)  # PeerMismatch beyond 1e-4
                notes.append(f"anomalib {peer_anomalib.VERSION}: equal to reference in fp32 within {diff:.1e}")
        else:
            continue
        if reason is not None:
            notes.append(f"{name}: skipped: {reason}")
    return built


def select(module: torch.nn.Module, provider: str) -> torch.nn.Module:
    if isinstance(module, SuperSimpleNet):
        module.impl = provider
    return module


def output_diffs(modules: dict[str, torch.nn.Module], x: torch.Tensor) -> tuple[float, float]:
    """Largest |first provider - other| over all outputs: absolute, and relative to the output's max |value|."""
    with torch.inference_mode():
        outs = [select(module, provider)(x) for provider, module in modules.items()]
    pairs = [(a.float(), b.float()) for o in outs[1:] for a, b in zip(outs[0], o) if a is not None and b is not None]
    absolute = max(((a - b).abs().max().item() for a, b in pairs), default=0.0)
    relative = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() for a, b in pairs) if pairs else 0.0
    return absolute, relative


def _selecting(module: torch.nn.Module, provider: str, fn: Callable[[], object]) -> Callable[[], object]:
    def call():
        select(module, provider)  # reference and fast-cpu share one model: set its impl before each call
        return fn()

    return call


def time_interleaved(calls: dict, device: torch.device, warmup: int, repeats: int) -> dict[object, list[float]]:
    """Seconds per call of every callable; rounds go through all of them in turn (warm-up rounds untimed), so
    load changes on a shared machine hit every provider and stage alike and the ratios stay meaningful."""
    times = {key: [] for key in calls}
    for round_ in range(warmup + repeats):
        for key, fn in calls.items():
            seconds = time_calls(fn, device, 0, 1)[0]
            if round_ >= warmup:
                times[key].append(seconds)
    return times


def drift_from_fp32(modules: dict[str, object], fp32_model: SuperSimpleNet, x: torch.Tensor) -> list[dict]:
    """How far each provider's outputs at the run's dtype move from the fp32 reference on the same inputs: max abs
    difference of score and map probabilities, and of score logits relative to their max |value|."""
    with torch.inference_mode():
        truth = fp32_model(x.float())
        rows = []
        for provider, module in modules.items():
            pred = select(module, provider)(x)
            row = {"provider": provider, "batch": x.shape[0], "stage": "drift_fp32"}
            row["score"] = (pred.score.float() - truth.score).abs().max().item()
            row["map"] = (pred.anomaly_map.float() - truth.anomaly_map).abs().max().item()
            if pred.score_logit is not None:
                delta = (pred.score_logit.float() - truth.score_logit).abs().max()
                row["logit_rel"] = (delta / truth.score_logit.abs().max().clamp_min(1e-12)).item()
            rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    if device.type == "cpu" and args.dtype == "bf16" and (problem := cpu_probe.bf16_problem()) is not None:
        raise SystemExit(f"--dtype bf16: {problem}")
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    config, notes = preset.model, []
    if peer_anomalib.PEER in args.providers and peer_anomalib.missing() is None:
        config = peer_anomalib.peer_config(config)  # compute what the peer computes (timing does not depend on it)
        notes.append("model configured as anomalib computes it: align_corners=False")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone on purpose: timing only
        backbone = load_backbone(config.backbone, "random")
    torch.manual_seed(0)
    model = SuperSimpleNet(config, backbone, map_sigmoid=True).eval()
    built = cpu_provider_modules(model, args, notes)  # from the fp32 weights: ONNX export, the peer's check
    fp32_model = copy.deepcopy(model).to(device) if args.dtype != "fp32" else None
    model = model.to(device=device, dtype=DTYPES[args.dtype])
    torch_providers = [p for p in args.providers if p not in (ort_provider.NAME, peer_anomalib.PEER)]
    modules = provider_modules(model, torch_providers, args.compile_backbone)
    for name, module in built.items():
        modules[name] = module.to(device=device, dtype=DTYPES[args.dtype]) if isinstance(module, nn.Module) else module
    modules = {p: modules[p] for p in args.providers if p in modules}
    if not modules:
        raise SystemExit("no provider left to time: " + "; ".join(notes))
    probe_dtypes = cpu_probe.probe_dtypes(args.dtype) if device.type == "cpu" and not args.no_probe else []
    results = []
    for batch in args.batch:
        x = torch.randn(batch, 3, *config.image_size, device=device, dtype=DTYPES[args.dtype])
        calls = {
            (provider, stage): _selecting(module, provider, fn)
            for provider, module in modules.items()
            for stage, fn in stage_calls(select(module, provider), x).items()
        }
        if probe_dtypes:  # the GEMM-rate probe, timed in the same rounds as the providers
            calls |= cpu_probe.probe_calls(model.backbone, config.image_size, batch, probe_dtypes)
        for (provider, stage), times in time_interleaved(calls, device, args.warmup, args.repeats).items():
            results.append({"provider": provider, "batch": batch, "stage": stage, **summarize(times, batch)})
        absolute, relative = output_diffs(modules, x)
        results.append(
            {
                "provider": "|".join(modules),
                "batch": batch,
                "stage": "max_diff",
                "abs": absolute,
                "rel": relative,
            }
        )
        if fp32_model is not None:
            results += drift_from_fp32(modules, fp32_model, x)
    payload = {"preset": preset.name, "dtype": args.dtype, "env": environment(device), "providers": list(modules)}
    if probe_dtypes:
        limits = cpu_probe.limits(model.backbone, config.image_size, results)
        payload["limits"] = limits | {"macs": provider_macs(config)}
    return payload | {"notes": notes, "results": results}


def report(payload: dict, providers: list[str]) -> None:
    for note in payload.get("notes", []):
        print(note)
    providers = payload.get("providers", providers)  # those that ran
    rows = [r for r in payload["results"] if r["stage"] in STAGES]
    base = {(r["batch"], r["stage"]): r["median_ms"] for r in rows if r["provider"] == providers[0]}
    table = [
        [
            r["provider"],
            r["batch"],
            r["stage"],
            r["median_ms"],
            r["p90_ms"],
            r["p99_ms"],
            r["images_per_s"],
            base[key] / r["median_ms"] if (key := (r["batch"], r["stage"])) in base else "-",
        ]
        for r in sorted(rows, key=lambda r: (r["batch"], providers.index(r["provider"]), STAGES.index(r["stage"])))
    ]
    env = payload["env"]
    print(
        f"preset {payload['preset']}, {payload['dtype']}, {env['device']} "
        f"({env.get('gpu', env['cpu'])}, {env['torch_threads']} threads), torch {env['torch']}"
    )
    print_table(["provider", "batch", "stage", "median_ms", "p90_ms", "p99_ms", "img/s", f"x vs {providers[0]}"], table)
    e2e = {(r["provider"], r["batch"]): r["median_ms"] for r in rows if r["stage"] == "e2e"}
    for batch in sorted({r["batch"] for r in rows}):
        shares = [
            f"{r['provider']} {100 * r['median_ms'] / e2e[(r['provider'], batch)]:.0f}%"
            for r in rows
            if r["batch"] == batch and r["stage"] == "backbone" and (r["provider"], batch) in e2e
        ]
        print(f"batch {batch}: backbone share of e2e: {', '.join(shares)}")
    for r in payload["results"]:
        if r["stage"] == "max_diff":
            pair = r["provider"].replace("|", " - ")
            print(f"batch {r['batch']}: max |{pair}| over all outputs = {r['abs']:.2e} (relative {r['rel']:.2e})")
    for r in payload["results"]:
        if r["stage"] == "drift_fp32":
            logit = f", score logit {r['logit_rel']:.1e} relative" if "logit_rel" in r else ""
            print(
                f"batch {r['batch']}: {r['provider']} {payload['dtype']} vs reference fp32: max |score diff| "
                f"{r['score']:.1e}{logit}, max |map diff| {r['map']:.1e}"
            )
    peer = {r["batch"]: r["images_per_s"] for r in rows if r["provider"] == peer_anomalib.PEER and r["stage"] == "e2e"}
    for batch, peer_rate in peer.items():
        ratios = [
            f"{r['provider']} {r['images_per_s'] / peer_rate:.1f}x"
            for r in rows
            if r["batch"] == batch and r["stage"] == "e2e" and r["provider"] != peer_anomalib.PEER
        ]
        print(f"batch {batch}: e2e img/s vs anomalib ({payload['dtype']}): {', '.join(ratios)}")
    cpu_probe.report_limits(payload, providers)
    if env["device"] == "cpu":
        print("CPU figures only; GPU figures need --device cuda on a GPU host (see bench/README.md).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8], help="batch sizes to sweep")
    parser.add_argument(
        "--providers",
        nargs="+",
        default=list(DEFAULT_PROVIDERS),
        choices=[*PROVIDERS, *SERVED_PROVIDERS],
        help="inference formulations to time; ratios are against the first (triton-grpc: its own table)",
    )
    parser.add_argument("--no-probe", action="store_true", help="CPU: skip the GEMM-rate probe (one backbone's work)")
    parser.add_argument(
        "--compile-backbone",
        action="store_true",
        help="folded provider: torch.compile its backbone (inductor, freezing); compiles in the warm-up calls",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per measurement")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--json", default="bench/results/throughput.json", help="where to write the JSON results")
    stream_grpc.add_arguments(parser)
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch):
        parser.error(f"--batch values must be >= 1, got {args.batch}")
    if args.warmup < 0 or args.repeats < 1:
        parser.error("--warmup must be >= 0 and --repeats >= 1")
    served = [p for p in args.providers if p in SERVED_PROVIDERS]
    args.providers = [p for p in args.providers if p not in SERVED_PROVIDERS]
    payload = run(args) if args.providers else {"preset": args.preset, "results": []}
    if args.providers:
        report(payload, args.providers)
    if served:
        payload["triton_grpc"] = stream_grpc.run(args)
        stream_grpc.report(payload["triton_grpc"])
    print(f"JSON: {write_json(args.json, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
