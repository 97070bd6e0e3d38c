"""Bad input gets a clear error naming the argument and what is accepted."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from pipeline.config import ModelConfig
from pipeline.config import get_preset
from pipeline.config import override


def test_wrong_image_size(tiny_model):
    with pytest.raises(ValueError, match=r"image size \(64, 64\) does not match the model's image_size \(64, 96\)"):
        tiny_model(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("shape", [(1, 1, 64, 96), (1, 4, 64, 96), (3, 64, 96)])
def test_wrong_channels_or_rank(tiny_model, shape):
    with pytest.raises(ValueError, match=r"shape \[B, 3, H, W\]"):
        tiny_model(torch.zeros(shape))


def test_non_float_input(tiny_model):
    with pytest.raises(TypeError, match="normalized float tensor, got dtype torch.uint8"):
        tiny_model(torch.zeros(1, 3, *TINY.image_size, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny_model([[0.0]])


def test_unknown_backbone():
    with pytest.raises(ValueError, match="backbone='vit_b_16' is not supported; accepted: resnet18, resnet34"):
        ModelConfig(backbone="vit_b_16")


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset='mvtec2' is unknown; accepted: mvtec, visa, ksdd2, sensum"):
        get_preset("mvtec2")


@pytest.mark.parametrize("size", [(16, 256), (256,), (256.0, 256)])
def test_bad_image_size(size):
    with pytest.raises(ValueError, match="image_size=.* must be \\(H, W\\), two ints >= 32"):
        ModelConfig(image_size=size)


def test_bad_normalization():
    with pytest.raises(ValueError, match="std=.* must be positive"):
        ModelConfig(std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="mean=.* must have 3 values"):
        ModelConfig(mean=(0.5,))


def test_override_parses_and_refuses():
    cfg = override(ModelConfig(), ["align_corners=false", "image_size=[320,192]", "backbone=resnet50"])
    assert cfg.align_corners is False and cfg.image_size == (320, 192) and cfg.backbone == "resnet50"
    with pytest.raises(ValueError, match="--set 'colour=red': expected KEY=VALUE with KEY one of"):
        override(ModelConfig(), ["colour=red"])
    with pytest.raises(ValueError, match="backbone='vgg' is not supported"):
        override(ModelConfig(), ["backbone=vgg"])


def test_unknown_impl_on_model():
    from conftest import random_backbone

    from pipeline.model import SuperSimpleNet

    with pytest.raises(ValueError, match="impl='triton' is unknown; accepted: reference, fast-cpu"):
        SuperSimpleNet(TINY, random_backbone("resnet18"), impl="triton")
    with pytest.raises(ValueError, match="config.backbone is 'resnet50'"):
        SuperSimpleNet(ModelConfig(backbone="resnet50"), random_backbone("resnet18"))
