"""Stop-gradient per variant (spec §8.6), optimizer groups and the MultiStepLR schedule (spec §8.11)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TINY
from conftest import make_model

from pipeline.config import TrainConfig
from training.generator import AnomalyGenerator
from training.generator import GeneratorConfig
from training.generator import sample_seeds
from training.losses import focal_loss
from training.optim import build_optimizer
from training.optim import build_scheduler
from training.step import TrainForward


def cls_loss_grads(adapt_cls_features: bool, stop_grad: bool) -> dict[str, float]:
    config = dataclasses.replace(TINY, adapt_cls_features=adapt_cls_features, stop_grad=stop_grad)
    model = make_model(config).train()
    forward = TrainForward(model, AnomalyGenerator(GeneratorConfig(threshold=-1.0, no_anomaly="none")))
    images = torch.randn(2, 3, *config.image_size, generator=torch.Generator().manual_seed(0))
    l2, l3 = model.backbone(images)
    fh, fw = config.feature_size
    _, score, _, label = forward(l2, l3, torch.zeros(2, 1, fh, fw), torch.zeros(2), sample_seeds(0, 0, range(2)))
    focal_loss(score, label).backward()  # the classification loss only
    norms = {}
    for name, module in model.trainable_modules().items():
        grads = [p.grad for p in module.parameters()]
        norms[name] = sum(0.0 if g is None else float(g.abs().sum()) for g in grads)
    assert all(p.grad is None for p in model.backbone.parameters())
    return norms


def test_stop_grad_icpr():
    g = cls_loss_grads(adapt_cls_features=True, stop_grad=True)
    assert g["seg_head"] == 0.0  # exactly zero: the map reaches the cls head detached
    assert g["adaptor"] > 0 and g["cls_head"] > 0  # ICPR: the cls head consumes adapted features


def test_stop_grad_jims():
    g = cls_loss_grads(adapt_cls_features=False, stop_grad=True)
    assert g["seg_head"] == 0.0 and g["adaptor"] == 0.0  # JIMS: raw pooled features, frozen backbone
    assert g["cls_head"] > 0


def test_no_stop_grad_reaches_seg_head():
    g = cls_loss_grads(adapt_cls_features=False, stop_grad=False)
    assert g["seg_head"] > 0 and g["adaptor"] > 0  # through the map into the seg head and the adaptor


def test_optimizer_groups():
    model = make_model()
    opt = build_optimizer(model, TrainConfig())
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["adaptor", "seg_head", "cls_head"]
    assert (groups["adaptor"]["lr"], groups["adaptor"]["weight_decay"]) == (1e-4, 0.01)
    assert (groups["seg_head"]["lr"], groups["seg_head"]["weight_decay"]) == (2e-4, 1e-5)
    assert (groups["cls_head"]["lr"], groups["cls_head"]["weight_decay"]) == (2e-4, 1e-5)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    in_groups = [id(p) for g in opt.param_groups for p in g["params"]]
    trainable = [id(p) for m in model.trainable_modules().values() for p in m.parameters()]
    assert sorted(in_groups) == sorted(trainable) and len(set(in_groups)) == len(in_groups)
    assert not {id(p) for p in model.backbone.parameters()} & set(in_groups)


@pytest.mark.parametrize("epoch,factor", [(0, 1.0), (239, 1.0), (240, 0.4), (269, 0.4), (270, 0.16), (299, 0.16)])
def test_lr_schedule_for_300_epochs(epoch, factor):
    model = make_model()
    opt = build_optimizer(model, TrainConfig())
    sched = build_scheduler(opt, 300)
    for _ in range(epoch):  # one scheduler step at the end of every epoch
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([1e-4 * factor, 2e-4 * factor, 2e-4 * factor], rel=1e-9)
