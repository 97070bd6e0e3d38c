"""training/aupro.py: AUPRO against hand cases and a literal transcription of anomalib 0.7 (tests/aupro_oracle.py)."""

from __future__ import annotations

import numpy as np
import pytest
from aupro_oracle import anomalib_aupro
from aupro_oracle import one_row
from aupro_oracle import random_case
from aupro_oracle import row_images

from training.aupro import _background
from training.aupro import aupro
from training.aupro import label_regions
from training.metrics import compute_metrics


def test_aupro_interpolates_at_fpr_03_several_regions_in_one_image():
    # regions A (1 px) and B (2 px) in one image, 4 background pixels: per-region FPRs step by 0.25, never 0.3.
    # Global ROC <= 0.3: origin, 1.0, 0.9, 0.8 -> 4 grid points. Each region ROC is cut after FPR 0.25, extended
    # to the point at FPR 0.5 and sampled at 0.2 of that last step (FPR 0.3). A: TPR 0,1,1,1; B: 0,.5,.5,.5;
    # FPR 0,0,.25,.3 for both -> mean TPR .75 from FPR 0 to 0.3 -> AUPRO 0.75.
    maps, masks = row_images([(0.9, "D"), (0.8, "."), (1.0, "D"), (0.5, "D"), (0.6, "."), (0.2, "."), (0.0, ".")])
    assert label_regions(masks)[1] == 2
    value, reason = aupro(maps, masks)
    assert reason is None and value == pytest.approx(0.75, abs=1e-6)
    assert anomalib_aupro(maps, masks) == pytest.approx(0.75, abs=1e-6)


def test_aupro_regions_across_images_on_the_common_index_grid():
    # one region per image, 6 background pixels; global grid: origin, 1.0, 0.9 (FPR 1/6) -> 3 points.
    # A: points (fpr, tpr) (0,0) (1/6,0) (1/6,1) (1/3,1) at x = 0, 2/3, 4/3, 2; samples at x = 0, 1, 4/3+0.8*2/3
    #    -> TPR 0, 0.5, 1 and FPR 0, 1/6, 0.3 (the index grid interpolates across the vertical step).
    # B: points (0,0) (1/6,0) (1/3,0) at x = 0, 1, 2; samples at 0, 1, 1.8 -> TPR 0, 0, 0; FPR 0, 1/6, 0.3.
    # mean: TPR 0, .25, .5 over FPR 0, 1/6, .3 -> (1/6 * .125 + (0.3 - 1/6) * .375) / 0.3
    maps, masks = row_images(
        [(0.9, "D"), (0.7, "."), (0.3, "."), (0.0, ".")],
        [(0.4, "D"), (1.0, "."), (0.6, "."), (0.2, ".")],
    )
    expected = (1 / 6 * 0.125 + (0.3 - 1 / 6) * 0.375) / 0.3
    value, reason = aupro(maps, masks)
    assert reason is None and value == pytest.approx(expected, abs=1e-6)
    assert anomalib_aupro(maps, masks) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_aupro_equals_literal_anomalib_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    maps, masks = random_case(rng, ties=seed % 3 == 0, background_pixels_exact=seed == 1)
    value, reason = aupro(maps, masks)
    if reason is not None:  # degenerate (top background score shared by > 30% of the background): say so
        assert "no operating point" in reason
        return
    assert value == pytest.approx(anomalib_aupro(maps, masks), abs=2e-6)


def test_aupro_of_perfect_and_constant_maps():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:5, 2:5] = masks[0, 10:14, 9:15] = masks[2, 0:2, 0:9] = True  # 3 regions, 2 images
    perfect = np.where(masks, 1.0, rng.uniform(0, 0.9, masks.shape)).astype(np.float32)
    value, reason = aupro(perfect, masks)
    # 1 up to anomalib's index-grid resampling: the first grid step lands just past the origin-to-TPR-1 jump
    assert reason is None and value == pytest.approx(1.0, abs=1e-4)
    assert value == pytest.approx(anomalib_aupro(perfect, masks), abs=1e-7)
    labels = masks.reshape(3, -1).any(axis=1)
    result = compute_metrics(labels.astype(np.float32), labels, np.full(masks.shape, 0.7, np.float32), masks)
    assert result["AUPRO"] is None and "no operating point with 0 < FPR <= 0.3" in result["undefined"]["AUPRO"]
    assert result["P-AUROC"] == 0.5 and result["AP-loc"] == pytest.approx(masks.mean())


def test_label_regions_8_connected_per_image():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[0, 3, 3] = True
    masks[1, 0, 0] = True  # same place in the next image: its own region
    labels, count = label_regions(masks)
    assert count == 3 and labels[0, 0, 0] == labels[0, 1, 1] != labels[1, 0, 0]


def test_aupro_cut_off_on_ten_million_defect_free_pixels():
    # torchmetrics' float32 FPR m / count <= float32(0.3): the largest m, found by trying every candidate near 0.3
    count = 10**7
    candidates = np.arange(2_990_000, 3_010_000)
    most = int(candidates[np.float32(candidates) / np.float32(count) <= np.float32(0.3)].max())
    bg = _background(np.arange(count, dtype=np.float32), 0.3)  # distinct scores 0 .. count - 1
    assert int(bg.at_or_above[-2]) == most and bg.cut == count - 1 - most


def test_aupro_undefined_cases_say_why():
    for background, share in (([0.1, 0.2, 0.9], "33.3%"), ([0.1, 0.2, 0.9, 0.9], "50.0%"), ([0.4] * 3, "100.0%")):
        value, reason = aupro(*one_row(background))  # the top score alone is > 30% of the defect-free pixels
        assert value is None and f"0 < FPR <= 0.3: {share} of the defect-free pixels share the highest score" in reason
    assert aupro(*one_row([0.4]))[1].startswith("no operating point")
    maps, masks = one_row([0.1, 0.2])
    value, reason = aupro(maps, np.zeros_like(masks))
    assert value is None and "no defect pixels in the ground truth: AUPRO needs at least one defect region" in reason
    value, reason = aupro(maps, np.ones_like(masks))
    assert value is None and "no defect-free pixels: AUPRO's false-positive rate is undefined" in reason
    for limit in (0.0, 1.0):
        with pytest.raises(ValueError, match=rf"fpr_limit must be in \(0, 1\), got {limit}"):
            aupro(maps, masks, limit)


def test_aupro_fpr_limit_and_vertical_steps_match_literal_anomalib():
    rng = np.random.default_rng(0)
    masks = np.zeros((1, 16, 16), bool)
    masks[0, 4:12, 4:12] = True  # one region: 64 defect pixels, 192 defect-free
    maps = rng.random(masks.shape).astype(np.float32)
    # defect scores in 8 tight clusters: long vertical ROC steps, tied FPRs on the grid (sorted stably, as anomalib)
    maps[masks] = (rng.integers(0, 8, 64) / 8 + rng.random(64) * 1e-3).astype(np.float32)
    maps = (maps - maps.min()) / (maps.max() - maps.min())
    assert aupro(maps, masks)[0] == pytest.approx(anomalib_aupro(maps, masks), abs=2e-6)
    assert aupro(maps, masks, 0.2)[0] == pytest.approx(anomalib_aupro(maps, masks, limit=0.2), abs=2e-6)
