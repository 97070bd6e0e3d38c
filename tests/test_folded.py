"""pipeline/folded.py: the folded graph equals the reference model (float64 to 1e-9), is accurate in float32,
fp16 and bf16, and never runs stale or on a model it does not cover."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY
from conftest import make_model
from torch import nn

from kernels import reference
from pipeline.config import PRESETS
from pipeline.config import ModelConfig
from pipeline.folded import FoldedSSN
from pipeline.folded import StaleFoldError
from pipeline.folding import UnsupportedModelError
from pipeline.model import Features
from pipeline.stats import build_meta_model

# (64, 96): layer2 8x12, layer3 4x6; (72, 100): KSDD2-like odd grids, layer2 9x13, layer3 5x7
SIZES = [(64, 96), (72, 100)]


def nontrivial_model(config: ModelConfig, seed: int = 0, dtype=torch.float32):
    """make_model (random BN running stats) plus random BN affine parameters and larger biases."""
    model = make_model(config, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.3)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.add_(torch.randn(module.bias.shape, generator=g) * 0.1)
    return model.to(dtype)


def images(batch: int, size, dtype=torch.float32, seed: int = 7) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rel_err(got: torch.Tensor, truth: torch.Tensor) -> float:
    """max |got - truth| / max |truth| (one number per output tensor)."""
    return ((got.double() - truth.double()).abs().max() / truth.double().abs().max()).item()


def reference_outputs(model, l2: torch.Tensor, l3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference model's forward from given backbone features: (score logits, anomaly map)."""
    cfg = model.config
    pooled, adapted = reference.feature_stage(l2, l3, model.adaptor.weight, model.adaptor.bias, cfg.align_corners)
    seg_map, score_logit = model.heads(adapted, model.cls_input(Features(pooled, adapted)))
    return score_logit, model.postprocess(seg_map)


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("adapt_cls", [True, False], ids=["icpr", "jims"])
@pytest.mark.parametrize("align_corners", [True, False], ids=["ac-true", "ac-false"])
def test_folded_equals_reference_float64(align_corners, adapt_cls, size):
    """Relative to max |reference|: <= 1e-9 for score logits and map, batch 3 and 1 (heads), batch 1 end to end."""
    config = ModelConfig(
        backbone="resnet18", image_size=size, align_corners=align_corners, adapt_cls_features=adapt_cls
    )
    model = nontrivial_model(config, seed=int(align_corners) + 2 * int(adapt_cls), dtype=torch.float64)
    folded = FoldedSSN.from_model(model)
    assert folded.seg_w2.dtype == torch.float64 and folded.backbone is not model.backbone
    assert folded.cls_bias.shape == (*config.feature_size, 128)  # the layout kernels/cls_head.py reads
    x = images(3, size, torch.float64)
    with torch.no_grad():
        l2, l3 = model.backbone(x)  # the heads see the same features; the backbone is a copy
        for batch in (3, 1):
            ref_score, ref_map = reference_outputs(model, l2[:batch], l3[:batch])
            seg_map, score_logit = folded.heads(l2[:batch], l3[:batch])
            assert rel_err(score_logit, ref_score) <= 1e-9
            assert rel_err(folded.postprocess(seg_map)[0], ref_map) <= 1e-9
        ref, got = model(x[:1]), folded(x[:1])
    assert got.score_logit.shape == (1,) and got.anomaly_map.shape == (1, 1, *size)
    assert rel_err(got.score_logit, ref.score_logit) <= 1e-9
    assert rel_err(got.anomaly_map, ref.anomaly_map) <= 1e-9
    assert torch.equal(got.score, got.score_logit.sigmoid())


