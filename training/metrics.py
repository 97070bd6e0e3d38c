"""The paper's evaluation metrics (spec §3) and F1-optimal alarm thresholds, on numpy arrays.

API (all inputs are numpy arrays for the whole evaluated split, in test-set order):
- `compute_metrics(scores, labels, maps, masks, segmented=None) -> dict`: the seven metrics under the authors' JSON
  names (`METRIC_NAMES`): float in [0, 1], or None when it cannot be computed, with the reason under
  `result["undefined"][name]`.
- `f1_thresholds(scores, labels, maps, masks, segmented=None) -> dict`: `{"image": float, "pixel": float}` as the
  checkpoint `thresholds` contract wants (raw probability space; predict a defect when value >= threshold). A
  threshold that cannot be chosen is left out and explained under `"undefined"`.
- `f1_optimal_threshold(values, targets) -> float`: the primitive behind both; `at_threshold(values, targets, t)`:
  precision / recall / F1 of a fixed threshold.

Inputs:
- scores [N] float: image score probabilities, sigmoid(s) of the classification head (not the map max).
- labels [N] {0, 1}: 1 = defect image.
- maps [N, H, W] (or [N, 1, H, W]) float32: anomaly maps at input resolution; probabilities (map_sigmoid=True)
  for `f1_thresholds`. Rank metrics are the same for logit maps.
- masks [N, H, W] (or [N, 1, H, W]) bool or {0, 1}: ground truth at the same resolution; all False for good images.
- segmented [N] bool or None: images whose mask is usable (False for defect images without a mask); pixel metrics
  and the pixel threshold use only those. None = all.

Semantics (authors' `train.py` test(), anomalib 0.7 metrics): scores, the per-image map maxima and the maps are each
min-max normalised over the whole split (float32, as the official code; rank metrics do not change); I-AUROC and
AP-det on the scores, seg-I-AUROC and seg-AP-det on the map maxima, P-AUROC and AP-loc over all pixels, AUPRO to
FPR 0.3 as `training.aupro`. ROC/AP from scikit-learn (same step and trapezoid rules as torchmetrics). A constant
input normalises to zeros (the official code divides by zero there). Non-finite scores or maps are an error.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score
from sklearn.metrics import precision_recall_curve
from sklearn.metrics import roc_auc_score

from training.aupro import aupro_of
from training.aupro import split_pixels

# order of the paper's tables (spec §4.1)
METRIC_NAMES = ("I-AUROC", "AUPRO", "P-AUROC", "AP-det", "AP-loc", "seg-I-AUROC", "seg-AP-det")
IMAGE_METRICS = ("I-AUROC", "AP-det", "seg-I-AUROC", "seg-AP-det")
PIXEL_METRICS = ("P-AUROC", "AP-loc", "AUPRO")


def min_max(values: np.ndarray) -> np.ndarray:
    """Global min-max normalisation to [0, 1] in float32, as the official test(); constant input gives zeros."""
    values = np.asarray(values, dtype=np.float32)
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def check_predictions(scores, labels, maps, masks, segmented=None):
    """Validate shapes, dtypes and consistency; returns the arrays as (float32, bool, float32, bool, bool)."""
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels)
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks)
    if maps.ndim == 4 and maps.shape[1] == 1:  # [N, 1, H, W] as the model and the datasets give them
        maps = maps[:, 0]
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty [N] array, got shape {list(scores.shape)}")
    n = scores.size
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape [{n}] like scores, got {list(labels.shape)}")
    if maps.ndim != 3 or maps.shape[0] != n:
        raise ValueError(f"maps must have shape [{n}, H, W], got {list(maps.shape)}")
    if masks.shape != maps.shape:
        raise ValueError(f"masks must have the shape of maps {list(maps.shape)}, got {list(masks.shape)}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (good) or 1 (defect), got values {np.unique(labels)[:5].tolist()}")
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise ValueError("masks must be boolean or contain only 0 and 1")
        masks = masks.astype(bool)
    labels = labels.astype(bool)
    segmented = np.ones(n, dtype=bool) if segmented is None else np.asarray(segmented, dtype=bool)
    if segmented.shape != (n,):
        raise ValueError(f"segmented must have shape [{n}], got {list(segmented.shape)}")
    for name, array in (("scores", scores), ("maps", maps)):
        bad = ~np.isfinite(array)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise ValueError(f"{name} contain {int(bad.sum())} non-finite values (first in image {first})")
    marked_good = masks.reshape(n, -1).any(axis=1) & ~labels
    if marked_good.any():
        raise ValueError(f"image {int(np.argmax(marked_good))} is labelled good but its mask has defect pixels")
    return scores, labels, maps, masks, segmented


def _image_metrics(values: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}I-AUROC": float(roc_auc_score(labels, values)),
        f"{prefix}AP-det": float(average_precision_score(labels, values)),
    }


def compute_metrics(scores, labels, maps, masks, segmented=None, fpr_limit: float = 0.3) -> dict:
    """The seven metrics of spec §3 -> {name: float | None, ..., "undefined": {name: reason}}."""
    scores, labels, maps, masks, segmented = check_predictions(scores, labels, maps, masks, segmented)
    result: dict = dict.fromkeys(METRIC_NAMES)
    undefined: dict[str, str] = {}

    n_defect = int(labels.sum())
    if 0 < n_defect < labels.size:
        result.update(_image_metrics(min_max(scores), labels, ""))
        result.update(_image_metrics(min_max(maps.max(axis=(1, 2))), labels, "seg-"))
    else:
        kind = "defect" if n_defect == 0 else "good"
        reason = f"no {kind} images among {labels.size}: image-level metrics need both good and defect images"
        undefined.update(dict.fromkeys(IMAGE_METRICS, reason))

    maps, masks = _with_masks(maps, masks, segmented)  # [M, H, W]: images with usable masks
    if pixel_reason := _pixel_metrics_reason(masks):
        undefined.update(dict.fromkeys(PIXEL_METRICS, pixel_reason))
    else:
        pixels = split_pixels(maps, masks)
        low, high = maps.min(), maps.max()
        for scores_of_kind in (pixels.background, pixels.defect):  # min_max in place: monotone, sorts stay valid
            _rescale_in_place(scores_of_kind, low, high)
        values, targets, weights = weighted_pixel_samples(pixels.background, pixels.defect)
        result["P-AUROC"] = float(roc_auc_score(targets, values, sample_weight=weights))
        result["AP-loc"] = float(average_precision_score(targets, values, sample_weight=weights))
        result["AUPRO"], reason = aupro_of(pixels, fpr_limit)
        if reason:
            undefined["AUPRO"] = reason
    result["undefined"] = undefined
    return result


def _rescale_in_place(values: np.ndarray, low: np.float32, high: np.float32) -> None:
    """The float32 operations of `min_max` with a given global range."""
    if high == low:
        values[:] = 0
    else:
        np.subtract(values, low, out=values)
        np.divide(values, high - low, out=values)


def weighted_pixel_samples(background: np.ndarray, defect: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """background: [Nbg] ascending, defect: [Npos] scores -> (values, targets, weights), ~3x(distinct defect scores).

    Lossless for ROC area, AP and the F1-optimal threshold: every distinct defect score keeps its defect count and
    its tied defect-free count; the defect-free pixels strictly between two consecutive defect scores (or beyond the
    extremes) only add false positives at once, so each such run becomes one sample (at its highest score) weighted
    by its size. Saves sorting ~10^7 pixels again and the memory of doing so.
    """
    distinct, n_defect = np.unique(defect, return_counts=True)  # ascending
    tied_from = np.searchsorted(background, distinct, side="left")
    tied_to = np.searchsorted(background, distinct, side="right")
    gap_from, gap_to = np.r_[0, tied_to], np.r_[tied_from, background.size]  # runs between defect scores
    gap_value = background[np.maximum(gap_to - 1, 0)] if background.size else np.zeros(gap_to.size, np.float32)
    values = np.concatenate([distinct, distinct, gap_value])
    targets = np.r_[np.ones(distinct.size, bool), np.zeros(distinct.size + gap_to.size, bool)]
    weights = np.concatenate([n_defect, tied_to - tied_from, gap_to - gap_from]).astype(np.float64)
    keep = weights > 0
    return values[keep], targets[keep], weights[keep]


def _with_masks(maps: np.ndarray, masks: np.ndarray, segmented: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images whose masks are usable (no copy when that is all of them)."""
    return (maps, masks) if segmented.all() else (maps[segmented], masks[segmented])


