"""Evaluation metrics (spec §3): hand-computed cases, scikit-learn agreement, a literal anomalib-0.7 AUPRO oracle."""

from __future__ import annotations

import numpy as np
import pytest
from aupro_oracle import anomalib_aupro
from aupro_oracle import random_case
from aupro_oracle import row_images
from sklearn.metrics import average_precision_score
from sklearn.metrics import roc_auc_score

from training.metrics import METRIC_NAMES
from training.metrics import at_threshold
from training.metrics import check_predictions
from training.metrics import compute_metrics
from training.metrics import f1_optimal_threshold
from training.metrics import f1_thresholds
from training.metrics import min_max
from training.metrics import weighted_pixel_samples

# ---- hand-computed cases ---------------------------------------------------------------------------------------


def test_image_metrics_hand_case():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    maps = np.zeros((4, 2, 2), np.float32)
    maps[:, 0, 0] = [0.2, 0.1, 0.9, 0.3]  # map maxima rank the defects first: seg metrics = 1
    masks = np.zeros((4, 2, 2), bool)
    masks[2:, 1, 1] = True
    result = compute_metrics(scores, labels, maps, masks)
    assert set(result) == {*METRIC_NAMES, "undefined"}
    assert result["I-AUROC"] == pytest.approx(0.75)  # 3 of 4 (defect, good) pairs ordered
    assert result["AP-det"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # precision 1 at recall 1/2, 2/3 at recall 1
    assert result["seg-I-AUROC"] == 1.0 and result["seg-AP-det"] == 1.0


def test_pixel_auroc_ap_hand_case_with_a_tie():
    maps, masks = row_images([(1.0, "D"), (0.5, "D"), (0.5, "."), (0.2, "."), (0.0, ".")])
    result = compute_metrics([0.7], [1], maps, masks)
    assert result["P-AUROC"] == pytest.approx(5.5 / 6)  # 6 pairs; the tie at 0.5 counts one half
    assert result["AP-loc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert result["I-AUROC"] is None and "need both good and defect" in result["undefined"]["I-AUROC"]


# ---- agreement with scikit-learn, normalisation, thresholds ------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties"])
def test_rank_metrics_match_sklearn_on_random_data(ties):
    rng = np.random.default_rng(3)
    n, h, w = 10, 24, 20
    masks = np.zeros((n, h, w), bool)
    for i in range(5):
        y, x = rng.integers(0, 16, 2)
        masks[i, y : y + rng.integers(2, 8), x : x + rng.integers(2, 6)] = True
    labels = masks.reshape(n, -1).any(axis=1)
    maps = rng.random((n, h, w), dtype=np.float32) + masks * np.float32(0.3)
    scores = rng.random(n).astype(np.float32) + labels * 0.3
    if ties:
        maps, scores = np.round(maps * 8) / 8, np.round(scores * 4) / 4
    result = compute_metrics(scores, labels, maps, masks)
    pixels = (maps - maps.min()) / (maps.max() - maps.min())
    seg = maps.max(axis=(1, 2))
    assert result["I-AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["AP-det"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["seg-I-AUROC"] == pytest.approx(roc_auc_score(labels, seg), abs=1e-12)
    assert result["seg-AP-det"] == pytest.approx(average_precision_score(labels, seg), abs=1e-12)
    assert result["P-AUROC"] == pytest.approx(roc_auc_score(masks.ravel(), pixels.ravel()), abs=1e-12)
    assert result["AP-loc"] == pytest.approx(average_precision_score(masks.ravel(), pixels.ravel()), abs=1e-12)
    assert result["AUPRO"] == pytest.approx(anomalib_aupro(pixels.astype(np.float32), masks), abs=2e-6)
    probabilities = maps / np.float32(2)
    pixel_threshold = f1_thresholds(scores / 2, labels, probabilities, masks)["pixel"]
    assert pixel_threshold == f1_optimal_threshold(probabilities, masks)  # weighted samples: the same choice


def test_min_max_normalisation_invariance():
    rng = np.random.default_rng(5)
    masks = np.zeros((6, 12, 12), bool)
    masks[:3, 3:7, 2:9] = True
    labels = masks.reshape(6, -1).any(axis=1)
    maps = (rng.integers(0, 64, masks.shape) / 64 + masks / 4).astype(np.float32)  # dyadic: affine maps are exact
    scores = (rng.integers(0, 16, 6) / 16).astype(np.float32)
    base = compute_metrics(scores, labels, maps, masks)
    moved = compute_metrics(scores * 4 - 3, labels, maps * 4 - 3, masks)
    assert moved == base and None not in base.values()


def test_f1_optimal_threshold_hand_case_and_raw_probability_space():
    # thresholds 0.8 / 0.6 / 0.35 / 0.3 / 0.1 give F1 0.5 / 0.8 / 0.667 / 0.857 / 0.75
    values = np.array([0.1, 0.3, 0.35, 0.6, 0.8], np.float32)
    # best score 0.3, returned midway to the next lower score (0.1): the same F1, robust to last-bit differences
    threshold = f1_optimal_threshold(values, [0, 1, 0, 1, 1])
    assert threshold == pytest.approx(0.2)
    assert at_threshold(values, [0, 1, 0, 1, 1], threshold)["f1"] == pytest.approx(6 / 7)
    maps, masks = row_images([(0.62, "D"), (0.5, "D"), (0.55, "."), (0.3, ".")], [(0.2, "."), (0.45, ".")] * 2)
    thresholds = f1_thresholds([0.9, 0.2], [1, 0], maps, masks)
    # best 0.9 / 0.5, midway to 0.2 / 0.45; raw map values, not min-max
    assert thresholds == {"image": pytest.approx(0.55), "pixel": pytest.approx(0.475)}


def test_thresholds_need_probabilities_and_defects():
    maps, masks = row_images([(3.0, "D"), (-1.0, ".")], [(0.0, "."), (0.5, ".")])
    with pytest.raises(ValueError, match="probabilities"):
        f1_thresholds([0.9, 0.1], [1, 0], maps, masks)
    maps, masks = row_images([(0.9, "."), (0.1, ".")])
    thresholds = f1_thresholds([0.4], [0], maps, masks)
    assert set(thresholds) == {"undefined"} and "no defect images" in thresholds["undefined"]["image"]
    with pytest.raises(ValueError, match="no positive targets"):
        f1_optimal_threshold([0.1, 0.2], [0, 0])


# ---- bad input and undefined metrics ------------------------------------------------------------------------------


def test_clear_errors_for_bad_input():
    maps, masks = np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool)
    with pytest.raises(ValueError, match=r"masks must have the shape of maps \[2, 4, 4\], got \[2, 4, 5\]"):
        compute_metrics([0.1, 0.2], [0, 1], maps, np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match=r"labels must have shape \[2\]"):
        compute_metrics([0.1, 0.2], [0, 1, 1], maps, masks)
    with pytest.raises(ValueError, match=r"maps must have shape \[2, H, W\]"):
        compute_metrics([0.1, 0.2], [0, 1], maps[0], masks)
    masks[1, 0, 0] = True  # [N, 1, H, W] as the model and the datasets give them is accepted
    assert compute_metrics([0.1, 0.2], [0, 1], maps[:, None], masks[:, None].astype(np.float32))["I-AUROC"] == 1.0
    masks[1, 0, 0] = False
    bad = maps.copy()
    bad[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="maps contain 1 non-finite values .first in image 1"):
        compute_metrics([0.1, 0.2], [0, 1], bad, masks)
    marked = masks.copy()
    marked[0, 1, 1] = True
    with pytest.raises(ValueError, match="image 0 is labelled good but its mask has defect pixels"):
        compute_metrics([0.1, 0.2], [0, 1], maps, marked)


def test_undefined_pixel_metrics_say_why():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 8, 8), dtype=np.float32)
    masks = np.zeros((4, 8, 8), bool)
    result = compute_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], maps, masks)  # defects without masks
    assert result["I-AUROC"] == 1.0
    for name in ("P-AUROC", "AP-loc", "AUPRO"):
        assert result[name] is None and "no defect pixels" in result["undefined"][name]
    masks[2:, 2:4, 2:4] = True
    segmented = np.array([True, True, False, False])
    result = compute_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], maps, masks, segmented)
    assert result["AUPRO"] is None and "no defect pixels" in result["undefined"]["AUPRO"]
    result = compute_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], maps, masks, np.array([True, False, True, False]))
    assert None not in (result["P-AUROC"], result["AUPRO"])