def test_full_size_ksdd2_grid():
    """KSDD2 at 640x232 (layer2 80x29, layer3 40x15, features 160x58): resnet18 heads on random features, float32
    (<= 1e-4 relative; float64 exactness is shown on the small odd grids above)."""
    config = ModelConfig(backbone="resnet18", image_size=(640, 232), adapt_cls_features=True)
    model = nontrivial_model(config, seed=3)
    folded = FoldedSSN.from_model(model)
    g = torch.Generator().manual_seed(0)
    (h2, w2), (h3, w3) = config.layer_sizes
    l2 = torch.randn(1, 128, h2, w2, generator=g).relu().contiguous(memory_format=torch.channels_last)
    l3 = torch.randn(1, 256, h3, w3, generator=g).relu().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref_score, ref_map = reference_outputs(model, l2, l3)
        seg_map, score_logit = folded.heads(l2, l3)
    assert seg_map.shape == (1, 1, 160, 58)
    assert rel_err(score_logit, ref_score) <= 1e-4
    assert rel_err(folded.postprocess(seg_map)[0], ref_map) <= 1e-4


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_folds_and_runs_on_meta(preset):
    """Shapes at every preset size and backbone (WRN50 included), without weights or compute."""
    config = PRESETS[preset].model
    folded = FoldedSSN.from_model(build_meta_model(config))
    pred = folded(torch.empty(2, 3, *config.image_size, device="meta"))
    assert pred.score_logit.shape == (2,) and pred.anomaly_map.shape == (2, 1, *config.image_size)


@pytest.mark.parametrize("adapt_cls", [True, False], ids=["icpr", "jims"])
def test_float32_error_is_a_small_multiple_of_the_reference_error(adapt_cls):
    """Against a float64 reference: folded fp32 error <= 4x the reference model's own fp32 error, and <= 1e-4.

    Measured ratios 0.6-2.0 over both align_corners and both variants (the folded graph rounds differently, not
    more: fewer, larger GEMMs)."""
    config = ModelConfig(backbone="resnet18", image_size=(64, 96), align_corners=False, adapt_cls_features=adapt_cls)
    model = nontrivial_model(config, seed=1)
    truth_model = copy.deepcopy(model).double()
    x = images(3, config.image_size)
    with torch.no_grad():
        truth, ref, got = truth_model(x.double()), model(x), FoldedSSN.from_model(model)(x)
    for name in ("score_logit", "anomaly_map"):
        ref_err = rel_err(getattr(ref, name), getattr(truth, name))
        got_err = rel_err(getattr(got, name), getattr(truth, name))
        assert got_err <= 1e-4 and got_err <= 4 * ref_err + 1e-7, (name, got_err, ref_err)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1.5e-2), (torch.bfloat16, 6e-2)], ids=["fp16", "bf16"])
def test_low_precision_on_cpu(dtype, tol):
    """Folded from the fp32 model, cast once; vs float64: fp16 <= 1.5e-2, bf16 <= 6e-2 relative (measured
    <= 5.5e-3 and <= 2.6e-2; the reference model in the same dtype: 2-4e-3 and 1-2e-2)."""
    model = nontrivial_model(TINY, seed=2)
    x = images(2, TINY.image_size)
    folded = FoldedSSN.from_model(model, dtype=dtype)
    assert folded.seg_w2.dtype == dtype and next(folded.backbone.parameters()).dtype == dtype
    with torch.no_grad():
        truth, got = copy.deepcopy(model).double()(x.double()), folded(x.to(dtype))
    assert got.anomaly_map.dtype == dtype
    assert rel_err(got.score_logit, truth.score_logit) <= tol
    assert rel_err(got.anomaly_map, truth.anomaly_map) <= tol


def test_contract_map_sigmoid_and_channels_last_unchanged():
    model = nontrivial_model(TINY)
    model.map_sigmoid = True
    folded = FoldedSSN.from_model(model)
    assert folded.config == model.config and folded.map_sigmoid and not folded.training
    x = images(2, TINY.image_size)
    with torch.no_grad():
        ref, got = model(x), folded(x)
        folded.channels_last = False  # the backbone layout is a speed choice only (bench/backbone_cpu.py)
        plain = folded(x)
        seg, score = folded.seg_and_score(x)
        probs, probs_max = folded.postprocess(seg)
    assert got.anomaly_map.min() >= 0 and got.anomaly_map.max() <= 1
    torch.testing.assert_close(got.anomaly_map, ref.anomaly_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.score, ref.score, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.anomaly_map, got.anomaly_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.score_logit, got.score_logit, atol=1e-5, rtol=1e-5)
    assert seg.shape == (2, 1, *TINY.feature_size) and torch.equal(score, plain.score_logit)
    assert torch.equal(probs, plain.anomaly_map) and torch.equal(probs_max, probs.amax(dim=(1, 2, 3)))


