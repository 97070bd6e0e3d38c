"""Throughput and latency per stage and end to end, for a batch sweep and several providers.

    python bench/throughput.py                         # tiny preset on CPU, under a minute
    python bench/throughput.py --preset mvtec --device cuda --dtype fp16 --batch 1 8 16 64

Stages: backbone, feature (upscale+pool+adaptor), heads (seg + cls), postprocess (upsample+blur), e2e (the
model's forward) and, on CUDA, e2e+io (host->device input copy, forward, score and map copied back: the paper's
latency protocol). Providers: `reference` (straightforward composition) and `fast-cpu` (exact reorderings,
kernels/reference.py). Warm-up calls are excluded; the median of the repeats is reported, with p90/p99.
The backbone runs on random weights: weights do not change timing, and none are downloaded.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import environment  # noqa: E402
from bench.harness import print_table  # noqa: E402
from bench.harness import summarize  # noqa: E402
from bench.harness import time_calls  # noqa: E402
from bench.harness import write_json  # noqa: E402
from kernels import reference  # noqa: E402
from pipeline.backbone import load_backbone  # noqa: E402
from pipeline.config import PRESETS  # noqa: E402
from pipeline.config import get_preset  # noqa: E402
from pipeline.model import SuperSimpleNet  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STAGES = ("backbone", "feature", "heads", "postprocess", "e2e", "e2e+io")


def stage_calls(model: SuperSimpleNet, x: torch.Tensor) -> dict[str, callable]:
    """One zero-argument callable per stage, each fed with precomputed inputs of the previous stage."""
    cfg = model.config
    need_pooled = not cfg.adapt_cls_features
    with torch.inference_mode():
        l2, l3 = model.backbone(x)
        feats = model.features(x, need_pooled)
        seg_map, _ = model.heads(feats.adapted, model.cls_input(feats))
    w, b = model.adaptor.weight, model.adaptor.bias
    calls = {
        "backbone": lambda: model.backbone(x),
        "feature": lambda: reference.feature_stage(l2, l3, w, b, cfg.align_corners, model.impl, need_pooled),
        "heads": lambda: model.heads(feats.adapted, model.cls_input(feats)),
        "postprocess": lambda: model.postprocess(seg_map),
        "e2e": lambda: model(x),
    }
    if x.device.type == "cuda":  # the paper's protocol: host->device copy, forward, both outputs back to the host
        x_host = x.cpu().pin_memory()

        def with_io():
            pred = model(x_host.to(x.device, non_blocking=True))
            return pred.score.cpu(), pred.anomaly_map.cpu()

        calls["e2e+io"] = with_io
    return calls


def output_diffs(model: SuperSimpleNet, x: torch.Tensor, providers: list[str]) -> tuple[float, float]:
    """Largest |first provider - other| over all outputs: absolute, and relative to the output's max |value|."""
    outs = []
    with torch.inference_mode():
        for impl in providers:
            model.impl = impl
            outs.append(model(x))
    pairs = [(a.float(), b.float()) for o in outs[1:] for a, b in zip(outs[0], o)]
    absolute = max(((a - b).abs().max().item() for a, b in pairs), default=0.0)
    relative = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() for a, b in pairs) if pairs else 0.0
    return absolute, relative


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone on purpose: timing only
        backbone = load_backbone(preset.model.backbone, "random")
    torch.manual_seed(0)
    model = SuperSimpleNet(preset.model, backbone).to(device=device, dtype=DTYPES[args.dtype]).eval()

    results = []
    for batch in args.batch:
        x = torch.randn(batch, 3, *preset.model.image_size, device=device, dtype=DTYPES[args.dtype])
        for impl in args.providers:
            model.impl = impl
            for stage, fn in stage_calls(model, x).items():
                times = time_calls(fn, device, args.warmup, args.repeats)
                results.append({"provider": impl, "batch": batch, "stage": stage, **summarize(times, batch)})
        absolute, relative = output_diffs(model, x, args.providers)
        results.append(
            {
                "provider": "|".join(args.providers),
                "batch": batch,
                "stage": "max_diff",
                "abs": absolute,
                "rel": relative,
            }
        )
    return {"preset": preset.name, "dtype": args.dtype, "env": environment(device), "results": results}


def report(payload: dict, providers: list[str]) -> None:
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
            base[(r["batch"], r["stage"])] / r["median_ms"],
        ]
        for r in rows
    ]
    env = payload["env"]
    print(
        f"preset {payload['preset']}, {payload['dtype']}, {env['device']} "
        f"({env.get('gpu', env['cpu'])}, {env['torch_threads']} threads), torch {env['torch']}"
    )
    print_table(["provider", "batch", "stage", "median_ms", "p90_ms", "p99_ms", "img/s", f"x vs {providers[0]}"], table)
    for r in payload["results"]:
        if r["stage"] == "max_diff":
            pair = r["provider"].replace("|", " - ")
            print(f"batch {r['batch']}: max |{pair}| over all outputs = {r['abs']:.2e} (relative {r['rel']:.2e})")
    if env["device"] == "cpu":
        print("CPU figures only; GPU figures need --device cuda on a GPU host (see bench/README.md).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8], help="batch sizes to sweep")
    parser.add_argument("--providers", nargs="+", default=list(reference.IMPLS), choices=list(reference.IMPLS))
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per measurement")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--json", default="bench/results/throughput.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch):
        parser.error(f"--batch values must be >= 1, got {args.batch}")
    if args.warmup < 0 or args.repeats < 1:
        parser.error("--warmup must be >= 0 and --repeats >= 1")
    payload = run(args)
    report(payload, args.providers)
    print(f"JSON: {write_json(args.json, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
