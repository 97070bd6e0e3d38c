"""Optimiser and schedule (spec §2.3): AdamW with three groups, MultiStepLR(0.8E, 0.9E, gamma 0.4) per epoch.

| group    | lr       | weight decay            |
| adaptor  | adapt_lr | 0.01 (AdamW default)    |
| seg_head | seg_lr   | 1e-5                    |
| cls_head | cls_lr   | 1e-5                    |

Milestones are `int(0.8 E)` and `int(0.9 E)` (anomalib's rounding; the official float milestones give the same
epochs whenever 0.8 E and 0.9 E are integers, e.g. 240 and 270 for E = 300), and at least 1: a very short run
(E = 1) starts at the full learning rate instead of decaying before its first step.
"""

from __future__ import annotations

import torch
from torch.optim import AdamW
from torch.optim.lr_scheduler import MultiStepLR

from pipeline.config import TrainConfig
from pipeline.model import SuperSimpleNet

HEAD_WEIGHT_DECAY = 1e-5
ADAPTOR_WEIGHT_DECAY = 0.01
LR_GAMMA = 0.4
MAX_GRAD_NORM = 1.0


def build_optimizer(model: SuperSimpleNet, train: TrainConfig) -> AdamW:
    groups = [
        {"name": "adaptor", "params": list(model.adaptor.parameters()), "lr": train.adapt_lr},
        {
            "name": "seg_head",
            "params": list(model.seg_head.parameters()),
            "lr": train.seg_lr,
            "weight_decay": HEAD_WEIGHT_DECAY,
        },
        {
            "name": "cls_head",
            "params": list(model.cls_head.parameters()),
            "lr": train.cls_lr,
            "weight_decay": HEAD_WEIGHT_DECAY,
        },
    ]
    return AdamW(groups, weight_decay=ADAPTOR_WEIGHT_DECAY)


def milestones(epochs: int) -> list[int]:
    return [max(1, int(epochs * 0.8)), max(1, int(epochs * 0.9))]


def build_scheduler(optimizer: torch.optim.Optimizer, epochs: int) -> MultiStepLR:
    """Stepped once per epoch, after the epoch's last batch."""
    return MultiStepLR(optimizer, milestones=milestones(epochs), gamma=LR_GAMMA)


def clip_gradients(model: torch.nn.Module, enabled: bool) -> float | None:
    """clip_grad_norm_(all parameters, 1) in the supervised regimes; returns the pre-clip norm."""
    if not enabled:
        return None
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM))
