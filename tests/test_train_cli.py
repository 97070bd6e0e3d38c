"""`ssn train` on a user's folder layout in the supervised regimes (balanced sampler, flips, JIMS weights), and
its errors on bad input."""

from __future__ import annotations

import json

import pytest
from datafakes import folder
from safetensors import safe_open

from pipeline.checkpoint import read_metadata
from pipeline.cli import main

# the JIMS head, so the supervised regimes also dilate masks and weight the seg loss (distance transform)
SMALL = ["--preset", "tiny", "--set", "image_size=[32,48]", "--set", "adapt_cls_features=false"]
SMALL += ["--backbone-weights", "random", "--quiet"]


def train(tmp_path, root, *extra) -> int:
    return main(["train", *SMALL, "--dataset", "folder", "--data", str(root), *extra])


def test_regime_needing_masks_on_data_without_masks(tmp_path, capsys):
    root = folder(tmp_path / "data", good=3, defects=2, masks=1)  # d1.jpg has no mask
    code = train(tmp_path, root, "--supervision", "supervised", "--out", str(tmp_path / "ck.safetensors"))
    err = capsys.readouterr().err
    assert code == 2 and "regime needs masks" in err and "d1.jpg" in err
    assert not (tmp_path / "ck.safetensors").exists()


def test_supervised_regime_on_good_only_data(tmp_path, capsys):
    root = folder(tmp_path / "data", good=3, defects=0, masks=0)
    code = train(tmp_path, root, "--supervision", "supervised", "--out", str(tmp_path / "ck.safetensors"))
    assert code == 2 and "needs defective images" in capsys.readouterr().err


# tiny: masks teach the seg head in mixed (no feature-noise anomalies); weak has no masks, so Perlin 0.2
@pytest.mark.parametrize("regime,anomalies", [("mixed", "masks only"), ("weak", "perlin_thr 0.2")])
def test_mixed_and_weak_regimes_train(tmp_path, capsys, regime, anomalies):
    root = folder(tmp_path / "data", good=4, defects=2, masks=1)  # one defect masked, one not
    out = tmp_path / "ck.safetensors"
    code = train(
        tmp_path, root, "--supervision", regime, "--epochs", "1", "--batch-size", "8", "--no-eval", "--out", str(out)
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert anomalies in text and "JIMS head" in text
    # the balanced epoch's codes are cached: the 2 defects in each of the 4 flips and the 4 good images, once each
    assert "feature cache (memory): 12 images" in text and "feature cache: memory" in text
    masked = "1 with masks used" if regime == "mixed" else "0 with masks used"
    assert masked in text
    metadata = read_metadata(out)
    assert json.loads(metadata["config"])["stop_grad"] is False  # supervised regimes train without stop-grad
    assert metadata["backbone_weights"].startswith("random(seed=456654)+colour(floor=0.1)+bn-calibrated(4 images)")
    assert json.loads(metadata["thresholds"]) == {}


def test_the_training_line_says_when_the_heads_train_on_feature_windows(tmp_path, capsys):
    """The tiny preset's 40x40 windows apply where the feature map is larger (176x176 input: 44x44) and only in
    the supervised regime; the line before training says so."""
    root = folder(tmp_path / "data", good=4, defects=2, masks=2)
    args = ["--preset", "tiny", "--set", "image_size=[176,176]", "--backbone-weights", "random", "--quiet"]
    args += ["--dataset", "folder", "--data", str(root), "--epochs", "1", "--no-eval"]
    lines = {}
    for regime in ("supervised", "mixed"):
        out = tmp_path / f"{regime}.safetensors"
        assert main(["train", *args, "--supervision", regime, "--out", str(out)]) == 0
        lines[regime] = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("training tiny"))
    assert lines["supervised"].endswith(
        "masks only (no feature-noise anomalies), score starts as 1 x the map's max, "
        "heads on 40x40 windows of the 44x44 feature map"
    )
    assert "windows" not in lines["mixed"] and "score starts as 1 x the map's max" in lines["mixed"]
    # and it did: one epoch of Adam (lr 4e-4, 2 steps) leaves the map-max weight near 1; a Xavier draw has std 0.09
    with safe_open(tmp_path / "supervised.safetensors", "pt") as ck:
        assert abs(float(ck.get_tensor("cls_head.fc.weight")[0, 256]) - 1.0) < 0.01
