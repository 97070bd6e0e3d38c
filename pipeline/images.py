"""Image files in and heat-map PNGs out (spec §2.4 preprocessing: RGB, bilinear resize, ImageNet normalize)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from PIL import UnidentifiedImageError

from pipeline.config import ModelConfig


class ImageReadError(ValueError):
    pass


def read_rgb(path: str | Path) -> np.ndarray:
    """File -> uint8 [H, W, 3]; grayscale and RGBA are converted to RGB (as the official loader does)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as err:
        raise ImageReadError(f"image {str(path)!r} is not a readable image (JPEG, PNG, BMP, TIFF...): {err}") from err


def to_model_input(rgb: np.ndarray, config: ModelConfig) -> torch.Tensor:
    """uint8 [H, W, 3] -> normalized float32 [1, 3, h, w] at config.image_size (bilinear, no antialias)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB array [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()  # [1, 3, H, W] in [0, 255]
    if tuple(x.shape[-2:]) != config.image_size:
        # resized image rounded back to 8-bit values, as the official cv2 resize of uint8 images gives
        x = F.interpolate(x, size=config.image_size, mode="bilinear", align_corners=False, antialias=False)
        x = x.round_().clamp_(0, 255)
    x = x / 255.0
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (x - mean) / std


def load_image(path: str | Path, config: ModelConfig) -> tuple[np.ndarray, torch.Tensor]:
    rgb = read_rgb(path)
    return rgb, to_model_input(rgb, config)


def _jet(values: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> uint8 [H, W, 3] (blue -> cyan -> yellow -> red)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    anchors = np.array([0.0, 0.35, 0.65, 1.0])
    colors = np.array([[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], dtype=np.float64)
    rgb = np.stack([np.interp(v[..., 0], anchors, colors[:, c]) for c in range(3)], axis=-1)
    return rgb.astype(np.uint8)


def save_heatmap(rgb: np.ndarray, prob_map: np.ndarray, path: str | Path, alpha: float = 0.5) -> Path:
    """Write [input | overlay] side by side. prob_map: [h, w] probabilities, resized to the image."""
    h, w = rgb.shape[:2]
    heat = Image.fromarray(_jet(prob_map)).resize((w, h), Image.BILINEAR)
    overlay = (alpha * np.asarray(heat, dtype=np.float64) + (1 - alpha) * rgb).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([rgb, overlay], axis=1)).save(path)
    return path
