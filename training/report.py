"""Evaluation report: metrics.json, report.md (the paper's table, the paper's numbers beside ours), PNG overlays.

API (what `ssn eval` wraps):
- `EvalPredictions(scores, labels, maps, masks, paths, images=None, segmented=None)`: everything collected over the
  evaluated split, in dataset order (array semantics: `training.metrics`; images: uint8 [N, H, W, 3] at map
  resolution, e.g. from `training.overlays.display_rgb`, or None to read the few overlay images from `paths`).
- `write_report(predictions, out_dir, dataset=, category=, regime=, ratio=, thresholds=, k=, extra=) -> dict` writes
  `out_dir/metrics.json` (returned), `out_dir/report.md` and `out_dir/overlays/{best,worst}_NN_<name>.png`.
  `thresholds` are the checkpoint's (chosen on a validation split): they pick the overlay cases and give the
  precision/recall/F1 at those thresholds; without them the cases are picked with the F1-optimal image threshold of
  this split (said so in the JSON).
- `write_summary(results, out_dir) -> dict`: several categories' metrics.json contents -> summary.json and
  summary.md, one row per category and the total (mean over categories, as the authors' ResultsWriter).

Paper datasets (mvtec, visa, ksdd2, sensum) get the authors' rows from `training.paper`; others get ours only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.metrics import METRIC_NAMES
from training.metrics import at_threshold
from training.metrics import check_predictions
from training.metrics import compute_metrics
from training.metrics import f1_optimal_threshold
from training.overlays import load_display_image
from training.overlays import save_overlay
from training.overlays import select_cases
from training.paper import PaperRow
from training.paper import paper_rows


@dataclass
class EvalPredictions:
    scores: np.ndarray  # [N] float32 sigmoid image scores
    labels: np.ndarray  # [N] 0 good / 1 defect
    maps: np.ndarray  # [N, H, W] float32 anomaly maps (probabilities)
    masks: np.ndarray  # [N, H, W] bool ground truth
    paths: Sequence[str]  # [N] image files
    images: np.ndarray | None = None  # [N, H, W, 3] uint8 for the overlays, or None: read from paths
    segmented: np.ndarray | None = None  # [N] bool: mask usable (None = all)

    def checked(self) -> EvalPredictions:
        """Validated copy with canonical dtypes; errors name the image file."""
        if len(self.paths) != len(self.scores):
            raise ValueError(f"{len(self.paths)} paths for {len(self.scores)} scores")
        try:
            arrays = check_predictions(self.scores, self.labels, self.maps, self.masks, self.segmented)
        except ValueError as err:
            raise ValueError(_name_image(str(err), self.paths)) from err
        images = self.images
        if images is not None:
            images = np.asarray(images)
            expected = (*arrays[2].shape, 3)
            if images.dtype != np.uint8 or images.shape != expected:
                raise ValueError(f"images must be uint8 {list(expected)}, got {images.dtype} {list(images.shape)}")
        scores, labels, maps, masks, segmented = arrays
        return EvalPredictions(scores, labels, maps, masks, list(self.paths), images, segmented)


def _name_image(message: str, paths: Sequence[str]) -> str:
    return re.sub(r"image (\d+)", lambda m: f"image {m.group(1)} ({paths[int(m.group(1))]})", message, count=1)


def _percent(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" + (f" ±{100 * std:.2f}" if std is not None else "")


def format_table(ours: Sequence[tuple[str, dict]], papers: Sequence[PaperRow]) -> str:
    """Markdown table in the paper's column order, values in % with one decimal; ours in bold, paper rows mean ±std."""
    lines = ["| | " + " | ".join(METRIC_NAMES) + " |", "|---" * (len(METRIC_NAMES) + 1) + "|"]
    for label, values in ours:
        lines.append(f"| **{label}** | " + " | ".join(f"**{_percent(values.get(m))}**" for m in METRIC_NAMES) + " |")
    for row in papers:
        cells = [_percent(row.mean.get(m), row.std.get(m)) for m in METRIC_NAMES]
        lines.append(f"| {row.label()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _file_name(kind: str, rank: int, path: str) -> str:
    name = f"{Path(path).parent.name}_{Path(path).stem}"
    return f"{kind}_{rank:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"


def _write_overlays(p: EvalPredictions, out_dir: Path, threshold: float, pixel: float | None, k: int) -> dict:
    best, worst, margins = select_cases(p.scores, p.labels, threshold, k)
    low, high = float(p.maps.min()), float(p.maps.max())
    heat_range = (0.0, 1.0) if low >= 0.0 and high <= 1.0 else (low, high)
    cases: dict = {"best": [], "worst": []}
    for kind, indices in (("best", best), ("worst", worst)):
        for rank, i in enumerate(indices, start=1):
            path = p.paths[i]
            if p.images is not None:
                rgb, error = p.images[i], None
            else:
                rgb, error = load_display_image(path, p.maps.shape[1:])
            label = "defect" if p.labels[i] else "good"
            title = f"{kind} {rank}: {Path(path).name} ({label}), score {p.scores[i]:.4f}, margin {margins[i]:+.4f}"
            png = save_overlay(
                out_dir / "overlays" / _file_name(kind, rank, path),
                rgb,
                p.masks[i],
                p.maps[i],
                title,
                heat_range,
                pixel,
            )
            case = {
                "file": str(png.relative_to(out_dir)),
                "image": path,
                "label": int(p.labels[i]),
                "score": float(p.scores[i]),
                "margin": float(margins[i]),
            }
            if error:
                case["image_error"] = error
            cases[kind].append(case)
    return cases


def write_report(
    predictions: EvalPredictions,
    out_dir: str | Path,
    *,
    dataset: str,
    category: str | None = None,
    regime: str = "unsupervised",
    ratio: str | None = None,
    thresholds: dict | None = None,
    k: int = 4,
    extra: dict | None = None,
) -> dict:
    """Compute everything and write metrics.json, report.md and the overlays into out_dir; returns the JSON dict."""
    p = predictions.checked()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(p.scores, p.labels, p.maps, p.masks, p.segmented)
    undefined = metrics.pop("undefined")
    rows = paper_rows(dataset, category, regime, ratio)
    thresholds = {key: v for key, v in (thresholds or {}).items() if key in ("image", "pixel")}

    if "image" in thresholds:
        case_threshold, case_source = thresholds["image"], "checkpoint image threshold"
    elif p.labels.any():
        case_threshold = f1_optimal_threshold(p.scores, p.labels)
        case_source = "F1-optimal image threshold of this split (no checkpoint threshold; used only to pick cases)"
    else:
        case_threshold, case_source = 0.5, "0.5 (no defect images and no checkpoint threshold)"
    overlays = _write_overlays(p, out_dir, case_threshold, thresholds.get("pixel"), k)

    result = {
        "warnings": ranking_warnings(metrics),
        "dataset": dataset,
        "category": category,
        "regime": regime,
        "ratio": ratio,
        "images": int(p.labels.size),
        "defect_images": int(p.labels.sum()),
        "segmented_images": int(p.segmented.sum()),
        "resolution": list(p.maps.shape[1:]),
        "metrics": metrics,
        "undefined": undefined,
        "thresholds": thresholds or None,
        "at_thresholds": _at_thresholds(p, thresholds),
        "paper": [{"source": r.source, "category": r.category, "mean": r.mean, "std": r.std} for r in rows],
        "overlays": {"threshold": case_threshold, "threshold_source": case_source, **overlays},
        **(extra or {}),
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    (out_dir / "report.md").write_text(_markdown(result, rows))
    return result


RANKINGS = (("I-AUROC", "defective images below good images"), ("P-AUROC", "defect pixels below good pixels"))
WHAT_TO_TRY = (
    "What to try: labelled defects with masks (the supervised or mixed regime), ImageNet weights instead of a "
    "random backbone (--backbone-weights), another --seed or more --epochs; the overlays below show the images it "
    "gets most wrong."
)


def ranking_warnings(metrics: dict) -> list[str]:
    """An I-AUROC or P-AUROC below 0.5 on a labelled split: the model ranks defects below good (worse than a coin)."""
    found = [
        f"{name} {100 * metrics[name]:.1f} % < 50 %: the model ranks {what} (worse than chance)."
        for name, what in RANKINGS
        if metrics.get(name) is not None and metrics[name] < 0.5
    ]
    return [*found, WHAT_TO_TRY] if found else []


def _at_thresholds(p: EvalPredictions, thresholds: dict) -> dict:
    """Precision / recall / F1 on this split at the checkpoint thresholds."""
    out = {}
    if "image" in thresholds:
        out["image"] = at_threshold(p.scores, p.labels, thresholds["image"])
    if "pixel" in thresholds and p.segmented.any():
        sel = p.segmented.all()
        out["pixel"] = at_threshold(
            p.maps if sel else p.maps[p.segmented], p.masks if sel else p.masks[p.segmented], thresholds["pixel"]
        )
    return out


def _markdown(result: dict, rows: Sequence[PaperRow]) -> str:
    name = " ".join(str(x) for x in (result["dataset"], result["category"]) if x)
    regime = result["regime"] + (f", ratio {result['ratio']}" if result["ratio"] else "")
    lines = [f"# Evaluation: {name}", ""]
    for w in result["warnings"]:  # first thing in the report: the model ranks defects below good images
        lines += [f"> {w}" if w == WHAT_TO_TRY else f"> **WARNING: {w}**", ">" if w != WHAT_TO_TRY else ""]
    lines += [
        f"{result['images']} images ({result['defect_images']} defect, {result['segmented_images']} with usable "
        f"masks) at {result['resolution'][0]}x{result['resolution'][1]}; supervision: {regime}. Values in %; paper "
        "rows are the authors' means ±std over 5 runs (`training/reference/`).",
        "",
        format_table([(f"ours ({name})", result["metrics"])], rows),
        "",
    ]
    if not rows:
        lines += ["No published numbers for this dataset (paper datasets: mvtec, visa, ksdd2, sensum).", ""]
    lines += [f"- {metric}: not computed: {why}" for metric, why in result["undefined"].items()]
    for level, stats in result["at_thresholds"].items():
        t = result["thresholds"][level]
        lines.append(
            f"- {level} threshold {t:.6g}: precision {_percent(stats['precision'])}, recall "
            f"{_percent(stats['recall'])}, F1 {_percent(stats['f1'])}"
        )
    overlays = result["overlays"]
    lines += ["", f"## Overlays (margin against {overlays['threshold']:.6g}: {overlays['threshold_source']})", ""]
    for kind in ("best", "worst"):
        for case in overlays[kind]:
            lines.append(f"![{kind}]({case['file']}) {kind}: `{case['image']}` margin {case['margin']:+.4f}")
            lines.append("")
    return "\n".join(lines)


def write_summary(results: Sequence[dict], out_dir: str | Path) -> dict:
    """Per-category metrics.json contents (one dataset and regime) -> summary.json + summary.md; returns the JSON."""
    if not results:
        raise ValueError("write_summary needs at least one category result")
    first = results[0]
    dataset, regime, ratio = first["dataset"], first["regime"], first["ratio"]
    per_category = {r["category"] or dataset: r["metrics"] for r in results}
    total, missing = {}, {}
    for metric in METRIC_NAMES:
        values = [m[metric] for m in per_category.values()]
        total[metric] = float(np.mean(values)) if None not in values else None
        if None in values:
            missing[metric] = [c for c, m in per_category.items() if m[metric] is None]
    summary = {
        "dataset": dataset,
        "regime": regime,
        "ratio": ratio,
        "categories": per_category,
        "total": total,
        "total_missing": missing,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")

    papers: dict[str, PaperRow] = {}
    for category in [*per_category, "total"]:
        for row in paper_rows(dataset, category, regime, ratio):
            papers.setdefault(row.category, row)  # the first source: ICPR where it applies
    source = next(iter(papers.values())).source if papers else None
    note = f"ours / {source}" if source else "ours (no published numbers for this dataset)"
    lines = [f"# Summary: {dataset} ({regime})", "", f"Values in %: {note}.", ""]
    lines += ["| category | " + " | ".join(METRIC_NAMES) + " |", "|---" * (len(METRIC_NAMES) + 1) + "|"]
    for category, values in [*per_category.items(), ("total", total)]:
        paper = papers.get(category)
        cells = [_percent(values[m]) + (f" / {_percent(paper.mean.get(m))}" if paper else "") for m in METRIC_NAMES]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines += [""] + [f"- {metric}: no total, not computed for {cats}" for metric, cats in missing.items()]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return summary
