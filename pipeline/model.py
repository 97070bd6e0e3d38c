"""SuperSimpleNet as a pure `nn.Module` (spec §1; no training glue).

    image [B,3,H,W] -> frozen backbone -> layer2 [B,C2,h,w], layer3 [B,C3,~h/2,~w/2]
      -> feature stage (kernels.reference op a): pooled P [B,C,2h,2w], adapted A = adaptor(P)
      -> seg head(A) -> map logits M [B,1,2h,2w]
      -> cls head([F_cls, M']) -> score logit s [B]      F_cls = A (ICPR) or P (JIMS); M' = M.detach() if stop_grad
      -> postprocess (kernels.reference op b): upsample M to H x W + Gaussian blur (+ sigmoid)

Training code (training/) calls `features()` and `heads()` itself, perturbing A (and P) in between.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels import reference
from pipeline.backbone import Backbone
from pipeline.config import ModelConfig

SEG_HIDDEN = 1024  # hard-coded in the official code
CLS_HIDDEN = 128


class Features(NamedTuple):
    pooled: torch.Tensor | None  # [B, C, fh, fw] raw upscaled+pooled backbone features (no grad)
    adapted: torch.Tensor  # [B, C, fh, fw] adaptor output


class Prediction(NamedTuple):
    score_logit: torch.Tensor  # [B]
    score: torch.Tensor  # [B] sigmoid(score_logit)
    anomaly_map: torch.Tensor  # [B, 1, H, W] blurred logits, or probabilities when map_sigmoid


def check_images(images: torch.Tensor, image_size: tuple[int, int]) -> None:
    """A clear error for anything but a float [B, 3, H, W] batch at the model's image_size."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if not torch.is_floating_point(images):
        raise TypeError(f"images must be a normalized float tensor, got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B, 3, H, W] (RGB), got {list(images.shape)}")
    if tuple(images.shape[-2:]) != image_size:
        raise ValueError(
            f"image size {tuple(images.shape[-2:])} does not match the model's image_size "
            f"{image_size} (H, W); resize the input or use a model configured for it"
        )