def test_bench_metrics_script_runs(tmp_path, capsys):
    """bench/metrics.py prints its table and writes JSON (timings reported, never asserted)."""
    import json

    from bench.metrics import main

    out_json = tmp_path / "metrics.json"
    small = ["--images", "6", "--size", "48", "--regions", "6", "--oracle-images", "2"]
    assert main([*small, "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "compute_metrics (all 7)" in printed and "literal anomalib" in printed
    data = json.loads(out_json.read_text())
    assert data["shape"] == [6, 48, 48] and len(data["steps"]) == 6
    assert data["oracle"]["ours"] == pytest.approx(data["oracle"]["anomalib_literal"], abs=2e-6)


# ---- ties between defect-free pixels and a defect level, with defect-free pixels in between -----------------------


def _brute_force_f1_threshold(values: np.ndarray, targets: np.ndarray) -> float:
    """The lowest value t maximising F1 of (values >= t), over every distinct value (no shortcuts)."""
    best, best_f1 = None, -1.0
    for t in np.unique(values):
        f1 = at_threshold(values, targets, t)["f1"]
        if f1 > best_f1:
            best, best_f1 = t, f1
    return float(best)


def test_pixel_metrics_hand_case_background_tied_with_a_defect_between_two_others():
    # defects 0.9 and 0.5, defect-free 0.7 (between them), 0.5 (tied) and 0.1: of the 6 (defect, defect-free)
    # pairs, 0.9 wins 3, 0.5 loses to 0.7, ties 0.5 (one half) and beats 0.1 -> P-AUROC 4.5 / 6 = 0.75.
    maps, masks = row_images([(0.9, "D"), (0.7, "."), (0.5, "D"), (0.5, "."), (0.1, ".")])
    result = compute_metrics([0.7], [1], maps, masks)
    assert result["P-AUROC"] == pytest.approx(0.75)
    # AP: threshold 0.9 -> P 1, R 1/2; threshold 0.5 -> 2 of 4 predicted are defects, R 1 -> 1/2 + 1/2 * 1/2
    assert result["AP-loc"] == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_metrics_and_threshold_with_ties_between_defect_levels(seed):
    """Defect pixels on a coarse grid of levels, defect-free ones on a finer grid: many ties with a defect level and
    many defect-free values strictly between two defect levels; scikit-learn over every pixel is the truth."""
    rng = np.random.default_rng(seed)
    n, h, w = 4, 10, 12
    masks = np.zeros((n, h, w), bool)
    masks[:2, 2:6, 3:9] = True
    maps = (rng.integers(0, 16, masks.shape) / 16).astype(np.float32)  # defect-free levels: sixteenths
    maps[masks] = (rng.integers(1, 5, int(masks.sum())) / 4).astype(np.float32)  # defect levels: quarters
    scores = np.array([0.9, 0.8, 0.3, 0.2], np.float32)
    labels = masks.reshape(n, -1).any(axis=1)
    result = compute_metrics(scores, labels, maps, masks)
    pixels = (maps - maps.min()) / (maps.max() - maps.min())
    assert result["P-AUROC"] == pytest.approx(roc_auc_score(masks.ravel(), pixels.ravel()), abs=1e-12)
    assert result["AP-loc"] == pytest.approx(average_precision_score(masks.ravel(), pixels.ravel()), abs=1e-12)
    best = _brute_force_f1_threshold(maps.ravel(), masks.ravel())
    pixel_threshold = f1_thresholds(scores, labels, maps, masks)["pixel"]
    below = maps[maps < best]
    assert pixel_threshold == pytest.approx((best + below.max()) / 2 if below.size else best)


# ---- mutation-testing gaps (tests/MUTANTS.md): documented contracts, messages, edge cases --------------------------

# float32 neighbours that the official float32 min-max over [-2.3, 10.7] maps to the same value (a tie)
_LOW, _HIGH, _A, _B = np.float32(-2.3), np.float32(10.7), np.float32(1.2072272), np.float32(1.2072273)


def test_float32_min_max_ties_like_the_official_code():
    assert _A < _B and (_A - _LOW) / (_HIGH - _LOW) == (_B - _LOW) / (_HIGH - _LOW)  # the premise, in numpy
    values = np.array([_LOW, _A, _B, _HIGH], np.float64)
    normalised = min_max(values)
    assert normalised.dtype == np.float32 and normalised[1] == normalised[2]
    assert normalised.tolist() == pytest.approx([0.0, (1.2072272 + 2.3) / 13, (1.2072272 + 2.3) / 13, 1.0], abs=1e-6)
    assert min_max(np.full(3, 7.0)).tolist() == [0.0, 0.0, 0.0]
    # image scores: defects _B and _HIGH, good _LOW and _A; the tie _A ~ _B counts one half -> 3.5 / 4
    maps = np.zeros((4, 2, 2), np.float32)
    maps[:, 0, 0] = [0.1, 0.2, 0.3, 0.4]
    result = compute_metrics([_LOW, _A, _B, _HIGH], [0, 0, 1, 1], maps, np.zeros((4, 2, 2), bool))
    assert result["I-AUROC"] == pytest.approx(0.875)
    # pixels: defect _B, defect-free _A (tied after normalising), _LOW and _HIGH -> P-AUROC (0.5 + 1 + 0) / 3
    maps, masks = row_images([(_B, "D"), (_A, "."), (_LOW, "."), (_HIGH, ".")])
    assert compute_metrics([0.7], [1], maps, masks)["P-AUROC"] == pytest.approx(0.5)
    # float64 maps are read as float32 (the model's output): 0.5 + 1e-12 ties 0.5
    maps64, masks = row_images([(0.5, "D"), (0.5, "."), (0.0, "."), (1.0, ".")])
    maps64 = maps64.astype(np.float64)
    maps64[0, 0, 0] += 1e-12
    assert compute_metrics([0.7], [1], maps64, masks)["P-AUROC"] == pytest.approx(0.5)


def test_check_predictions_returns_the_documented_dtypes():
    masks = np.zeros((3, 1, 2, 2), np.uint8)
    masks[2, 0, 1, 1] = 1
    for segmented in (None, [1, 0, 1]):
        arrays = check_predictions(np.array([0.1, 0.2, 0.9]), [0, 0, 1], np.zeros((3, 1, 2, 2)), masks, segmented)
        assert [a.dtype for a in arrays] == [np.float32, bool, np.float32, bool, bool]
        assert arrays[4].tolist() == ([True] * 3 if segmented is None else [True, False, True])
        assert arrays[3].shape == (3, 2, 2) and arrays[3].sum() == 1


def test_clear_errors_name_the_bad_input():
    maps, masks = np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool)
    with pytest.raises(ValueError, match=r"scores must be a non-empty \[N\] array, got shape \[0\]"):
        compute_metrics([], [], maps[:0], masks[:0])
    with pytest.raises(ValueError, match=r"scores must be a non-empty \[N\] array, got shape \[1, 2\]"):
        compute_metrics([[0.1, 0.2]], [0, 1], maps, masks)
    with pytest.raises(ValueError, match=r"maps must have shape \[2, H, W\], got \[2, 16\]"):
        compute_metrics([0.1, 0.2], [0, 1], maps.reshape(2, 16), masks.reshape(2, 16))
    with pytest.raises(ValueError, match=r"labels must be 0 \(good\) or 1 \(defect\), got values \[0, 2\]"):
        compute_metrics([0.1, 0.2], [0, 2], maps, masks)
    with pytest.raises(ValueError, match="masks must be boolean or contain only 0 and 1"):
        compute_metrics([0.1, 0.2], [0, 1], maps, np.where(np.arange(32).reshape(2, 4, 4) == 20, 2, 0))
    with pytest.raises(ValueError, match=r"segmented must have shape \[2\], got \[3\]"):
        compute_metrics([0.1, 0.2], [0, 1], maps, masks, [True, True, False])
    with pytest.raises(ValueError, match=r"^scores contain 1 non-finite values \(first in image 1\)"):
        compute_metrics([0.1, np.inf], [0, 1], maps, masks)
    marked = masks.copy()
    marked[1, 1, 1] = True
    with pytest.raises(ValueError, match="image 1 is labelled good but its mask has defect pixels"):
        compute_metrics([0.1, 0.2], [1, 0], maps, marked)


def test_undefined_metrics_say_which_images_or_pixels_are_missing():
    rng = np.random.default_rng(1)
    maps, masks = rng.random((3, 4, 4), dtype=np.float32), np.zeros((3, 4, 4), bool)
    no_defects = compute_metrics([0.1, 0.5, 0.2], [0, 0, 0], maps, masks)
    for name in ("I-AUROC", "AP-det", "seg-I-AUROC", "seg-AP-det"):
        assert no_defects[name] is None and "no defect images among 3" in no_defects["undefined"][name]
    masks[:, 1, 1] = True
    no_good = compute_metrics([0.1, 0.5, 0.2], [1, 1, 1], maps, masks)
    assert no_good["I-AUROC"] is None and "no good images among 3" in no_good["undefined"]["I-AUROC"]
    unusable = compute_metrics([0.1, 0.5, 0.2], [1, 1, 1], maps, masks, [False] * 3)
    for name in ("P-AUROC", "AP-loc", "AUPRO"):
        reason = unusable["undefined"][name]
        assert unusable[name] is None and "no image has a usable ground-truth mask (segmented is all False)" in reason
    full = compute_metrics([0.1, 0.5, 0.2], [1, 1, 1], maps, np.ones_like(masks))
    assert full["P-AUROC"] is None and "every pixel is a defect pixel" in full["undefined"]["P-AUROC"]
    undefined = f1_thresholds([0.1, 0.5, 0.2], [0, 0, 0], maps, np.zeros_like(masks))["undefined"]
    assert "no defect pixels" in undefined["pixel"] and "no defect images" in undefined["image"]


def test_compute_metrics_passes_its_fpr_limit_to_aupro():
    maps, masks = random_case(np.random.default_rng(2), ties=False)
    labels = masks.reshape(len(masks), -1).any(axis=1)
    result = compute_metrics(labels.astype(np.float32), labels, maps, masks, fpr_limit=0.2)
    assert result["AUPRO"] == pytest.approx(anomalib_aupro(maps, masks, limit=0.2), abs=2e-6)
    assert abs(result["AUPRO"] - anomalib_aupro(maps, masks, limit=0.3)) > 1e-3  # the limit matters here


def test_at_threshold_hand_cases_and_undefined_rates():
    values = np.array([0.9, 0.7, 0.4, 0.2], np.float32)
    # predicted 0.9, 0.7; true 0.9, 0.4 -> P = R = F1 = 1/2
    assert at_threshold(values, [1.0, 0.0, 1.0, 0.0], 0.5) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert at_threshold(values, [1, 0, 1, 0], 0.95) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}  # none predicted
    assert at_threshold(values, [0, 0, 0, 0], 0.5) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}  # no true ones


