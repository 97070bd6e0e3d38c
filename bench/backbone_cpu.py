"""CPU options for the frozen backbone (issue: folded graph, item 6): which layout / compiler wins, by measurement.

    python bench/backbone_cpu.py --preset mvtec --batch 1 8
    python bench/backbone_cpu.py --preset tiny --variants eager channels_last compile

Variants: `eager` (NCHW input, the reference model), `channels_last` (NHWC input; what FoldedSSN feeds),
`jit_freeze` (TorchScript trace + freeze + optimize_for_inference: oneDNN/mkldnn weights folded in),
`compile` (torch.compile, inductor with freezing). Repeats are interleaved across variants, so a noisy shared
machine slows them alike; the median and min are reported with the setup (trace/compile) time and the largest
output difference from `eager` relative to its max |value|. Random backbone weights: timing only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import environment  # noqa: E402
from bench.harness import print_table  # noqa: E402
from bench.harness import write_json  # noqa: E402
from pipeline.backbone import load_backbone  # noqa: E402
from pipeline.config import PRESETS  # noqa: E402
from pipeline.config import get_preset  # noqa: E402

VARIANTS = ("eager", "channels_last", "jit_freeze", "compile")


def build(variant: str, backbone: torch.nn.Module, x: torch.Tensor):
    """A zero-argument callable running `backbone` on `x` the way `variant` says."""
    x_cl = x.contiguous(memory_format=torch.channels_last)
    if variant == "eager":
        return lambda: backbone(x)
    if variant == "channels_last":
        return lambda: backbone(x_cl)
    if variant == "jit_freeze":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript deprecation notices
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(backbone, x_cl)))
        return lambda: frozen(x_cl)
    if variant == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold the frozen weights (oneDNN weight prepacking on CPU)
        compiled = torch.compile(backbone)
        return lambda: compiled(x_cl)
    raise ValueError(f"variant={variant!r} is unknown; accepted: {', '.join(VARIANTS)}")


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights on purpose: timing only
        backbone = load_backbone(cfg.backbone, "random")
    results = []
    for batch in args.batch:
        x = torch.randn(batch, 3, *cfg.image_size, generator=torch.Generator().manual_seed(0))
        calls, setup, diffs = {}, {}, {}
        with torch.inference_mode():
            truth = backbone(x)
            for variant in args.variants:
                start = time.perf_counter()
                calls[variant] = build(variant, backbone, x)
                out = calls[variant]()  # first call: tracing/compilation happens here
                setup[variant] = time.perf_counter() - start
                diffs[variant] = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(out, truth))
            for _ in range(args.warmup):
                for fn in calls.values():
                    fn()
            times = {v: [] for v in calls}
            for _ in range(args.repeats):  # interleaved: load changes hit every variant alike
                for variant, fn in calls.items():
                    start = time.perf_counter()
                    fn()
                    times[variant].append(time.perf_counter() - start)
        for variant in args.variants:
            t = times[variant]
            results.append(
                {
                    "batch": batch,
                    "variant": variant,
                    "median_ms": 1e3 * statistics.median(t),
                    "min_ms": 1e3 * min(t),
                    "setup_s": setup[variant],
                    "max_rel_diff": diffs[variant],
                }
            )
    return {"preset": args.preset, "env": environment(torch.device("cpu")), "results": results}


def report(payload: dict) -> None:
    env = payload["env"]
    where = f"{env['cpu']}, {env['torch_threads']} threads"
    print(f"preset {payload['preset']}, backbone on CPU ({where}), torch {env['torch']}")
    base = {r["batch"]: r["median_ms"] for r in payload["results"] if r["variant"] == "eager"}
    rows = [
        [
            r["batch"],
            r["variant"],
            r["median_ms"],
            r["min_ms"],
            base.get(r["batch"], float("nan")) / r["median_ms"],
            r["setup_s"],
            f"{r['max_rel_diff']:.1e}",
        ]
        for r in payload["results"]
    ]
    print_table(["batch", "variant", "median_ms", "min_ms", "x vs eager", "setup_s", "max_rel_diff"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes to sweep")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="what to time")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (every variant once per round)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median and min reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--json", default="bench/results/backbone_cpu.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch) or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch values and --repeats must be >= 1, --warmup >= 0")
    payload = run(args)
    report(payload)
    print(f"JSON: {write_json(args.json, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
