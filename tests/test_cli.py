"""The installed `ssn` console script: info and infer, on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from checkout import checkout_env
from checkout import run_ssn
from conftest import make_model
from PIL import Image

from pipeline.checkpoint import load_checkpoint
from pipeline.checkpoint import save_checkpoint
from pipeline.config import ModelConfig
from pipeline.images import load_image


def test_info_mvtec_table():
    out = run_ssn("info", "--preset", "mvtec")
    assert out.returncode == 0, out.stderr
    assert "33,719,363" in out.stdout and "8,856,835" in out.stdout and "2,360,832" in out.stdout
    assert "model.backbone" in out.stdout and "wide_resnet50_2" in out.stdout
    assert "train.perlin_threshold" in out.stdout
    folded = next(line.split() for line in out.stdout.splitlines() if line.startswith("folded "))
    reference = next(line.split() for line in out.stdout.splitlines() if line.startswith("reference "))
    assert reference[1:] == ["12.00", "36.26", "0.04", "48.30"]  # backbone, heads, postprocess, total GMACs
    assert folded[1] == "12.00" and float(folded[2]) < 36.26 / 8 and float(folded[4]) < 48.30 / 3


def test_info_json_with_override():
    out = run_ssn("info", "--preset", "ksdd2", "--json", "--set", "adapt_cls_features=true")
    data = json.loads(out.stdout)
    assert data["model"]["image_size"] == [640, 232] and data["model"]["adapt_cls_features"] is True
    assert data["train"]["perlin_threshold"] == 0.6 and data["train"]["supervised"] is True
    total = next(m for m in data["modules"] if m["name"] == "total")
    assert total["gflops"] == pytest.approx(2 * 109.83, rel=1e-3)
    gmacs = data["gmacs_per_provider"]
    assert gmacs["reference"]["total"] == pytest.approx(109.83, rel=1e-3)
    assert gmacs["folded"]["backbone"] == gmacs["reference"]["backbone"]
    assert gmacs["folded"]["heads"] < gmacs["fast-cpu"]["heads"] < gmacs["reference"]["heads"]


def test_info_unknown_preset():
    out = run_ssn("info", "--preset", "bogus")
    assert out.returncode == 2
    assert "preset='bogus' is unknown; accepted: mvtec" in out.stderr


@pytest.fixture
def checkpoint(tmp_path):
    model = make_model(ModelConfig(backbone="resnet18", image_size=(64, 64)))
    return save_checkpoint(model, tmp_path / "tiny.safetensors", "random")


def _write_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    png = folder / "a.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png)
    jpg = folder / "b_gray.jpg"  # grayscale, other size: converted to RGB and resized
    Image.fromarray(rng.integers(0, 256, (90, 70), dtype=np.uint8)).save(jpg)
    bad = folder / "c_broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    return [png, jpg, bad]


def test_infer_scores_heatmaps_and_bad_frame(tmp_path, checkpoint):
    png, jpg, bad = _write_images(tmp_path)
    out_dir = tmp_path / "maps"
    out = run_ssn(
        "infer", "--checkpoint", str(checkpoint), str(png), str(bad), str(jpg), "--out", str(out_dir), "--json"
    )
    assert out.returncode == 1  # one frame failed, the others were still scored
    assert "c_broken.jpg" in out.stderr and "not a readable image" in out.stderr
    rows = {Path(r["image"]).name: r for r in json.loads(out.stdout)}
    assert "error" in rows["c_broken.jpg"]

    model, _ = load_checkpoint(checkpoint)
    for name, src in (("a.png", png), ("b_gray.jpg", jpg)):
        row = rows[name]
        _, x = load_image(src, model.config)
        with torch.no_grad():
            expected = model(x)
        assert row["score"] == pytest.approx(float(expected.score[0]), abs=1e-5)
        assert 0.0 <= row["map_max"] <= 1.0
        heat = Image.open(row["heatmap"])
        src_img = Image.open(src)
        assert heat.size == (2 * src_img.size[0], src_img.size[1]) and heat.mode == "RGB"


def test_infer_plain_output(tmp_path, checkpoint):
    png, _, _ = _write_images(tmp_path)
    out = run_ssn("infer", "--checkpoint", str(checkpoint), str(png), "--impl", "reference")
    assert out.returncode == 0, out.stderr
    score, path = out.stdout.split()
    assert 0.0 < float(score) < 1.0 and path == str(png)


def test_infer_missing_checkpoint(tmp_path):
    out = run_ssn("infer", "--checkpoint", str(tmp_path / "none.safetensors"), "x.png")
    assert out.returncode == 2 and "none.safetensors" in out.stderr and "does not exist" in out.stderr


def test_help_lists_commands_without_loading_torch():
    """The dispatcher imports only the module of the subcommand being run (`ssn stream` must stay torch-free)."""
    code = "import sys; from pipeline.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=checkout_env())
    assert out.returncode == 0, out.stderr
    assert "info" in out.stdout and "infer" in out.stdout
    assert out.stdout.strip().endswith("False")


def test_heatmap_names_stay_distinct_when_stems_repeat():
    from pipeline.infer import _unique_heatmap_names

    names = _unique_heatmap_names(["d/test/good/000.png", "d/test/scratch/000.png", "other.jpg"])
    assert names == {
        "d/test/good/000.png": "good_000_heatmap.png",
        "d/test/scratch/000.png": "scratch_000_heatmap.png",
        "other.jpg": "other_heatmap.png",
    }
    assert _unique_heatmap_names(["a/1.png", "b/2.png"]) == {"a/1.png": "1_heatmap.png", "b/2.png": "2_heatmap.png"}
