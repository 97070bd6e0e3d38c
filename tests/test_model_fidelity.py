"""The model equals a plain composition of torch ops written here from the spec (§1.1-1.4, §8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import TINY
from conftest import make_model
from scipy import stats
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.transforms.functional import gaussian_blur

from pipeline.config import ModelConfig

BN_EPS = 1e-5  # nn.BatchNorm2d default, as the official code uses it (spec §1.1); never read from the model
BLUR_KERNEL = {4.0: 25, 3.5: 23}  # spec: 2 * ceil(3 sigma) + 1 (3.5: ceil, not round, which would give 21)


def spec_forward(model, images: torch.Tensor, align_corners: bool, adapt_cls: bool):
    """Spec semantics with the model's weights but none of its code paths (official-code layout)."""
    # backbone: torchvision net + create_feature_extractor(layer2, layer3), as the official code builds it
    net = getattr(torchvision.models, model.config.backbone)(weights=None)
    net.load_state_dict(model.backbone.state_dict(), strict=False)  # same key names; layer4/fc stay random
    extractor = create_feature_extractor(net.eval(), return_nodes=["layer2", "layer3"])
    feats = extractor(images)
    l2, l3 = feats["layer2"], feats["layer3"]
    h, w = l2.shape[-2:]
    up = [F.interpolate(t, size=(2 * h, 2 * w), mode="bilinear", align_corners=align_corners) for t in (l2, l3)]
    pooled = torch.nn.AvgPool2d(3, 1, 1)(torch.cat(up, dim=1))
    adapted = F.conv2d(pooled, model.adaptor.weight, model.adaptor.bias)
    s = model.seg_head
    hidden = F.leaky_relu(
        F.batch_norm(
            F.conv2d(adapted, s[0].weight, s[0].bias),
            s[1].running_mean,
            s[1].running_var,
            s[1].weight,
            s[1].bias,
            eps=BN_EPS,
        ),
        0.2,
    )
    seg = F.conv2d(hidden, s[3].weight)
    c = model.cls_head
    x = torch.cat([adapted if adapt_cls else pooled, seg], dim=1)
    x = F.conv2d(x, c.conv[0].weight, c.conv[0].bias, padding=2)
    x = F.relu(
        F.batch_norm(x, c.conv[1].running_mean, c.conv[1].running_var, c.conv[1].weight, c.conv[1].bias, eps=BN_EPS)
    )
    vec = torch.cat(
        [
            F.adaptive_max_pool2d(x, 1),
            F.adaptive_avg_pool2d(x, 1),
            F.adaptive_max_pool2d(seg, 1),
            F.adaptive_avg_pool2d(seg, 1),
        ],
        dim=1,
    ).flatten(1)
    score = F.linear(vec, c.fc.weight, c.fc.bias).squeeze(1)
    # official map: interpolate (align_corners False) then torchvision GaussianBlur(25, sigma=4), reflect
    k, sigma = BLUR_KERNEL[model.config.sigma], model.config.sigma
    amap = gaussian_blur(F.interpolate(seg, size=images.shape[-2:], mode="bilinear"), [k, k], [sigma, sigma])
    return score, amap


