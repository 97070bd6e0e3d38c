"""Image preprocessing (spec §2.4) and heat-map files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import ModelConfig
from pipeline.images import ImageReadError
from pipeline.images import load_image
from pipeline.images import save_heatmap
from pipeline.images import to_model_input

CFG = ModelConfig(backbone="resnet18", image_size=(32, 48))


def test_normalization_matches_imagenet_formula():
    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    x = to_model_input(rgb, CFG)
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    want = ((rgb / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(x.numpy(), want, atol=1e-6)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 32, 48)


def test_resize_is_bilinear_then_8bit():
    rgb = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    x = to_model_input(rgb, CFG)
    pixels = x * torch.tensor(CFG.std).view(1, 3, 1, 1) + torch.tensor(CFG.mean).view(1, 3, 1, 1)
    values = (pixels * 255).numpy()
    np.testing.assert_allclose(values, np.round(values), atol=1e-3)  # whole 8-bit levels
    # exact 2x downscale with half-pixel centres = mean of each 2x2 block, rounded
    blocks = rgb.reshape(32, 2, 48, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(values, np.round(blocks), atol=0.51)


def test_grayscale_file_becomes_rgb(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.full((32, 48), 200, np.uint8)).save(path)
    rgb, x = load_image(path, CFG)
    assert rgb.shape == (32, 48, 3) and x.shape == (1, 3, 32, 48)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"PNG? no")
    with pytest.raises(ImageReadError, match="bad.png.*not a readable image"):
        load_image(bad, CFG)
    with pytest.raises(ImageReadError, match="gone.jpg.*does not exist"):
        load_image(tmp_path / "gone.jpg", CFG)


def test_wrong_array_is_refused():
    with pytest.raises(ValueError, match=r"uint8 RGB array \[H, W, 3\], got float64 \[4, 4\]"):
        to_model_input(np.zeros((4, 4)), CFG)


def test_heatmap_side_by_side(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    prob = np.zeros((10, 15))
    prob[5, 7] = 1.0
    path = save_heatmap(rgb, prob, tmp_path / "sub" / "h.png")
    img = np.asarray(Image.open(path))
    assert img.shape == (40, 120, 3)
    assert not img[:, :60].any()  # left: the input
    overlay = img[:, 60:].astype(int)
    assert overlay[..., 0].max() > overlay[0, 0, 0]  # hot spot is redder than a cold corner
