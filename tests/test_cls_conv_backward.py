"""The cls head's conv with frozen features (JIMS training) skips their input gradient and changes nothing else:
the output and the weight, bias and map gradients are bit-identical to the plain conv on cat[F, M], in fp32 and
under CPU bf16 autocast (so training runs give the same weights as before the shortcut)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.model import ClsHead
from pipeline.model import FrozenFeaturesConv


def _plain_conv(conv: nn.Conv2d, features: torch.Tensor, seg_map: torch.Tensor) -> torch.Tensor:
    return conv(torch.cat([features, seg_map], dim=1))


def _shortcut_conv(conv: nn.Conv2d, features: torch.Tensor, seg_map: torch.Tensor) -> torch.Tensor:
    return FrozenFeaturesConv.apply(features, seg_map, conv.weight, conv.bias)


def _run(fn, conv: nn.Conv2d, features: torch.Tensor, seg_map: torch.Tensor, amp: bool):
    conv.zero_grad(set_to_none=True)
    seg_map = seg_map.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = fn(conv, features, seg_map * 1.0)  # the map reaches the conv through an op, as from the seg head
        loss = (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
    loss.backward()
    return out.detach(), conv.weight.grad, conv.bias.grad, seg_map.grad


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_shortcut_is_bit_identical_to_the_plain_conv(amp):
    torch.manual_seed(0)
    conv = nn.Conv2d(33, 16, 5, padding="same")
    features = torch.randn(3, 32, 12, 10)  # frozen: no gradient
    seg_map = torch.randn(3, 1, 12, 10)
    plain = _run(_plain_conv, conv, features, seg_map, amp)
    short = _run(_shortcut_conv, conv, features, seg_map, amp)
    for name, a, b in zip(("output", "weight grad", "bias grad", "map grad"), plain, short):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), f"{name}: max difference {(a.float() - b.float()).abs().max().item()}"


def test_cls_head_takes_the_shortcut_only_for_frozen_features():
    torch.manual_seed(0)
    head = ClsHead(8)
    seg_map = torch.randn(2, 1, 6, 6, requires_grad=True)
    calls = []
    original = FrozenFeaturesConv.forward

    def counting(ctx, *args):
        calls.append(1)
        return original(ctx, *args)

    FrozenFeaturesConv.forward = staticmethod(counting)
    try:
        head(torch.randn(2, 8, 6, 6), seg_map).sum().backward()  # JIMS: pooled features carry no gradient
        assert len(calls) == 1 and seg_map.grad is not None
        adapted = torch.randn(2, 8, 6, 6, requires_grad=True)  # ICPR: adapted features need their gradient
        head(adapted, seg_map).sum().backward()
        assert len(calls) == 1 and adapted.grad is not None and adapted.grad.abs().sum() > 0
        with torch.no_grad():  # inference: the plain conv, as exported
            head(torch.randn(2, 8, 6, 6), seg_map)
        assert len(calls) == 1
    finally:
        FrozenFeaturesConv.forward = original
