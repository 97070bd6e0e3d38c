"""Evaluation report: metrics.json, the paper-format markdown with the authors' numbers, PNG overlays."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.metrics import METRIC_NAMES
from training.overlays import FIGURE_PIXELS
from training.overlays import display_rgb
from training.overlays import select_cases
from training.paper import REFERENCE_DIR
from training.paper import paper_rows
from training.report import EvalPredictions
from training.report import write_report
from training.report import write_summary


def _predictions(tmp_path: Path | None = None, n: int = 8, size: int = 32) -> EvalPredictions:
    """n images, the first half defective with a square defect; the maps see most of it."""
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 2):
        masks[i, 4 + i : 12 + i, 6 : 14 + i] = True
    labels = masks.reshape(n, -1).any(axis=1)
    maps = (rng.random(masks.shape) * 0.6 + masks * 0.35).astype(np.float32)
    scores = (rng.random(n) * 0.6 + labels * 0.3).astype(np.float32)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    paths = [f"bottle/test/{'broken_large' if label else 'good'}/{i:03d}.png" for i, label in enumerate(labels)]
    if tmp_path is not None:  # real files for the overlays to read
        paths = [str(tmp_path / p) for p in paths]
        for path, image in zip(paths, images):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).resize((2 * size, 2 * size)).save(path)
        return EvalPredictions(scores, labels, maps, masks, paths)
    return EvalPredictions(scores, labels, maps, masks, paths, images=images)


def test_report_for_a_paper_dataset(tmp_path):
    out = tmp_path / "eval"
    thresholds = {"image": 0.5, "pixel": 0.6, "source": "val split"}
    result = write_report(_predictions(), out, dataset="mvtec", category="bottle", thresholds=thresholds, k=2)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == result
    assert list(saved["metrics"]) == list(METRIC_NAMES) and None not in saved["metrics"].values()
    assert saved["thresholds"] == {"image": 0.5, "pixel": 0.6}
    assert set(saved["at_thresholds"]["image"]) == {"precision", "recall", "f1"}
    assert [r["source"] for r in saved["paper"]][:2] == ["ICPR 2024 (unsupervised)"] * 2

    markdown = (out / "report.md").read_text()
    header = "| | I-AUROC | AUPRO | P-AUROC | AP-det | AP-loc | seg-I-AUROC | seg-AP-det |"
    assert header in markdown
    ours = f"| **ours (mvtec bottle)** | **{100 * saved['metrics']['I-AUROC']:.1f}** |"
    assert ours in markdown
    # the authors' bottle row: I-AUROC 100.0 ±0.00, AUPRO 90.4 (spec §4.1); total I-AUROC 98.4 ±0.10
    assert re.search(r"\| ICPR 2024 \(unsupervised\), bottle \| 100\.0 ±0\.00 \| 90\.4 ±0\.\d\d \|", markdown)
    assert "| ICPR 2024 (unsupervised), total | 98.4 ±0.10 | 91.1 ±0.04 |" in markdown
    assert "| JIMS 2025 (unsupervised), bottle |" in markdown

    overlays = saved["overlays"]
    assert overlays["threshold"] == 0.5 and overlays["threshold_source"] == "checkpoint image threshold"
    assert len(overlays["best"]) == 2 and len(overlays["worst"]) == 2
    assert all(case["label"] == 1 for case in overlays["best"])
    for case in overlays["best"] + overlays["worst"]:
        with Image.open(out / case["file"]) as png:
            assert png.size == FIGURE_PIXELS
        assert f"]({case['file']})" in markdown


def test_report_for_a_user_dataset_reads_overlay_images_and_survives_a_missing_one(tmp_path):
    predictions = _predictions(tmp_path)
    Path(predictions.paths[3]).unlink()
    result = write_report(predictions, tmp_path / "eval", dataset="folder", k=4)
    assert result["paper"] == [] and result["thresholds"] is None
    assert "F1-optimal image threshold of this split" in result["overlays"]["threshold_source"]
    cases = result["overlays"]["best"] + result["overlays"]["worst"]
    missing = [c for c in cases if c["image"] == predictions.paths[3]]
    assert missing and all("does not exist" in c["image_error"] for c in missing)
    assert all((tmp_path / "eval" / c["file"]).is_file() for c in cases)
    assert "No published numbers for this dataset" in (tmp_path / "eval" / "report.md").read_text()


def test_undefined_metrics_are_null_with_a_reason(tmp_path):
    p = _predictions()
    good = EvalPredictions(p.scores[4:], np.zeros(4), p.maps[4:], p.masks[4:], p.paths[4:], p.images[4:])
    result = write_report(good, tmp_path, dataset="visa", category="candle", k=1)
    assert all(value is None for value in result["metrics"].values())
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["AUPRO"] is None
    markdown = (tmp_path / "report.md").read_text()
    assert "| **ours (visa candle)** | **n/a** |" in markdown
    assert "- AUPRO: not computed: no defect pixels" in markdown


def test_bad_predictions_name_the_image_file(tmp_path):
    p = _predictions()
    p.maps[2, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"image 2 \(bottle/test/broken_large/002\.png\)"):
        write_report(p, tmp_path, dataset="mvtec")
    with pytest.raises(ValueError, match="3 paths for 8 scores"):
        write_report(EvalPredictions(p.scores, p.labels, p.maps, p.masks, p.paths[:3]), tmp_path, dataset="mvtec")


def test_paper_rows_for_every_regime():
    ksdd2 = paper_rows("ksdd2", "ksdd2", "supervised")
    assert [r.label() for r in ksdd2] == [
        "ICPR 2024 (N246, fully supervised), ksdd2",
        "JIMS 2025 (supervised, ratio 246), ksdd2",
    ]
    assert ksdd2[0].mean["AP-det"] == pytest.approx(0.974, abs=5e-4)  # spec §4.1: 97.4
    mixed = paper_rows("ksdd2", None, "mixed")
    assert [r.source for r in mixed] == [f"JIMS 2025 (mixed, ratio {k})" for k in ("0", "16", "53", "126", "246")]
    sensum = paper_rows("sensum", "capsule", "mixed", "0.2")
    assert [r.label() for r in sensum] == [
        "JIMS 2025 (mixed, ratio 0.2), capsule",
        "JIMS 2025 (mixed, ratio 0.2), total",
    ]
    assert paper_rows("sensum", None, "supervised")[0].mean["AP-loc"] == pytest.approx(0.731, abs=5e-4)
    assert paper_rows("ksdd2", None, "weak")[0].mean["AP-det"] == pytest.approx(0.972, abs=5e-4)
    assert paper_rows("synthetic", "wood") == []
    with pytest.raises(ValueError, match="unknown supervision regime"):
        paper_rows("mvtec", "bottle", "semi")


def test_reference_files_are_the_authors_unchanged():
    readme = (REFERENCE_DIR / "README.md").read_text()
    for name in ("paper_results_icpr.json", "paper_results_jims.json"):
        digest = hashlib.sha256((REFERENCE_DIR / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in readme


def test_summary_per_category_and_total(tmp_path):
    first = write_report(_predictions(), tmp_path / "bottle", dataset="mvtec", category="bottle", k=1)
    second = {**first, "category": "cable", "metrics": {**first["metrics"], "AUPRO": None}}
    summary = write_summary([first, second], tmp_path)
    assert summary["total"]["I-AUROC"] == pytest.approx(first["metrics"]["I-AUROC"])
    assert summary["total"]["AUPRO"] is None and summary["total_missing"]["AUPRO"] == ["cable"]
    markdown = (tmp_path / "summary.md").read_text()
    assert "Values in %: ours / ICPR 2024 (unsupervised)." in markdown
    assert re.search(r"\| cable \| [\d.]+ / 98\.1 \| n/a / 88\.5 \|", markdown)
    assert re.search(r"\| total \| [\d.]+ / 98\.4 \| n/a / 91\.1 \|", markdown)


def test_case_selection_and_display_images():
    best, worst, margins = select_cases([0.9, 0.6, 0.2, 0.7, 0.1], [1, 1, 1, 0, 0], threshold=0.5, k=2)
    assert best == [0, 1] and worst == [2, 3]  # missed defect (-0.3), then false alarm (-0.2)
    assert margins.tolist() == pytest.approx([0.4, 0.1, -0.3, -0.2, 0.4])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rgb = np.array([[[[0, 128, 255]]]], np.uint8)  # [1, 1, 1, 3]
    normalized = (rgb.transpose(0, 3, 1, 2) / 255 - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    assert np.array_equal(display_rgb(normalized, mean, std), rgb)


def test_summary_total_is_the_mean_over_categories(tmp_path):
    """Three categories with different values: the total is their mean, written to JSON and markdown."""
    rows = {"bottle": 0.90, "cable": 0.70, "screw": 0.56}
    results = [
        {"dataset": "mvtec", "category": name, "regime": "unsupervised", "ratio": None,
         "metrics": {m: value - 0.01 * k for k, m in enumerate(METRIC_NAMES)}}
        for name, value in rows.items()
    ]  # fmt: skip
    summary = write_summary(results, tmp_path)
    assert summary["total"]["I-AUROC"] == pytest.approx(0.72)  # (0.90 + 0.70 + 0.56) / 3
    assert summary["total"]["seg-AP-det"] == pytest.approx(0.72 - 0.06)
    assert json.loads((tmp_path / "summary.json").read_text())["total"]["AUPRO"] == pytest.approx(0.71)
    markdown = (tmp_path / "summary.md").read_text()
    assert re.search(r"\| total \| 72\.0 / 98\.4 \| 71\.0 / 91\.1 \|", markdown)
    assert re.search(r"\| cable \| 70\.0 / [\d.]+ \| 69\.0 / [\d.]+ \|", markdown)