def _pixel_metrics_reason(masks: np.ndarray) -> str | None:
    """Why pixel-level metrics cannot be computed on these masks, or None."""
    if masks.shape[0] == 0:
        return "no image has a usable ground-truth mask (segmented is all False)"
    defect_pixels = int(np.count_nonzero(masks))
    if defect_pixels == 0:
        return "no defect pixels in the ground-truth masks: pixel-level metrics need at least one"
    if defect_pixels == masks.size:
        return "every pixel is a defect pixel: pixel-level metrics need defect-free pixels too"
    return None


def f1_optimal_threshold(values, targets, weights=None) -> float:
    """values: [*] scores, targets: [*] bool (weights: [*] counts) -> threshold t maximising F1 of (values >= t).

    anomalib's F1AdaptiveThreshold picks the F1-optimal score itself (the lowest if tied). We return the midpoint
    between it and the next lower score: the same F1 on these values, and a frame scored exactly there keeps its
    label when another inference formulation (folded, fp16, TensorRT) differs in the last bits. Raises ValueError
    without positives.
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    targets = np.asarray(targets, dtype=bool).reshape(-1)
    if values.size != targets.size:
        raise ValueError(f"values ({values.size}) and targets ({targets.size}) differ in size")
    if not targets.any():
        raise ValueError("no positive targets: an F1-optimal threshold needs at least one defect")
    precision, recall, thresholds = precision_recall_curve(targets, values, sample_weight=weights)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best = float(thresholds[int(np.argmax(f1[:-1]))])  # the last (P=1, R=0) point has no threshold
    below = values[values < best]
    return best if below.size == 0 else (best + float(below.max())) / 2


def at_threshold(values, targets, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of (values >= threshold) against targets (0 when undefined)."""
    predicted = np.asarray(values) >= threshold
    targets = np.asarray(targets, dtype=bool)
    tp = int(np.count_nonzero(predicted & targets))
    n_predicted, n_true = int(np.count_nonzero(predicted)), int(np.count_nonzero(targets))
    precision = tp / n_predicted if n_predicted else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _require_probabilities(name: str, values: np.ndarray) -> None:
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name} must be probabilities in [0, 1] for thresholds (raw probability space), got [{low}, {high}]; "
            "use sigmoid scores and maps from a model with map_sigmoid=True"
        )


def f1_thresholds(scores, labels, maps, masks, segmented=None) -> dict:
    """F1-optimal image and pixel thresholds in raw probability space -> {"image": t, "pixel": t[, "undefined"]}."""
    scores, labels, maps, masks, segmented = check_predictions(scores, labels, maps, masks, segmented)
    _require_probabilities("scores", scores)
    _require_probabilities("maps", maps)
    thresholds: dict = {}
    undefined: dict[str, str] = {}
    if labels.any():
        thresholds["image"] = f1_optimal_threshold(scores, labels)
    else:
        undefined["image"] = "no defect images: the image threshold needs at least one"
    maps, masks = _with_masks(maps, masks, segmented)
    if reason := _pixel_metrics_reason(masks):
        undefined["pixel"] = reason
    else:
        background = maps[~masks]  # [Nbg] a copy, sorted in place
        background.sort()
        thresholds["pixel"] = f1_optimal_threshold(*weighted_pixel_samples(background, maps[masks]))
    if undefined:
        thresholds["undefined"] = undefined
    return thresholds
