"""`ssn infer`: score image files with a checkpoint; heat-map PNGs on request. A bad file fails that file only.

With alarm thresholds in the checkpoint (set by `ssn train` / `ssn eval --store-thresholds`) each image also gets a
label (`defect` when score >= the image threshold) and the share of pixels at or above the pixel threshold."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def configure_infer(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by this project")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, ...)")
    parser.add_argument(
        "--out", help="folder for <stem>_heatmap.png files (<parent>_<stem>_heatmap.png where stems repeat)"
    )
    parser.add_argument(
        "--backbone-weights",
        default=None,
        help="IMAGENET1K_V1, a local weights file, or 'random'; only for checkpoints without an "
        "embedded backbone (default: the source recorded in the checkpoint)",
    )
    parser.add_argument(
        "--impl",
        default="folded",
        choices=["folded", "fast-cpu", "reference"],
        help="inference formulation (equal results up to rounding): folded (pipeline/folded.py, fastest), "
        "fast-cpu (reordered fused ops), reference (the plain composition, as trained)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON results")


def _unique_heatmap_names(paths: list[str]) -> dict[str, str]:
    """A distinct file name per input: <stem>_heatmap.png, prefixed by parent folders while stems collide."""
    names: dict[str, str] = {}
    for depth in range(max((len(Path(p).parts) for p in paths), default=1)):
        names = {p: "_".join(Path(p).with_suffix("").parts[-depth - 1 :]) + "_heatmap.png" for p in paths}
        if len(set(names.values())) == len(set(paths)):
            return names
    return {p: f"{i:04d}_{Path(p).stem}_heatmap.png" for i, p in enumerate(paths)}


def run_infer(args) -> int:
    import torch

    from pipeline.checkpoint import load_checkpoint
    from pipeline.images import ImageReadError
    from pipeline.images import load_image
    from pipeline.images import save_heatmap
    from pipeline.inference import Thresholds
    from pipeline.inference import inference_module

    # map_sigmoid: heat maps and map_max as probabilities
    model, metadata = load_checkpoint(
        args.checkpoint, backbone_weights=args.backbone_weights, impl="reference", map_sigmoid=True
    )
    model = inference_module(model, args.impl)  # the served formulations, chosen the same way
    thresholds = Thresholds.from_metadata(metadata)
    heatmap_names = _unique_heatmap_names(args.images)
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
        if thresholds.image is not None:  # raw probability space; a defect when score >= threshold
            row["label"] = "defect" if row["score"] >= thresholds.image else "good"
        if thresholds.pixel is not None:
            row["defect_area"] = float((prob_map >= thresholds.pixel).mean())
        if args.out:
            row["heatmap"] = str(save_heatmap(rgb, prob_map, Path(args.out) / heatmap_names[path]))
        results.append(row)
        if not args.json:
            label = f"  {row['label']:<6}" if "label" in row else ""
            print(f"{row['score']:.6f}{label}  {path}" + (f"  -> {row['heatmap']}" if args.out else ""))
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0
