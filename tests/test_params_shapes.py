"""Parameter counts, MACs and tensor shapes for WRN50-2 (spec §1.5, §1.6, §8.1-8.3)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from pipeline.config import ModelConfig
from pipeline.stats import build_meta_model
from pipeline.stats import model_stats

WRN50 = ModelConfig()  # wide_resnet50_2 at 256 x 256


def test_wrn50_parameter_counts():
    rows = {r.name: r for r in model_stats(WRN50)}
    assert rows["backbone"].params == 24_862_528 and rows["backbone"].trainable == 0
    assert rows["adaptor"].params == 2_360_832
    assert rows["seg_head"].params == 1_576_960
    assert rows["cls_head"].params == 4_919_043
    assert rows["total"].trainable == 8_856_835
    assert rows["total"].params == 33_719_363


@pytest.mark.parametrize("adapt_cls", [True, False], ids=["icpr", "jims"])
def test_cls_head_same_size_in_both_variants(adapt_cls):
    model = build_meta_model(ModelConfig(adapt_cls_features=adapt_cls))
    assert model.cls_head.conv[0].in_channels == 1537
    assert sum(p.numel() for p in model.cls_head.parameters()) == 4_919_043


def test_wrn50_macs_at_256():
    """Spec §1.6: backbone 12.00, adaptor 9.66, seg 6.45, cls conv 20.15 GMACs; total about 48.26."""
    gmacs = {r.name: r.macs / 1e9 for r in model_stats(WRN50)}
    assert gmacs["backbone"] == pytest.approx(12.00, abs=0.005)
    assert gmacs["adaptor"] == pytest.approx(9.66, abs=0.005)
    assert gmacs["seg_head"] == pytest.approx(6.45, abs=0.005)
    assert gmacs["cls_head"] == pytest.approx(20.15, abs=0.005)
    assert gmacs["total"] - gmacs["postprocess"] == pytest.approx(48.26, abs=0.01)


# (H, W): (layer2 HxW, layer3 HxW, feature HxW) from spec §1.5
SHAPES = {
    (256, 256): ((32, 32), (16, 16), (64, 64)),
    (640, 232): ((80, 29), (40, 15), (160, 58)),
    (320, 192): ((40, 24), (20, 12), (80, 48)),
    (144, 144): ((18, 18), (9, 9), (36, 36)),
}


@pytest.mark.parametrize("size", list(SHAPES), ids=lambda s: f"{s[0]}x{s[1]}")
def test_wrn50_shapes(size):
    (l2_hw, l3_hw, f_hw) = SHAPES[size]
    config = ModelConfig(image_size=size)
    assert config.feature_size == f_hw
    model = build_meta_model(config)
    seen = {}
    hooks = [
        model.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("backbone", [t.shape for t in o])),
        model.seg_head.register_forward_hook(lambda m, i, o: seen.__setitem__("seg", o.shape)),
        model.cls_head.conv.register_forward_hook(lambda m, i, o: seen.__setitem__("cls_conv", o.shape)),
        model.cls_head.fc.register_forward_hook(lambda m, i, o: seen.__setitem__("vec", i[0].shape)),
    ]
    images = torch.empty(2, 3, *size, device="meta")
    with torch.no_grad():
        feats = model.features(images)
        pred = model(images)
    for h in hooks:
        h.remove()
    assert seen["backbone"] == [(2, 512, *l2_hw), (2, 1024, *l3_hw)]
    assert feats.pooled.shape == feats.adapted.shape == (2, 1536, *f_hw)
    assert seen["seg"] == (2, 1, *f_hw)
    assert seen["cls_conv"] == (2, 128, *f_hw)
    assert seen["vec"] == (2, 258)
    assert pred.score.shape == pred.score_logit.shape == (2,)
    assert pred.anomaly_map.shape == (2, 1, *size)


def test_wrn50_real_forward_matches_meta_shapes():
    """One real (not meta) WRN50-2 forward at the smallest spec size, both formulations agreeing."""
    model = make_model(ModelConfig(image_size=(144, 144)))
    images = torch.randn(1, 3, 144, 144)
    with torch.no_grad():
        ref = model(images)
        model.impl = "fast-cpu"
        fast = model(images)
    assert ref.anomaly_map.shape == (1, 1, 144, 144) and torch.isfinite(ref.anomaly_map).all()
    torch.testing.assert_close(fast.anomaly_map, ref.anomaly_map, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast.score_logit, ref.score_logit, atol=1e-4, rtol=1e-5)
