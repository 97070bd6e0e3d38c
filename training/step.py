"""One training step's tensors: batch preparation (frozen backbone, targets at feature size) and the trainable
forward (feature stage + adaptor, synthetic anomalies, heads) that DistributedDataParallel wraps.

    sample batch (training/data contract) -> prepare_batch -> TrainBatch(l2, l3, mask, label, is_segmented, ...)
    TrainBatch -> TrainForward -> (seg logits [2B,1,fh,fw], score logits [2B], mask' [2B,1,fh,fw], label' [2B])
    (with feature windows, training/windows.py, fh = fw = the window's size)

The backbone is frozen and always in eval mode, so its outputs are a pure function of the image: that is what
training/feature_cache.py stores, and the cached and uncached paths meet at `TrainBatch`.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from kernels import reference
from pipeline.model import SuperSimpleNet
from training.generator import AnomalyGenerator
from training.generator import downsample_mask
from training.generator import resize_loss_mask
from training.windows import crop_windows


class TrainBatch(NamedTuple):
    l2: torch.Tensor  # [B, C2, h, w] backbone layer2
    l3: torch.Tensor  # [B, C3, h3, w3] backbone layer3
    mask: torch.Tensor  # [B, 1, fh, fw] GT mask at feature size, {0, 1}
    label: torch.Tensor  # [B] float
    is_segmented: torch.Tensor  # [B] bool
    loss_mask: torch.Tensor | None  # [B, 1, fh, fw] distance-transform weights; None when all ones
    index: torch.Tensor  # [B] int64 dataset indices


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose oneDNN convolutions run bf16 natively (AMX or AVX512-BF16): there bf16 is 2-4x faster
    than fp32; elsewhere it is emulated and slower."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def cpu_bf16_for(precision: str) -> bool:
    """`--precision` -> whether the CPU training step runs under bf16 autocast (auto: where bf16 is native)."""
    return precision == "bf16" or (precision == "auto" and cpu_has_native_bf16())


def autocast(device: torch.device, enabled: bool, cpu: bool = False):
    """bf16 autocast on CUDA when `enabled`, on CPU when `cpu`; a no-op context otherwise."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def targets_at_feature_size(
    samples: dict, size: tuple[int, int], mask_align_corners: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(mask [B,1,fh,fw], loss_mask [B,1,fh,fw] or None when all ones, per-sample all-ones flags [B])."""
    mask = downsample_mask(samples["mask"].to(device), size, mask_align_corners)
    raw = samples["loss_mask"].to(device)
    plain = (raw == 1).flatten(1).all(dim=1)
    loss_mask = None if bool(plain.all()) else resize_loss_mask(raw, size)
    return mask, loss_mask, plain


def prepare_batch(
    model: SuperSimpleNet, samples: dict, mask_align_corners: bool, device: torch.device, amp: bool
) -> TrainBatch:
    """A collated batch of dataset samples -> TrainBatch on `device` (backbone run without grad)."""
    images = samples["image"].to(device, non_blocking=True)
    model.check_input(images)
    with torch.no_grad(), autocast(device, amp):
        l2, l3 = model.backbone(images)
    mask, loss_mask, _ = targets_at_feature_size(samples, model.config.feature_size, mask_align_corners, device)
    return TrainBatch(
        l2,
        l3,
        mask,
        samples["label"].to(device).float(),
        samples["is_segmented"].to(device).bool(),
        loss_mask,
        torch.as_tensor(samples["index"]).long(),
    )


class TrainForward(nn.Module):
    """The trainable part of a step; `model` keeps its own module names, so DDP and checkpoints see the same
    parameters. forward -> (seg_map, score, mask', label')."""

    def __init__(self, model: SuperSimpleNet, generator: AnomalyGenerator):
        super().__init__()
        self.model = model
        self.generator = generator

    def forward(
        self,
        l2: torch.Tensor,
        l3: torch.Tensor,
        mask: torch.Tensor,
        label: torch.Tensor,
        seeds: list[int],
        windows: list[tuple[int, int]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`windows`: per-sample (top, left) of a feature window (training/windows.py); `mask` is then already
        cropped to it, and the features are cropped here, after the feature stage saw the whole map."""
        m = self.model
        cfg = m.config
        need_pooled = not cfg.adapt_cls_features
        pooled, adapted = reference.feature_stage(
            l2, l3, m.adaptor.weight, m.adaptor.bias, cfg.align_corners, m.impl, need_pooled
        )  # [B, C, fh, fw] each (pooled None in ICPR)
        if pooled is not None:
            pooled = pooled.detach()  # frozen-backbone features: no gradient flows into them
        if windows is not None:
            size = mask.shape[-1]
            adapted, pooled = crop_windows(adapted, windows, size), crop_windows(pooled, windows, size)
        out = self.generator(adapted, pooled, mask, label, seeds)
        if torch.is_autocast_enabled("cpu"):  # oneDNN's bf16 convolutions are fastest on NHWC
            out = out._replace(adapted=out.adapted.contiguous(memory_format=torch.channels_last))
        cls_features = out.adapted if cfg.adapt_cls_features else out.pooled
        seg_map, score = m.heads(out.adapted, cls_features)
        return seg_map, score, out.mask, out.label