def test_f1_optimal_threshold_edge_cases():
    # top score defect-free (P = R = 0 there); best F1 0.5 at 0.8 (P = R = 1/2), not at the low end (P + R > 1)
    values = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], np.float32)
    assert f1_optimal_threshold(values, [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]) == pytest.approx(0.75)
    assert f1_optimal_threshold([0.6, 0.2], [1, 1]) == pytest.approx(0.2)  # nothing below the best: itself
    assert f1_optimal_threshold([0.6, 0.2, 0.1], np.array([255, 0, 0], np.uint8)) == pytest.approx(0.4)  # PNG masks
    # float64 scores are read as float32 (the model's output): 0.5 + 1e-12 ties 0.5 -> F1 2/3 at 0.5, kept as is
    assert f1_optimal_threshold(np.array([0.5, 0.5 + 1e-12]), [0, 1]) == 0.5
    with pytest.raises(ValueError, match=r"values \(3\) and targets \(2\) differ in size"):
        f1_optimal_threshold([0.1, 0.2, 0.3], [0, 1])


def test_f1_thresholds_use_only_segmented_images_and_name_what_is_not_a_probability():
    maps, masks = row_images(
        [(0.62, "D"), (0.5, "D"), (0.55, "."), (0.3, ".")], [(0.2, "."), (0.45, ".")] * 2, [(0.6, ".")] * 4
    )
    # the third image is a defect without a mask: left out, the pixel threshold stays the hand case's 0.475
    thresholds = f1_thresholds([0.9, 0.2, 0.8], [1, 0, 1], maps, masks, [True, True, False])
    assert thresholds == {"image": pytest.approx(0.5), "pixel": pytest.approx(0.475)}
    with pytest.raises(ValueError, match=r"maps must be probabilities in \[0, 1\].*map_sigmoid=True"):
        f1_thresholds([0.9, 0.2, 0.8], [1, 0, 1], maps * 2.4, masks)  # only above 1
    with pytest.raises(ValueError, match=r"scores must be probabilities in \[0, 1\].*use sigmoid scores"):
        f1_thresholds([0.9, -0.2, 0.8], [1, 0, 1], maps, masks)  # only below 0


def test_weighted_pixel_samples_without_defect_free_pixels():
    values, targets, weights = weighted_pixel_samples(np.zeros(0, np.float32), np.array([0.5, 0.3, 0.5], np.float32))
    assert values.tolist() == pytest.approx([0.3, 0.5]) and targets.tolist() == [True, True]
    assert weights.tolist() == [1.0, 2.0]
