"""Evaluation glue: predictions through an inference module, F1 thresholds on a validation split, the report.

    checkpoint -> inference module (pipeline: SuperSimpleNet, or the folded graph when present) with sigmoid maps
      -> collect(test split) -> training.report.write_report (metrics.json, report.md, overlays)
      -> collect(validation split) -> training.metrics.f1_thresholds -> checkpoint metadata `thresholds`

Validation split: the layout's own `val` split when it has one (the folder layout), else a deterministic,
label-stratified part of the test split (`training.data.base.validation_split`, as anomalib's default "from test"
validation). The paper's threshold-free metrics are computed on the whole test split, as the authors do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.model import SuperSimpleNet

PROVIDERS = ("eager", "folded")
VAL_SEED = 0
EXIT_BELOW = 3  # `--fail-below` not met (2: bad input, 1: a crash)


def inference_module(model: SuperSimpleNet, provider: str = "eager") -> torch.nn.Module:
    """An inference module (forward(images) -> Prediction) for `model`, with probability maps."""
    from pipeline.inference import inference_module as serving_module

    if provider not in PROVIDERS:
        raise ValueError(f"provider {provider!r} is unknown; accepted: {', '.join(PROVIDERS)}")
    model.map_sigmoid = True
    return serving_module(model, "folded") if provider == "folded" else model.eval()


@dataclass
class Collected:
    scores: np.ndarray  # [N] sigmoid score
    labels: np.ndarray  # [N] int
    maps: np.ndarray  # [N, H, W] float32 probabilities
    masks: np.ndarray  # [N, H, W] bool
    segmented: np.ndarray  # [N] bool
    paths: list[str]


@torch.inference_mode()
def collect(module: torch.nn.Module, dataset, batch_size: int, device: torch.device, num_workers: int = 0) -> Collected:
    """Run `module` over `dataset` in index order; everything on the CPU as numpy."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    parts: dict[str, list] = {k: [] for k in ("scores", "labels", "maps", "masks", "segmented", "paths")}
    for samples in loader:
        pred = module(samples["image"].to(device))
        parts["scores"].append(pred.score.float().cpu().numpy())
        parts["maps"].append(pred.anomaly_map[:, 0].float().cpu().numpy())
        parts["labels"].append(samples["label"].numpy().astype(np.int64))
        parts["masks"].append(samples["mask"][:, 0].numpy() > 0)
        parts["segmented"].append(samples["is_segmented"].numpy().astype(bool))
        parts["paths"].extend(samples["path"])
    arrays = {k: np.concatenate(v) for k, v in parts.items() if k != "paths"}
    return Collected(paths=parts["paths"], **arrays)


def validation_and_test(name: str, root, config, category, options: dict, fraction: float):
    """(validation dataset, test dataset, description of where the validation split came from)."""
    from training.data.base import available_splits
    from training.data.base import build_dataset
    from training.data.base import validation_split

    test = build_dataset(name, root, "test", config, category, **options)
    if "val" in available_splits(name, root):
        val = build_dataset(name, root, "val", config, category, **options)
        return val, test, f"the {name} layout's val split ({len(val)} images)"
    _, val = validation_split(test, fraction, VAL_SEED)
    source = f"{len(val)} images of the test split of {test.source} (fraction {fraction}, seed {VAL_SEED})"
    return val, test, source


def choose_thresholds(collected: Collected, source: str) -> dict:
    """F1-optimal thresholds in raw probability space (BRIEF contract) plus where they came from."""
    from training.metrics import f1_thresholds

    found = f1_thresholds(collected.scores, collected.labels, collected.maps, collected.masks, collected.segmented)
    thresholds = {k: float(found[k]) for k in ("image", "pixel") if k in found}
    thresholds["source"] = f"F1-optimal on {source}"
    for key, reason in found.get("undefined", {}).items():
        thresholds[f"{key}_undefined"] = reason
    return thresholds


def report(
    collected: Collected, out_dir: Path, dataset: str, category, regime: str, thresholds: dict, extra: dict
) -> dict:
    from training.report import EvalPredictions
    from training.report import write_report

    predictions = EvalPredictions(
        collected.scores,
        collected.labels,
        collected.maps,
        collected.masks,
        collected.paths,
        segmented=collected.segmented,
    )
    return write_report(
        predictions, out_dir, dataset=dataset, category=category, regime=regime, thresholds=thresholds, extra=extra
    )


def format_metrics(result: dict) -> str:
    from training.metrics import METRIC_NAMES

    cells = []
    for name in METRIC_NAMES:
        value = result["metrics"].get(name)
        cells.append(f"{name} {'n/a' if value is None else f'{100 * value:.1f}'}")
    return "  ".join(cells)


def store_thresholds(checkpoint: Path, model: SuperSimpleNet, backbone_source: str, thresholds: dict) -> None:
    """Rewrite `checkpoint` with `thresholds` in its metadata (write, then rename)."""
    from pipeline.checkpoint import read_metadata
    from pipeline.checkpoint import save_checkpoint

    embedded = read_metadata(checkpoint).get("backbone_embedded", "true") == "true"
    save_checkpoint(model, checkpoint, backbone_source, embedded, thresholds)


def parse_gate(item: str) -> tuple[str, float]:
    """`--fail-below METRIC=VALUE` -> (metric, fraction); VALUE a fraction (0.85) or a percentage (85%)."""
    import argparse

    from training.metrics import METRIC_NAMES

    metric, sep, raw = item.partition("=")
    if not sep or metric not in METRIC_NAMES:
        raise argparse.ArgumentTypeError(
            f"{item!r}: expected METRIC=VALUE with METRIC one of {', '.join(METRIC_NAMES)}"
        )
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{item!r}: VALUE must be a fraction in [0, 1] (0.85) or a percentage (85%)")
    return metric, value


def gate_failures(result: dict, gates: list[tuple[str, float]]) -> list[str]:
    """The `--fail-below` gates a report's metrics do not meet (a metric that could not be computed fails)."""
    failures = []
    for metric, limit in gates:
        value = result["metrics"].get(metric)
        if value is None:
            why = result.get("undefined", {}).get(metric, "not computed")
            failures.append(f"{metric} could not be computed ({why}); required >= {100 * limit:.1f}")
        elif value < limit:
            failures.append(f"{metric} {100 * value:.1f} < {100 * limit:.1f}")
    return failures


def announce(result: dict, gates: list[tuple[str, float]]) -> int:
    """Print the report's ranking warnings and the gates loudly (stderr); returns the exit status (0 or EXIT_BELOW)."""
    import sys

    banner = "!" * 100
    if result.get("warnings"):
        lines = [banner, *(f"WARNING: {w}" for w in result["warnings"]), banner]
        print("\n".join(lines), file=sys.stderr, flush=True)
    failures = gate_failures(result, gates)
    if failures:
        print(f"FAILED --fail-below: {'; '.join(failures)} (exit status {EXIT_BELOW})", file=sys.stderr, flush=True)
        return EXIT_BELOW
    if gates:
        print("passed --fail-below: " + ", ".join(f"{m} >= {100 * v:.1f}" for m, v in gates), flush=True)
    return 0
