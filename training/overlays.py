"""PNG overlays of the best and worst cases of an evaluation: image | ground truth | heat map (matplotlib, Agg).

Which cases (`select_cases`): the margin of image i is `score_i - t` for a defect image and `t - score_i` for a good
one, with t the image threshold in raw probability space (positive = correctly classified, larger = more confident).
- best: the k defect images with the largest margin (clearly found defects; a good image would show an empty map);
  all images when there are no defect images;
- worst: the k images of either class with the smallest margin (missed defects and false alarms first).

Each PNG is FIGURE_PIXELS (width, height) large. Heat maps are drawn on a fixed range (probabilities: [0, 1]) so
pictures are comparable, with the pixel threshold as a white contour when one is known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from PIL import Image

from pipeline.images import ImageReadError
from pipeline.images import read_rgb

FIGURE_INCHES = (9.0, 3.2)
DPI = 100
FIGURE_PIXELS = (int(FIGURE_INCHES[0] * DPI), int(FIGURE_INCHES[1] * DPI))  # (900, 320)


def select_cases(scores: np.ndarray, labels: np.ndarray, threshold: float, k: int):
    """scores [N], labels [N] bool -> (best indices, worst indices, margins [N]) as described above."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    margins = np.where(labels, scores - threshold, threshold - scores)
    pool = np.flatnonzero(labels) if labels.any() else np.arange(labels.size)
    best = pool[np.argsort(-margins[pool], kind="stable")][:k]
    worst = np.argsort(margins, kind="stable")[:k]
    return best.tolist(), worst.tolist(), margins


def display_rgb(images: np.ndarray, mean, std) -> np.ndarray:
    """Model inputs [N, 3, H, W] normalized float -> uint8 [N, H, W, 3] for the overlays (undo the normalization)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected normalized images [N, 3, H, W], got {list(images.shape)}")
    rgb = images * np.asarray(std, np.float32).reshape(1, 3, 1, 1) + np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    return np.clip(np.rint(rgb.transpose(0, 2, 3, 1) * 255), 0, 255).astype(np.uint8)


def load_display_image(path: str, size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    """Image file -> (uint8 [H, W, 3] resized to size=(H, W), None), or (None, error) when it cannot be read."""
    try:
        rgb = read_rgb(path)
    except ImageReadError as err:
        return None, str(err)
    if rgb.shape[:2] != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))
    return rgb, None


def save_overlay(
    path: str | Path,
    rgb: np.ndarray | None,
    mask: np.ndarray,
    heat: np.ndarray,
    title: str,
    heat_range: tuple[float, float] = (0.0, 1.0),
    pixel_threshold: float | None = None,
) -> Path:
    """rgb: uint8 [H, W, 3] or None (grey), mask: [H, W] bool, heat: [H, W] float -> a 3-panel PNG at path."""
    height, width = heat.shape
    if rgb is None:
        rgb = np.full((height, width, 3), 128, np.uint8)
    fig = Figure(figsize=FIGURE_INCHES, dpi=DPI)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.80, wspace=0.04)
    fig.suptitle(title, fontsize=9)
    axes = fig.subplots(1, 3)
    axes[0].imshow(rgb)
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(rgb)
    axes[1].imshow(np.ma.masked_where(~mask, mask), cmap=ListedColormap(["red"]), alpha=0.5)
    axes[1].set_title(f"ground truth ({int(mask.sum())} defect px)", fontsize=8)
    axes[2].imshow(rgb)
    axes[2].imshow(heat, cmap="jet", alpha=0.5, vmin=heat_range[0], vmax=heat_range[1])
    caption = f"anomaly map (max {float(heat.max()):.3f})"
    if pixel_threshold is not None and heat.min() < pixel_threshold <= heat.max():
        axes[2].contour(heat, levels=[pixel_threshold], colors="white", linewidths=0.8)
        caption += f", contour at {pixel_threshold:.3f}"
    axes[2].set_title(caption, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
