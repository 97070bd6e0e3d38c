"""`ssn` command line. Subcommands today: info, infer (later issues add train/eval/export/deploy/serve/stream)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pipeline.config import PRESETS
from pipeline.config import get_preset
from pipeline.config import override


def _cmd_info(args: argparse.Namespace) -> int:
    from pipeline.stats import model_stats

    preset = get_preset(args.preset)
    config = override(preset.model, args.set)
    rows = model_stats(config)
    if args.json:
        print(
            json.dumps(
                {
                    "preset": preset.name,
                    "model": dataclasses.asdict(config),
                    "train": dataclasses.asdict(preset.train),
                    "modules": [dataclasses.asdict(r) | {"gflops": r.gflops} for r in rows],
                },
                indent=2,
            )
        )
        return 0
    print(f"preset {preset.name}: {preset.note}")
    for key, value in dataclasses.asdict(config).items():
        print(f"  model.{key:<20} {value}")
    for key, value in dataclasses.asdict(preset.train).items():
        print(f"  train.{key:<20} {value}")
    fh, fw = config.feature_size
    print(
        f"  features              {config.feature_channels} x {fh} x {fw} (cls head variant: "
        f"{'ICPR, adapted' if config.adapt_cls_features else 'JIMS, raw pooled'})"
    )
    print(f"\n{'module':<12} {'params':>12} {'trainable':>12} {'GFLOPs/img':>11}")
    for r in rows:
        print(f"{r.name:<12} {r.params:>12,} {r.trainable:>12,} {r.gflops:>11.2f}")
    print("GFLOPs = 2 x MACs of convs and linears at image_size, batch 1; postprocess is the 2-D blur.")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    import torch

    from pipeline.checkpoint import load_checkpoint
    from pipeline.images import ImageReadError
    from pipeline.images import load_image
    from pipeline.images import save_heatmap

    # map_sigmoid: heat maps and map_max as probabilities
    model, _ = load_checkpoint(
        args.checkpoint, backbone_weights=args.backbone_weights, impl=args.impl, map_sigmoid=True
    )
    failed = 0
    results = []
    for path in args.images:
        try:
            rgb, x = load_image(path, model.config)
        except ImageReadError as err:
            failed += 1
            print(f"error: {err}", file=sys.stderr)
            results.append({"image": str(path), "error": str(err)})
            continue
        with torch.inference_mode():
            pred = model(x)
        prob_map = pred.anomaly_map[0, 0].numpy()
        row = {
            "image": str(path),
            "score": float(pred.score[0]),
            "score_logit": float(pred.score_logit[0]),
            "map_max": float(prob_map.max()),
        }
        if args.out:
            row["heatmap"] = str(save_heatmap(rgb, prob_map, Path(args.out) / f"{Path(path).stem}_heatmap.png"))
        results.append(row)
        if not args.json:
            print(f"{row['score']:.6f}  {path}" + (f"  -> {row['heatmap']}" if args.out else ""))
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssn", description="SuperSimpleNet surface-defect detection")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="config, parameter counts and GFLOPs per module")
    info.add_argument("--preset", default="mvtec", help=f"one of: {', '.join(PRESETS)}")
    info.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a ModelConfig field, e.g. --set align_corners=false",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_cmd_info)

    infer = sub.add_parser("infer", help="defect score per image; heat-map PNGs with --out")
    infer.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by this project")
    infer.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, ...)")
    infer.add_argument("--out", help="folder for <stem>_heatmap.png files")
    infer.add_argument(
        "--backbone-weights",
        default=None,
        help="IMAGENET1K_V1, a local weights file, or 'random'; only for checkpoints without an "
        "embedded backbone (default: the source recorded in the checkpoint)",
    )
    infer.add_argument(
        "--impl",
        default="fast-cpu",
        choices=["reference", "fast-cpu"],
        help="formulation of the fused ops (equal results; fast-cpu is quicker)",
    )
    infer.add_argument("--json", action="store_true", help="print JSON results")
    infer.set_defaults(func=_cmd_infer)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"ssn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