def test_compiled_backbone_is_opt_in_and_stays_out_of_copies_and_state():
    """compile_backbone() wiring (inductor's numerics: bench/backbone_cpu.py prints its max difference)."""
    model = make_model()
    folded = FoldedSSN.from_model(model)
    keys = set(folded.state_dict())
    graphs = []

    def counting_backend(gm, example_inputs):  # a torch.compile backend that runs the captured graph as is
        graphs.append(gm)
        return gm.forward

    x = images(2, TINY.image_size)
    with torch.no_grad():
        plain = folded(x)
        compiled = folded.compile_backbone(backend=counting_backend)(x)
    assert graphs and set(folded.state_dict()) == keys
    torch.testing.assert_close(compiled.anomaly_map, plain.anomaly_map, atol=1e-6, rtol=0)
    assert "_compiled_backbone" not in copy.deepcopy(folded).__dict__
    assert "_compiled_backbone" not in folded.refresh().__dict__


def _edit_in_place(model):
    with torch.no_grad():
        model.adaptor.weight.mul_(1.5)


def _load_other_weights(model):
    model.load_state_dict(make_model(TINY, seed=5).state_dict())


def _replace_module(model):
    model.seg_head[0] = nn.Conv2d(TINY.feature_channels, 1024, 1)


def _update_bn_statistics(model):
    model.train()
    with torch.no_grad():
        model(images(2, TINY.image_size))
    model.eval()


def _edit_backbone(model):
    with torch.no_grad():
        model.backbone.layer2[0].conv1.weight.mul_(0.5)


