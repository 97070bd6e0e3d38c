"""A random backbone's conv1, chosen per line: its own random draw or the oriented bank (the tiny preset).

A random 7x7 conv1 is mostly high-frequency noise; ImageNet's learns Gabor-like filters. `oriented_filters` is a
fixed bank of that kind (32 luminance Gabors at 8 orientations, 2 differences of Gaussians, 5 colour Gaussians) put in
place of 39 of the 64 random filters, the other 25 keeping their draw. On the synthetic benchmark the bank helps a
directed surface (brushed metal: higher on every draw) and costs localisation on undirected ones (stone, carpet), so
no one conv1 suits every line (README "Training and evaluation"). The line's own training split decides:

    for each candidate, calibrated as training will use it (colour, then BN statistics):
        pooled features [N, C, fh, fw] of the good and the labelled defective training images (no gradient)
        two halves of each; every second cell of one half's images scored by its distance to the nearest of
        6000 good cells of the other half (channels standardised by that half), smoothed 3x3
        pixel AUROC of those scores against the defect masks, both halves pooled
    the higher AUROC wins; a tie keeps the random draw

Nothing here draws from the global random generators (its own generator, seeded), so the training that follows is
the one either candidate would have had on its own.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

BANK_CELLS = 6000  # good cells each half is compared against
DEFECT_FRACTION = 0.25  # a feature cell is a defect cell when this much of it is masked
PROBE_SEED = 0


def oriented_filters(size: int = 7) -> torch.Tensor:
    """[39, 3, size, size] unit-norm filters: 32 luminance Gabors (wavelength 3 px at sigma 1.2 and 6 px at sigma
    2, 8 orientations, even then odd; the even ones zero-mean), 2 luminance differences of Gaussians (sigma 0.8 vs
    1.6 and 1.5 vs 3), 5 Gaussians (sigma 1.5) on the colour directions mean, R-G, (R+G)/2-B, G-B and R-B."""
    ys, xs = torch.meshgrid(torch.arange(size) - size // 2, torch.arange(size) - size // 2, indexing="ij")
    ys, xs = ys.double(), xs.double()
    grey = torch.ones(3, 1, 1, dtype=torch.double) / 3
    filters = []
    for wavelength, sigma in ((3.0, 1.2), (6.0, 2.0)):
        for step in range(8):
            angle = math.pi * step / 8
            across = xs * math.cos(angle) + ys * math.sin(angle)
            along = -xs * math.sin(angle) + ys * math.cos(angle)
            envelope = torch.exp(-(across**2 + along**2) / (2 * sigma**2))
            even = envelope * torch.cos(2 * math.pi * across / wavelength)
            odd = envelope * torch.sin(2 * math.pi * across / wavelength)
            filters += [grey * (even - even.mean()), grey * odd]
    radius2 = xs**2 + ys**2
    gauss = [torch.exp(-radius2 / (2 * s**2)) / s**2 for s in (0.8, 1.6, 1.5, 3.0)]
    filters += [grey * (gauss[0] - gauss[1]), grey * (gauss[2] - gauss[3])]
    for direction in ((1, 1, 1), (1, -1, 0), (1, 1, -2), (0, 1, -1), (1, 0, -1)):
        filters.append(torch.tensor(direction, dtype=torch.double).view(3, 1, 1) * gauss[2])
    bank = torch.stack(filters)
    return bank / bank.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


@torch.no_grad()
def orient_conv1(conv1: torch.nn.Conv2d) -> int:
    """Replace the first filters of a random conv1 by `oriented_filters`, scaled to the mean norm of the random
    draw; returns how many were replaced."""
    weight = conv1.weight  # [64, 3, 7, 7]
    bank = oriented_filters(weight.shape[-1])
    scale = weight.flatten(1).norm(dim=1).mean()
    weight[: len(bank)] = (bank * scale.double()).to(weight.dtype)
    return len(bank)


def probe_reason(dataset) -> str | None:
    """Why the split cannot rank the candidates (None: it can): the probe needs 2+ good images and 2+ labelled
    defective images with masks."""
    labels = np.asarray(dataset.labels)
    masked = [r.mask is not None for r, y in zip(dataset.records, labels) if y]
    if (labels == 0).sum() < 2 or sum(masked) < 2:
        return "it needs 2+ good and 2+ labelled defective training images with masks"
    return None


@torch.no_grad()
def _features(model, dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features [n, C, fh, fw] fp32, defect cells [n, fh, fw] bool) of `indices`, unflipped, in order."""
    feats, cells = [], []
    for start in range(0, len(indices), 16):
        samples = [dataset[i] for i in indices[start : start + 16]]
        images = torch.stack([s["image"] for s in samples]).to(model.backbone.conv1.weight.device)
        pooled = model.features(images, need_pooled=True).pooled
        mask = torch.stack([s["mask"] for s in samples]).float()
        feats.append(pooled.float().cpu())
        cells.append(F.adaptive_avg_pool2d(mask, pooled.shape[-2:])[:, 0] > DEFECT_FRACTION)
    return torch.cat(feats), torch.cat(cells)


def _halves(indices: list[int], generator: torch.Generator) -> tuple[list[int], list[int]]:
    order = torch.randperm(len(indices), generator=generator).tolist()
    cut = len(order) // 2
    return [indices[k] for k in order[:cut]], [indices[k] for k in order[cut:]]


@torch.no_grad()
def probe_auroc(model, dataset) -> float:
    """Pixel AUROC (0-1) of the nearest-good-cell distance of `model`'s frozen pooled features on `dataset`'s
    training images, two halves scored against each other (module docstring)."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    labels = np.asarray(dataset.labels)
    good = [int(i) for i in np.flatnonzero(labels == 0)]
    bad = [int(i) for i in np.flatnonzero(labels == 1) if dataset.records[int(i)].mask is not None]
    good_a, good_b = _halves(good, generator)
    bad_a, bad_b = _halves(bad, generator)
    feats, cells = _features(model, dataset, good + bad)
    row = {index: k for k, index in enumerate(good + bad)}
    scores, targets = [], []
    for fit_good, eval_good, eval_bad in ((good_a, good_b, bad_b), (good_b, good_a, bad_a)):
        bank = feats[[row[i] for i in fit_good]].permute(0, 2, 3, 1).flatten(0, 2)  # [cells, C]
        mean, std = bank.mean(0), bank.std(0) + 1e-4
        bank = bank[torch.randperm(len(bank), generator=generator)[:BANK_CELLS]]
        bank = (bank - mean) / std
        bank_sq = bank.square().sum(1)
        for index in eval_good + eval_bad:
            x = (feats[row[index], :, ::2, ::2].permute(1, 2, 0) - mean) / std  # [h, w, C]
            h, w = x.shape[:2]
            x = x.reshape(-1, x.shape[-1])
            dist = (x.square().sum(1, keepdim=True) - 2 * x @ bank.T + bank_sq).clamp_min(0).min(1).values
            smooth = F.avg_pool2d(dist.sqrt().view(1, 1, h, w), 3, 1, 1, count_include_pad=False)
            scores.append(smooth.flatten())
            targets.append(cells[row[index], ::2, ::2].flatten())
    targets = torch.cat(targets).numpy()
    if targets.all() or not targets.any():
        return 0.5  # nothing to rank on (e.g. the masks cover no whole cell)
    return float(roc_auc_score(targets, torch.cat(scores).numpy()))
