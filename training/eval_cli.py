"""`ssn eval`: the paper's metrics of a checkpoint on a dataset's test split, a report, and (optionally) new
F1-optimal thresholds from a validation split written back into the checkpoint.

    ssn eval --checkpoint bottle.safetensors --data /data/mvtec --category bottle
    ssn eval --checkpoint ck.safetensors --synthetic --store-thresholds
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def configure_eval(parser: argparse.ArgumentParser) -> None:
    from training.cli import add_data_flags
    from training.cli import add_gate_flag
    from training.evaluate import PROVIDERS
    from training.regimes import REGIMES

    parser.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors checkpoint of this project")
    add_data_flags(parser)
    parser.add_argument("--out", type=Path, help="report folder (default: <checkpoint>.report)")
    parser.add_argument(
        "--supervision",
        choices=list(REGIMES),
        default="unsupervised",
        help="regime the checkpoint was trained in (picks the paper rows shown beside ours)",
    )
    parser.add_argument(
        "--store-thresholds",
        action="store_true",
        help="choose F1-optimal thresholds on the validation split and write them into the checkpoint",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="evaluation batch size")
    parser.add_argument(
        "--provider", default="eager", choices=PROVIDERS, help="inference module that makes predictions"
    )
    parser.add_argument("--json", action="store_true", help="print metrics.json to stdout")
    add_gate_flag(parser)


def run_eval(args) -> int:
    import torch

    from pipeline.checkpoint import load_checkpoint
    from training import evaluate
    from training.cli import dataset_name
    from training.cli import parse_options

    device = torch.device(args.device)
    model, metadata = load_checkpoint(args.checkpoint, impl="fast-cpu" if device.type == "cpu" else "reference")
    model.to(device)
    thresholds = json.loads(metadata.get("thresholds", "{}"))
    name = dataset_name(args, "")
    options = parse_options(args.data_option)
    module = evaluate.inference_module(model, args.provider)
    val, test, val_source = evaluate.validation_and_test(
        name, args.data, model.config, args.category, options, args.val_fraction
    )
    if args.store_thresholds:
        thresholds = evaluate.choose_thresholds(evaluate.collect(module, val, args.batch_size, device), val_source)
        model.map_sigmoid = False
        evaluate.store_thresholds(args.checkpoint, model, metadata.get("backbone_weights", ""), thresholds)
        model.map_sigmoid = True
        print(
            f"thresholds written to {args.checkpoint}: image {thresholds.get('image')}, pixel {thresholds.get('pixel')}"
        )
    out = args.out or args.checkpoint.with_name(args.checkpoint.name + ".report")
    collected = evaluate.collect(module, test, args.batch_size, device, args.workers)
    extra = {
        "checkpoint": str(args.checkpoint),
        "provider": args.provider,
        "backbone": metadata.get("backbone_weights"),
    }
    result = evaluate.report(collected, out, name, args.category, args.supervision, thresholds, extra)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{name}{'/' + args.category if args.category else ''} test split ({len(test)} images)")
        print(evaluate.format_metrics(result))
        print(f"report: {out}/report.md")
    return evaluate.announce(result, args.fail_below)