def init_weights(module: nn.Module) -> None:
    """Xavier-normal conv/linear weights, BN gamma 1; biases keep PyTorch defaults (spec §1.1)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_normal_(module.weight)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.constant_(module.weight, 1)


class SegHead(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(
            nn.Conv2d(channels, SEG_HIDDEN, 1),
            nn.BatchNorm2d(SEG_HIDDEN),
            nn.LeakyReLU(0.2),
            nn.Conv2d(SEG_HIDDEN, 1, 1, bias=False),
        )


class FrozenFeaturesConv(torch.autograd.Function):
    """The cls head's 5x5 "same" conv on cat[F, M] where F carries no gradient: the same forward, and a backward
    that skips F's input gradient (the larger half of the conv's backward; weight, bias and M gradients are
    bit-identical to the plain conv's, autocast included: tests/test_cls_conv_backward.py)."""

    @staticmethod
    def forward(ctx, features, seg_map, weight, bias):
        x = torch.cat([features, seg_map], dim=1)  # [B, C + 1, h, w]
        if torch.is_autocast_enabled(x.device.type):  # the casts autocast would make for the conv
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            out = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        pad = [weight.shape[-1] // 2] * 2
        conv_backward = torch.ops.aten.convolution_backward
        _, grad_w, grad_b = conv_backward(
            grad, x, weight, [weight.shape[0]], [1, 1], pad, [1, 1], False, [0, 0], 1, [False, True, True]
        )
        grad_map = None
        if ctx.needs_input_grad[1]:  # the map's channel alone
            map_x, map_w = x[:, -1:], weight[:, -1:]
            mask = [True, False, False]
            grad_map = conv_backward(grad, map_x, map_w, None, [1, 1], pad, [1, 1], False, [0, 0], 1, mask)[0]
        return None, grad_map, grad_w, grad_b


class ClsHead(nn.Module):
    """5x5 conv block on [features, map] -> max/avg pools of it and of the map -> Linear(258, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels + 1, CLS_HIDDEN, 5, padding="same"), nn.BatchNorm2d(CLS_HIDDEN), nn.ReLU()
        )
        self.fc = nn.Linear(2 * CLS_HIDDEN + 2, 1)

    def forward(self, features: torch.Tensor, seg_map: torch.Tensor) -> torch.Tensor:
        # features: [B, C, fh, fw], seg_map: [B, 1, fh, fw] -> score logits [B]
        if torch.is_grad_enabled() and not features.requires_grad:  # JIMS training: frozen pooled features
            conv = self.conv[0]
            x = self.conv[2](self.conv[1](FrozenFeaturesConv.apply(features, seg_map, conv.weight, conv.bias)))
        else:
            x = self.conv(torch.cat([features, seg_map], dim=1))  # [B, 128, fh, fw]
        pooled = torch.cat(
            [x.amax(dim=(2, 3)), x.mean(dim=(2, 3)), seg_map.amax(dim=(2, 3)), seg_map.mean(dim=(2, 3))], 1
        )
        return self.fc(pooled).reshape(-1)  # [B, 258] -> [B]; safe for B == 1


class SuperSimpleNet(nn.Module):
    """The model. `impl` picks the formulation of the two fused ops: 'reference' or 'fast-cpu'."""

    def __init__(self, config: ModelConfig, backbone: Backbone, impl: str = "reference", map_sigmoid: bool = False):
        super().__init__()
        if backbone.name != config.backbone:
            raise ValueError(f"backbone module is {backbone.name!r} but config.backbone is {config.backbone!r}")
        if impl not in reference.IMPLS:
            raise ValueError(f"impl={impl!r} is unknown; accepted: {', '.join(reference.IMPLS)}")
        self.config = config
        self.impl = impl
        self.map_sigmoid = map_sigmoid
        c = config.feature_channels
        self.backbone = backbone
        # creation and init order as in the official code: adaptor (then its init), seg head, cls head, their init
        self.adaptor = nn.Conv2d(c, c, 1)
        self.adaptor.apply(init_weights)
        self.seg_head = SegHead(c)
        self.cls_head = ClsHead(c)
        for head in (self.seg_head, self.cls_head):
            head.apply(init_weights)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"adaptor": self.adaptor, "seg_head": self.seg_head, "cls_head": self.cls_head}

    def check_input(self, images: torch.Tensor) -> None:
        check_images(images, self.config.image_size)

    def features(self, images: torch.Tensor, need_pooled: bool = True) -> Features:
        self.check_input(images)
        l2, l3 = self.backbone(images)
        pooled, adapted = reference.feature_stage(
            l2, l3, self.adaptor.weight, self.adaptor.bias, self.config.align_corners, self.impl, need_pooled
        )
        return Features(pooled, adapted)

    def heads(self, seg_features: torch.Tensor, cls_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # seg_features: A (perturbed in training), cls_features: A (ICPR) or P (JIMS) -> (M [B,1,fh,fw], s [B])
        seg_map = self.seg_head(seg_features)
        cls_map = seg_map.detach() if self.config.stop_grad else seg_map
        return seg_map, self.cls_head(cls_features, cls_map)

    def cls_input(self, features: Features) -> torch.Tensor:
        return features.adapted if self.config.adapt_cls_features else features.pooled

    def postprocess(self, seg_map: torch.Tensor) -> torch.Tensor:
        return reference.anomaly_map(seg_map, self.config.image_size, self.config.sigma, self.map_sigmoid, self.impl)

    def forward(self, images: torch.Tensor) -> Prediction:
        """Inference: images [B, 3, H, W] normalized float -> Prediction."""
        feats = self.features(images, need_pooled=not self.config.adapt_cls_features)
        seg_map, score_logit = self.heads(feats.adapted, self.cls_input(feats))
        return Prediction(score_logit, score_logit.sigmoid(), self.postprocess(seg_map))
