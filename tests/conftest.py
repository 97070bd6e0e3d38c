"""Shared fixtures: small models on random (explicitly requested) backbone weights, seeded."""

from __future__ import annotations

import warnings

import pytest
import torch

from pipeline.backbone import load_backbone
from pipeline.config import ModelConfig
from pipeline.model import SuperSimpleNet

try:  # the stream tests' session fixtures (one server for all); a host without the camera extra has no stream tests
    from stream_helpers import relay  # noqa: F401
    from stream_helpers import stream_assets  # noqa: F401
    from stream_helpers import stream_server  # noqa: F401
except ImportError:
    pass

torch.set_num_threads(2)

TINY = ModelConfig(backbone="resnet18", image_size=(64, 96))  # non-square, 16 x 24 feature map


def random_backbone(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(name, "random")


def make_model(config: ModelConfig = TINY, seed: int = 0, **kwargs) -> SuperSimpleNet:
    torch.manual_seed(seed)
    model = SuperSimpleNet(config, random_backbone(config.backbone), **kwargs)
    # give BN layers non-trivial running stats so eval-mode tests exercise them
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def tiny_model() -> SuperSimpleNet:
    return make_model()
