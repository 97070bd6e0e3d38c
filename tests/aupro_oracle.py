"""Test helpers for the metric tests: one-row images, random cases, and a literal transcription of anomalib 0.7's
AUPRO (`AUPRO.compute_pro`, float32 torch) as the oracle for training/aupro.py."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_curve

from training.aupro import label_regions


def row_images(*rows):
    """Each row -> one [1, W] image; returns maps [N, 1, W] float32 and masks [N, 1, W] bool ('D' = defect)."""
    maps = np.array([[[v for v, _ in row]] for row in rows], dtype=np.float32)
    masks = np.array([[[c == "D" for _, c in row]] for row in rows])
    return maps, masks


def random_case(rng, ties: bool, background_pixels_exact: bool = False):
    n, h, w = int(rng.integers(1, 4)), int(rng.integers(4, 14)), int(rng.integers(4, 14))
    if background_pixels_exact:  # 10 background pixels: FPR 0.3 is an exact ROC point (no interpolation)
        n, h, w = 1, 4, 4
        masks = np.zeros((n, h, w), bool)
        masks[0, 0, :2] = masks[0, 2:, :2] = True  # 6 defect pixels in 2 regions
    else:
        masks = rng.random((n, h, w)) < rng.uniform(0.05, 0.3)
    maps = rng.integers(0, 8, (n, h, w)) / 7 if ties else rng.random((n, h, w))
    maps = (maps + masks * rng.uniform(0, 0.6)).astype(np.float32)
    return (maps - maps.min()) / (maps.max() - maps.min()), masks


def one_row(background, defect=1.0):
    """One image: the given defect-free scores, then one defect pixel -> maps, masks [1, 1, W]."""
    maps = np.array([[[*background, defect]]], np.float32)
    masks = np.zeros_like(maps, bool)
    masks[..., -1] = True
    return maps, masks


def _roc32(preds: np.ndarray, target: np.ndarray):
    """torchmetrics binary_roc: one point per distinct score plus the origin, rates as float32 quotients."""
    fpr, tpr, _ = roc_curve(target, preds, drop_intermediate=False)
    negatives, positives = int((~target).sum()), int(target.sum())
    fps = np.rint(fpr * negatives).astype(np.float32)
    tps = np.rint(tpr * positives).astype(np.float32)
    return torch.from_numpy(fps / np.float32(negatives)), torch.from_numpy(tps / np.float32(positives))


def _interp1d(old_x, old_y, new_x):
    eps = torch.finfo(old_y.dtype).eps
    slope = (old_y[1:] - old_y[:-1]) / (eps + (old_x[1:] - old_x[:-1]))
    idx = torch.clamp(torch.searchsorted(old_x, new_x) - 1, 0, old_x.size(0) - 2)
    return old_y[idx] + slope[idx] * (new_x - old_x[idx])


def anomalib_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """One full ROC per region over background + region, cut at 0.3, resampled on the global index grid."""
    labels, n_regions = label_regions(masks)
    cca, preds, target = torch.from_numpy(labels.reshape(-1)), maps.reshape(-1), masks.reshape(-1)
    lim = torch.tensor(limit)
    size = int((_roc32(preds, target)[0] <= lim).sum())
    tpr_sum, fpr_sum = torch.zeros(size), torch.zeros(size)
    new_idx = torch.arange(0, size, dtype=torch.float)
    background = (cca == 0).numpy()
    for label in cca.unique()[1:]:
        new_idx[-1] = size - 1
        region = (cca == label).numpy()
        fpr, tpr = _roc32(preds[background | region], region[background | region])
        idx = torch.where(fpr <= lim)[0]
        interpolate = not torch.allclose(fpr[idx].max(), lim)
        if interpolate:
            nxt = torch.searchsorted(fpr, lim)
            idx = torch.cat([idx, nxt.unsqueeze(0)])
            slope = 1 - ((fpr[nxt] - lim) / (fpr[nxt] - fpr[nxt - 1]))
        fpr, tpr = fpr[idx], tpr[idx]
        x = idx.float()
        x = x / x.max() * new_idx.max()
        if interpolate:
            new_idx[-1] = x[-2] + (x[-1] - x[-2]) * slope
        tpr_sum += _interp1d(x, tpr, new_idx)
        fpr_sum += _interp1d(x, fpr, new_idx)
    tpr_sum, fpr_sum = tpr_sum / n_regions, fpr_sum / n_regions
    order = torch.sort(fpr_sum, stable=True).indices
    return float(torch.trapz(tpr_sum[order], fpr_sum[order]) / fpr_sum[-1])