@pytest.mark.parametrize(
    "change", [_edit_in_place, _load_other_weights, _replace_module, _update_bn_statistics, _edit_backbone]
)
def test_changed_source_is_refused_then_refreshed(change):
    model = make_model()
    folded = FoldedSSN.from_model(model)
    twin = copy.deepcopy(folded)  # what the export step does: the copy watches the same source
    x = images(2, TINY.image_size)
    with torch.no_grad():
        before = folded(x)
        change(model)
        for module in (folded, twin):
            with pytest.raises(StaleFoldError, match="changed after folding.*refresh"):
                module(x)
        after = folded.refresh()(x)
        expected = model(x)
    assert not torch.allclose(after.anomaly_map, before.anomaly_map, atol=1e-4)
    torch.testing.assert_close(after.anomaly_map, expected.anomaly_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(after.score_logit, expected.score_logit, atol=1e-5, rtol=1e-5)


def test_stale_message_names_the_tensor_and_source_may_go():
    model = make_model()
    folded = FoldedSSN.from_model(model)
    with torch.no_grad():
        model.cls_head.fc.bias.add_(1.0)
    assert folded.stale_reason() == "cls_head.fc.bias changed in place"
    model.config = ModelConfig(backbone="resnet18", image_size=(64, 96), align_corners=False)
    assert "config changed" in folded.stale_reason()
    del model  # the folded module holds no strong reference: nothing can change it any more
    assert folded.stale_reason() is None
    with pytest.raises(StaleFoldError, match="source model is gone"):
        folded.refresh()


C = 384  # TINY's feature channels (resnet18: 128 + 256)


def _unsupported_layers() -> list[tuple[str, nn.Module, str, str]]:
    """(module path, replacement, "what it is", "what the folded graph needs") as the refusal message words them."""
    return [
        (
            "adaptor",
            nn.Conv2d(C, C, 1, stride=2),
            "adaptor (in, out, kernel, bias) is (384, 384, ('stride/dilation/groups', (2, 2)), True)",
            "(384, 384, (1, 1), True)",
        ),
        (
            "seg_head.0",
            nn.Conv2d(C, 1024, 1, groups=2),
            "seg_head[0] (in, out, kernel, bias) is (384, 1024, ('stride/dilation/groups', (1, 1)), True)",
            "(384, 1024, (1, 1), True)",
        ),
        ("seg_head.1", nn.BatchNorm2d(1024, affine=False), "seg_head[1] has running stats and affine is False", "True"),
        ("seg_head.2", nn.LeakyReLU(0.1), "seg_head[2].negative_slope is 0.1", "0.2"),
        (
            "seg_head.3",
            nn.Conv2d(1024, 1, 1),
            "seg_head[3] (in, out, kernel, bias) is (1024, 1, (1, 1), True)",
            "(1024, 1, (1, 1), False)",
        ),
        (
            "cls_head.conv.0",
            nn.Conv2d(C + 1, 128, 5, padding="same", dilation=2),
            "cls_head.conv[0] (in, out, kernel, bias) is (385, 128, ('stride/dilation/groups', (1, 1)), True)",
            "(385, 128, (5, 5), True)",
        ),
        ("cls_head.conv.0", nn.Conv2d(C + 1, 128, 5, padding=1), "cls_head.conv[0].padding is 'same' is False", "True"),
        (
            "cls_head.conv.0",
            nn.Conv2d(C + 1, 128, 5, padding="same", padding_mode="reflect"),
            "cls_head.conv[0].padding_mode is 'reflect'",
            "'zeros'",
        ),
        (
            "cls_head.conv.1",
            nn.BatchNorm2d(128, track_running_stats=False),
            "cls_head.conv[1] has running stats and affine is False",
            "True",
        ),
        ("cls_head.fc", nn.Linear(258, 2), "cls_head.fc (in, out) is (258, 2)", "(258, 1)"),
    ]


def test_training_mode_and_unsupported_models_are_refused():
    model = make_model()
    with pytest.raises(UnsupportedModelError, match="training mode.*model.eval"):
        FoldedSSN.from_model(model.train())
    model.eval()
    with pytest.raises(RuntimeError, match="inference-only"):
        FoldedSSN.from_model(model).train()
    model.cls_head.conv[0] = nn.Conv2d(TINY.feature_channels + 1, 128, 3, padding=1)
    with pytest.raises(UnsupportedModelError, match=r"cls_head.conv\[0\].*\(385, 128, \(3, 3\), True\)"):
        FoldedSSN.from_model(model)
    model = make_model()
    model.seg_head[2] = nn.ReLU()
    with pytest.raises(UnsupportedModelError, match="layer types"):
        FoldedSSN.from_model(model)
    with pytest.raises(UnsupportedModelError, match="cannot fold a Sequential"):
        FoldedSSN.from_model(nn.Sequential())
    with pytest.raises(UnsupportedModelError) as err:
        FoldedSSN.from_model(make_model().train())
    assert str(err.value) == (
        "cannot fold a model in training mode (BatchNorm would use batch statistics); call model.eval() first"
    )
    with pytest.raises(UnsupportedModelError, match=r"^cannot fold this model: seg_head/cls_head layer types is \["):
        FoldedSSN.from_model(model)
    # one layer the folding does not cover at a time: the message names it, what it is and what is needed
    base = make_model()
    for where, layer, found, needed in _unsupported_layers():
        model = copy.deepcopy(base)
        parent, _, name = where.rpartition(".")
        setattr(model.get_submodule(parent), name, layer)
        with pytest.raises(UnsupportedModelError) as err:
            FoldedSSN.from_model(model.eval())
        assert str(err.value) == f"cannot fold this model: {found}, the folded graph needs {needed}", where
    # padding=2 on a 5x5 conv is padding "same": folded, and equal to the model
    model = copy.deepcopy(base)
    same = model.cls_head.conv[0]
    model.cls_head.conv[0] = nn.Conv2d(C + 1, 128, 5, padding=2)
    model.cls_head.conv[0].load_state_dict(same.state_dict())
    x = images(1, TINY.image_size)
    with torch.no_grad():
        expected, got = base(x), FoldedSSN.from_model(model)(x)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.score_logit, expected.score_logit, atol=1e-5, rtol=1e-5)


def test_bad_images_are_refused():
    folded = FoldedSSN.from_model(make_model())
    with pytest.raises(TypeError, match="images are torch.float64 but the folded model is torch.float32"):
        folded(images(1, TINY.image_size, torch.float64))
    with pytest.raises(ValueError, match=r"image size \(64, 64\) does not match"):
        folded(images(1, (64, 64)))
