"""training/model_init.py: the synthetic demo's fallback to a random backbone builds the very model that
`--backbone-weights random` builds (the failed pretrained attempt must not shift the seeded init)."""

from __future__ import annotations

import dataclasses

import torch

from pipeline.backbone import torchvision_weights
from pipeline.config import get_preset
from training.model_init import build_model


def test_fallback_to_random_equals_explicit_random(tmp_path, monkeypatch):
    # a corrupt file in the hub cache: the torchvision weights API fails its hash check, online or not
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / torchvision_weights("resnet18", "IMAGENET1K_V1").url.rsplit("/", 1)[-1]).write_bytes(b"not weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    config = dataclasses.replace(get_preset("tiny").model, image_size=(32, 32))
    said = []
    fallback, source = build_model(config, None, seed=7, allow_random_fallback=True, log=said.append)
    explicit, explicit_source = build_model(config, "random", seed=7)
    assert source == explicit_source == "random(seed=7)" and "RANDOM resnet18 backbone" in said[0]
    want = explicit.state_dict()
    for key, value in fallback.state_dict().items():
        assert torch.equal(value, want[key]), key
