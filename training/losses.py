"""Training losses (spec §2.2): focal (gamma 4, no alpha) on the map and the score, truncated L1 on the map.

    L = good + bad + seg_focal + cls_focal
    good      = mean over normal pixels  (m' = 0) of max(M + 0.5, 0)     (an empty side contributes 0)
    bad       = mean over anomalous pixels (m' > 0) of max(-M + 0.5, 0)
    seg_focal = mean over pixels of FL(M, m')
    cls_focal = mean over the 2B samples of FL(s, y')

JIMS form (OFF-JIMS train.py): per-pixel maps multiplied by the distance-transform `loss_mask` (not renormalised),
and only samples with `is_segmented` enter the three seg terms; the cls term covers every sample. With every sample
segmented and all-ones weights this is exactly the ICPR total, so one function serves both.

The focal loss is computed from logits (BCE-with-logits; torchvision's `sigmoid_focal_loss` form). It equals the
official BCE-on-probabilities form wherever the sigmoid is not saturated and keeps finite gradients where it is.

Distributed data parallel: every mean is a sum divided by a count. `counts_reducer` all-reduces the counts, and each
process divides its local sums by the global counts times the world size, so the gradient DDP averages is exactly the
gradient of the single-process loss over the global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

GAMMA = 4.0
TRUNCATION = 0.5


class LossParts(NamedTuple):
    total: torch.Tensor
    good: torch.Tensor
    bad: torch.Tensor
    seg_focal: torch.Tensor
    cls_focal: torch.Tensor


def focal_terms(logits: torch.Tensor, target: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """Per-element focal loss without alpha weighting: BCE(p, t) * (1 - p_t)^gamma, p = sigmoid(logits)."""
    logits, target = logits.float(), target.float()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = logits.sigmoid()
    p_t = p * target + (1 - p) * (1 - target)
    return ce * (1 - p_t) ** gamma


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    return focal_terms(logits, target, gamma).mean()


def truncated_l1_terms(seg_map: torch.Tensor, mask: torch.Tensor, th: float = TRUNCATION) -> torch.Tensor:
    """Per-pixel truncated L1 with flipped sign: normal pixels pushed below -th, anomalous ones above +th."""
    seg_map = seg_map.float()
    return torch.where(mask > 0, (th - seg_map).clamp(min=0), (seg_map + th).clamp(min=0))


def _mean(total: torch.Tensor, count: torch.Tensor, scale: float) -> torch.Tensor:
    # sum / global count (x world size under DDP); an empty selection contributes 0 and keeps the graph
    return total * (scale / count) if count > 0 else total * 0.0


def ssn_loss(
    seg_map: torch.Tensor,
    score: torch.Tensor,
    mask: torch.Tensor,
    label: torch.Tensor,
    is_segmented: torch.Tensor | None = None,
    loss_mask: torch.Tensor | None = None,
    counts_reducer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    world_size: int = 1,
) -> LossParts:
    """seg_map [2B,1,fh,fw] and score [2B] logits; mask [2B,1,fh,fw] and label [2B] targets after the generator;
    is_segmented [2B] bool (None: all True); loss_mask [2B,1,fh,fw] weights (None: all ones)."""
    n = seg_map.shape[0]
    seg = torch.ones(n, dtype=torch.bool, device=seg_map.device) if is_segmented is None else is_segmented.bool()
    seg_w = seg.float().view(n, 1, 1, 1).expand_as(seg_map)  # 1 on pixels of segmented samples
    l1 = truncated_l1_terms(seg_map, mask)
    focal = focal_terms(seg_map, mask)
    if loss_mask is not None:
        l1, focal = l1 * loss_mask, focal * loss_mask
    anomalous = (mask > 0).float()
    good_w, bad_w = seg_w * (1 - anomalous), seg_w * anomalous

    counts = torch.stack([good_w.sum(), bad_w.sum(), seg_w.sum(), torch.tensor(float(n), device=seg_map.device)])
    if counts_reducer is not None:
        counts = counts_reducer(counts.detach())
    n_good, n_bad, n_seg, n_cls = counts.tolist()
    good = _mean((l1 * good_w).sum(), n_good, world_size)
    bad = _mean((l1 * bad_w).sum(), n_bad, world_size)
    seg_focal = _mean((focal * seg_w).sum(), n_seg, world_size)
    cls_focal = _mean(focal_terms(score, label).sum(), n_cls, world_size)
    return LossParts(good + bad + seg_focal + cls_focal, good, bad, seg_focal, cls_focal)
