"""Feature-window training (`TrainConfig.feature_window`, the tiny preset's CPU recipe).

The heads of SuperSimpleNet are convolutional, so they can learn from a window of the feature map as well as from
the whole map. With `feature_window = n > 0` a supervised step runs the backbone and the feature stage (upscale,
3x3 average pool, adaptor) on the whole image, exactly as at inference, and then runs the heads and the losses on
one n x n window of each sample's feature map:

- a defective sample's window holds a defect pixel: it is drawn uniformly among the windows that contain one
  defect cell, itself drawn uniformly from the sample's GT mask at feature size;
- a good sample's window is drawn uniformly among all windows of the map.

Inference never crops. The heads' work is proportional to the window's area, so a larger input (thin defects
spanning more feature cells) is trained for the cost of a smaller one. Each window is a pure function of the
sample's seed (the generator's per-sample seeds), so runs are reproducible and DDP ranks agree.

Only for regimes where every defective training image has a mask (supervised): the window of a positive without
a mask could miss the defect and teach the cls head that it is good. `regimes.resolve` turns it off elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch

WINDOW_STREAM = 0x57494E  # keeps the window draws apart from the Perlin / noise draws of the same seed


def windows_apply(size: int, feature_size: tuple[int, int]) -> bool:
    """Whether a `feature_window` of `size` crops a map of `feature_size` (0 or a window as large as the map: the
    heads train on the whole map)."""
    return 0 < size < min(feature_size)


def window_offsets(mask: torch.Tensor, label: torch.Tensor, size: int, seeds: list[int]) -> list[tuple[int, int]]:
    """GT masks at feature size [B, 1, fh, fw] and labels [B] -> one (top, left) per sample for an
    size x size window (module docstring). `seeds[b]` keys sample b's draws. Raises on a defective sample
    without any mask pixel."""
    b, _, fh, fw = mask.shape
    if not 0 < size <= min(fh, fw):
        raise ValueError(f"feature_window={size} must be in [1, {min(fh, fw)}] for a {fh}x{fw} feature map")
    cells = mask[:, 0].detach().cpu() > 0
    offsets = []
    for k in range(b):
        rng = np.random.default_rng([int(seeds[k]), WINDOW_STREAM])
        top_range, left_range = (0, fh - size), (0, fw - size)
        if float(label[k]) > 0:
            ys, xs = np.nonzero(cells[k].numpy())
            if len(ys) == 0:
                raise ValueError(
                    "feature_window: a defective training sample has no mask pixel at feature size; windows need "
                    "every defect masked (the supervised regime)"
                )
            pick = int(rng.integers(len(ys)))
            y, x = int(ys[pick]), int(xs[pick])
            top_range = (max(0, y - size + 1), min(fh - size, y))
            left_range = (max(0, x - size + 1), min(fw - size, x))
        top = int(rng.integers(top_range[0], top_range[1] + 1))
        left = int(rng.integers(left_range[0], left_range[1] + 1))
        offsets.append((top, left))
    return offsets


def crop_windows(t: torch.Tensor | None, offsets: list[tuple[int, int]], size: int) -> torch.Tensor | None:
    """[B, C, H, W] -> [B, C, size, size]: sample b's window at offsets[b]. None stays None.

    Slices of `unbind`'s views: the backward writes one [C, H, W] gradient per sample (indexing `t[k]` would
    allocate and zero a whole [B, C, H, W] gradient for each sample)."""
    if t is None:
        return None
    rows = t.unbind(0)
    return torch.stack([rows[k][:, y : y + size, x : x + size] for k, (y, x) in enumerate(offsets)])