@pytest.mark.parametrize("impl", ["reference", "fast-cpu"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("adapt_cls", [True, False], ids=["icpr", "jims"])
@pytest.mark.parametrize("align_corners", [True, False], ids=["ac-true", "ac-false"])
def test_model_equals_spec_composition(align_corners, adapt_cls, batch, impl):
    config = ModelConfig(
        backbone="resnet18", image_size=(64, 96), align_corners=align_corners, adapt_cls_features=adapt_cls
    )
    model = make_model(config, seed=batch, impl=impl)
    images = torch.randn(batch, 3, 64, 96, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        pred = model(images)
        score, amap = spec_forward(model, images, align_corners, adapt_cls)
    assert pred.score_logit.shape == (batch,) and pred.anomaly_map.shape == (batch, 1, 64, 96)
    assert (pred.score_logit - score).abs().max().item() <= 1e-5
    assert (pred.anomaly_map - amap).abs().max().item() <= 1e-5
    assert torch.equal(pred.score, pred.score_logit.sigmoid())


def test_non_integer_sigma_equals_spec_composition():
    """sigma 3.5: the blur kernel is 23 taps (ceil); a model rounding 10.5 down to 10 (21 taps) fails here."""
    config = ModelConfig(backbone="resnet18", image_size=(64, 96), sigma=3.5)
    model = make_model(config, seed=4)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        pred = model(images)
        score, amap = spec_forward(model, images, config.align_corners, config.adapt_cls_features)
    assert (pred.anomaly_map - amap).abs().max().item() <= 1e-5
    assert (pred.score_logit - score).abs().max().item() <= 1e-5


def test_map_sigmoid_option(tiny_model):
    images = torch.randn(2, 3, *TINY.image_size)
    with torch.no_grad():
        logits = tiny_model(images).anomaly_map
        tiny_model.map_sigmoid = True
        probs = tiny_model(images).anomaly_map
    torch.testing.assert_close(probs, logits.sigmoid())


def test_backbone_identical_in_train_and_eval(tiny_model):
    images = torch.randn(2, 3, *TINY.image_size)
    eval_out = tiny_model.backbone(images)
    tiny_model.train()
    assert not tiny_model.backbone.training  # frozen backbone never leaves eval mode
    train_out = tiny_model.backbone(images)
    for a, b in zip(eval_out, train_out):
        assert torch.equal(a, b)
    assert tiny_model.seg_head.training and tiny_model.cls_head.training


def _cls_loss_grads(model, images):
    feats = model.features(images)
    seg, score = model.heads(feats.adapted, model.cls_input(feats))
    model.zero_grad(set_to_none=True)
    F.binary_cross_entropy_with_logits(score, torch.ones_like(score)).backward()
    return seg


def test_no_gradient_reaches_backbone():
    model = make_model().train()
    feats = model.features(torch.randn(2, 3, *TINY.image_size))
    seg, score = model.heads(feats.adapted, model.cls_input(feats))
    (seg.mean() + score.mean()).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.seg_head.parameters())
    assert model.adaptor.weight.grad is not None
    assert feats.pooled.grad_fn is None  # raw pooled features carry no graph


@pytest.mark.parametrize("adapt_cls", [True, False], ids=["icpr", "jims"])
def test_stop_grad_blocks_cls_loss(adapt_cls):
    """Spec §8.6: with stop_grad the cls loss never reaches the seg head; in JIMS not the adaptor either."""
    config = ModelConfig(backbone="resnet18", image_size=(64, 96), adapt_cls_features=adapt_cls, stop_grad=True)
    model = make_model(config).train()
    _cls_loss_grads(model, torch.randn(2, 3, 64, 96))
    assert all(p.grad is None or not p.grad.any() for p in model.seg_head.parameters())
    adaptor_grad = model.adaptor.weight.grad
    assert (adaptor_grad is not None and adaptor_grad.abs().sum() > 0) == adapt_cls

    model_sup = make_model(ModelConfig(backbone="resnet18", image_size=(64, 96), stop_grad=False)).train()
    _cls_loss_grads(model_sup, torch.randn(2, 3, 64, 96))
    assert model_sup.seg_head[0].weight.grad.abs().sum() > 0


def test_initialisation(tiny_model):
    """Spec §8.12: Xavier-normal weights; BN gamma 1, beta 0; default biases; no bias on the last seg conv."""
    model = make_model(seed=3)
    assert model.seg_head[3].bias is None and model.seg_head[3].weight.shape == (1, 1024, 1, 1)
    assert model.cls_head.fc.in_features == 258
    for bn in (model.seg_head[1], model.cls_head.conv[1]):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()
    w = model.adaptor.weight
    bound = 1 / w.shape[1] ** 0.5  # PyTorch default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert model.adaptor.bias.abs().max() <= bound and model.adaptor.bias.std() > bound / 4


def test_every_conv_and_linear_is_xavier_normal():
    """Distribution check per layer, not only the std (Xavier-uniform has the same std):
    - Kolmogorov-Smirnov against N(0, gain^2 * 2 / (fan_in + fan_out)) does not reject (p > 1e-3);
    - the share of |w| beyond sqrt(3) std, where Xavier-uniform has no mass at all, is the normal's 8.3 % +- half;
    - for layers of >= 10k weights, KS against the same-std uniform rejects (p < 1e-6)."""
    model = make_model(seed=3)
    layers = {
        name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and "backbone" not in name
    }
    assert set(layers) == {"adaptor", "seg_head.0", "seg_head.3", "cls_head.conv.0", "cls_head.fc"}
    normal_tail = 2 * stats.norm.sf(3**0.5)  # 0.0833
    for name, layer in layers.items():
        w = layer.weight.detach().double()
        receptive = w[0, 0].numel()
        std = (2 / ((w.shape[0] + w.shape[1]) * receptive)) ** 0.5
        z = (w / std).flatten().numpy()
        assert stats.kstest(z, "norm").pvalue > 1e-3, name
        tail = (abs(z) > 3**0.5).mean()
        assert 0.5 * normal_tail < tail < 1.5 * normal_tail, (name, tail)
        if z.size >= 10_000:
            assert stats.kstest(z, "uniform", args=(-(3**0.5), 2 * 3**0.5)).pvalue < 1e-6, name


def test_batch_of_one_and_batch_independence(tiny_model):
    images = torch.randn(3, 3, *TINY.image_size)
    with torch.no_grad():
        full = tiny_model(images)
        single = tiny_model(images[1:2])
    assert single.score.shape == (1,)
    torch.testing.assert_close(single.score_logit, full.score_logit[1:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single.anomaly_map, full.anomaly_map[1:2], atol=1e-5, rtol=1e-5)
