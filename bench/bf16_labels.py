"""How far bf16 moves a trained checkpoint's outputs, and whether any label flips at its stored thresholds.

    python bench/bf16_labels.py --checkpoint runs/tiny.safetensors        # `make demo`'s checkpoint, synthetic split
    python bench/bf16_labels.py --checkpoint ck.safetensors --synthetic-data data/synth --category fabric

The test split (the synthetic line by default) goes through the fp32 `reference` model (the truth) and through each
provider at its dtype: `folded` fp32 (the control: rounding only), `folded` bf16 and `reference` bf16 (weights and
activations bf16; oneDNN accumulates its bf16 GEMMs and convolutions in fp32). onnxruntime has no bf16 on CPU
(bench/ort_provider.py). Per provider: max |score diff| and |map diff| (probabilities, and relative to the fp32
maximum), image labels flipped at the checkpoint's image threshold, mask pixels flipped at its pixel threshold.
bf16 needs AVX512-BF16 or AMX-BF16 (refused otherwise, as in bench/throughput.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cpu_probe import bf16_problem  # noqa: E402
from bench.harness import print_table  # noqa: E402
from bench.harness import write_json  # noqa: E402
from pipeline.checkpoint import load_checkpoint  # noqa: E402
from pipeline.folded import FoldedSSN  # noqa: E402
from pipeline.inference import Thresholds  # noqa: E402

PROVIDERS = (("folded", "fp32"), ("folded", "bf16"), ("reference", "bf16"))


def compare(truth: dict[str, torch.Tensor], got: dict[str, torch.Tensor], thresholds: Thresholds) -> dict[str, float]:
    """Movement of `got` from `truth` (each {'score': [N], 'map': [N, 1, H, W]} probabilities) and label flips."""
    row = {}
    for name in ("score", "map"):
        delta = (got[name].float() - truth[name]).abs().max().item()
        row[name] = delta
        row[f"{name}_rel"] = delta / truth[name].abs().max().clamp_min(1e-12).item()
    if thresholds.image is not None:
        row["labels_flipped"] = int(((got["score"] >= thresholds.image) != (truth["score"] >= thresholds.image)).sum())
    if thresholds.pixel is not None:
        row["pixels_flipped"] = int(((got["map"] >= thresholds.pixel) != (truth["map"] >= thresholds.pixel)).sum())
    row["images"], row["pixels"] = truth["score"].numel(), truth["map"].numel()
    return row


def predict(module: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype, batch: int) -> dict[str, torch.Tensor]:
    scores, maps = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            pred = module(images[start : start + batch].to(dtype))
            scores.append(pred.score.float())
            maps.append(pred.anomaly_map.float())
    return {"score": torch.cat(scores), "map": torch.cat(maps)}


def split_images(config, data: str | None, category: str | None) -> torch.Tensor:
    from training.data.base import build_dataset

    dataset = build_dataset("synthetic", data, "test", config, category=category)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])  # [N, 3, H, W]


def run(args: argparse.Namespace) -> dict:
    problem = bf16_problem()
    if problem is not None:
        raise SystemExit(f"bf16: {problem}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, metadata = load_checkpoint(args.checkpoint, impl="reference", map_sigmoid=True)
    thresholds = Thresholds.from_metadata(metadata)
    if thresholds.image is None:
        raise SystemExit(f"{args.checkpoint} stores no thresholds; `ssn eval --store-thresholds` writes them")
    images = split_images(model.config, args.synthetic_data, args.category)
    truth = predict(model.eval(), images, torch.float32, args.batch)
    results = []
    for provider, dtype_name in PROVIDERS:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        if provider == "folded":
            module = FoldedSSN.from_model(model, dtype=dtype)
        else:
            module = load_checkpoint(args.checkpoint, impl="reference", map_sigmoid=True)[0].to(dtype).eval()
        row = compare(truth, predict(module, images, dtype, args.batch), thresholds)
        results.append({"provider": provider, "dtype": dtype_name, **row})
    return {"checkpoint": str(args.checkpoint), "thresholds": vars(thresholds), "results": results}


def report(payload: dict) -> None:
    th = payload["thresholds"]
    first = payload["results"][0]
    print(
        f"{payload['checkpoint']}: {first['images']} test images, thresholds image {th['image']}, "
        f"pixel {th['pixel']}; truth = reference fp32"
    )
    rows = [
        [
            r["provider"],
            r["dtype"],
            f"{r['score']:.2e}",
            f"{r['score_rel']:.2e}",
            f"{r['map']:.2e}",
            f"{r['map_rel']:.2e}",
            f"{r.get('labels_flipped', '-')} / {r['images']}",
            f"{r.get('pixels_flipped', '-')} / {r['pixels']}",
        ]
        for r in payload["results"]
    ]
    headers = ["provider", "dtype", "max |score diff|", "rel", "max |map diff|", "rel", "labels flipped"]
    headers.append("pixels flipped")
    print_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a trained checkpoint with stored thresholds")
    parser.add_argument("--synthetic-data", help="the synthetic dataset folder (default: generated in the cache)")
    parser.add_argument("--category", help="synthetic category (default: metal)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--json", default="bench/results/bf16_labels.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    payload = run(args)
    report(payload)
    print(f"JSON: {write_json(args.json, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
