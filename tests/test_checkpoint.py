"""Checkpoint round trip and clear refusals of mismatched, corrupted or foreign files."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file
from safetensors.torch import save_file

from pipeline.checkpoint import CheckpointError
from pipeline.checkpoint import load_checkpoint
from pipeline.checkpoint import read_metadata
from pipeline.checkpoint import save_checkpoint
from pipeline.config import ModelConfig


def _predict(model, seed=1):
    images = torch.randn(2, 3, *model.config.image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(images)


def test_round_trip_embedded_backbone(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "ck.safetensors", "random", thresholds={"image": 0.5})
    loaded, meta = load_checkpoint(path, expected_config=TINY)
    assert loaded.config == TINY and not loaded.training
    assert meta["backbone_weights"] == "random" and '"image": 0.5' in meta["thresholds"]
    for a, b in zip(_predict(tiny_model), _predict(loaded)):
        assert torch.equal(a, b)


def test_round_trip_external_backbone_file(tmp_path, tiny_model):
    """Without an embedded backbone, the recorded local weights file rebuilds it."""
    backbone_file = tmp_path / "resnet18.pth"
    torch.save(tiny_model.backbone.state_dict(), backbone_file)  # torchvision key names
    path = save_checkpoint(tiny_model, tmp_path / "heads.safetensors", str(backbone_file), embed_backbone=False)
    assert not any(k.startswith("backbone.") for k in load_file(path))
    loaded, _ = load_checkpoint(path)
    for a, b in zip(_predict(tiny_model), _predict(loaded)):
        assert torch.equal(a, b)


def test_config_mismatch_names_the_key(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "ck.safetensors", "random")
    other = dataclasses.replace(TINY, align_corners=False, image_size=(64, 64))
    with pytest.raises(CheckpointError, match=r"align_corners: checkpoint has True, expected False.*image_size"):
        load_checkpoint(path, expected_config=other)


def test_tensor_shape_mismatch_names_the_key(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "ck.safetensors", "random")
    tensors = load_file(path)
    tensors["seg_head.0.weight"] = tensors["seg_head.0.weight"][:512]
    meta = read_metadata(path)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=r"'seg_head.0.weight' is \(512, 384, 1, 1\).*needs \(1024, 384, 1, 1\)"):
        load_checkpoint(path)


def test_config_of_another_backbone_is_refused(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "ck.safetensors", "random")
    meta = read_metadata(path)
    meta["config"] = dataclasses.replace(TINY, backbone="resnet50").to_json()
    save_file(load_file(path), str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="does not fit the resnet50 model"):
        load_checkpoint(path)


def test_missing_key_is_named(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "ck.safetensors", "random")
    tensors = load_file(path)
    del tensors["cls_head.fc.bias"]
    save_file(tensors, str(path), metadata=read_metadata(path))
    with pytest.raises(CheckpointError, match=r"missing keys \['cls_head.fc.bias'\]"):
        load_checkpoint(path)


def test_corrupted_file_fails_clearly(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "ck.safetensors", "random")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated copy
    with pytest.raises(CheckpointError, match="ck.safetensors"):
        load_checkpoint(path)
    path.write_bytes(b"\x00" * 64)  # garbage header
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="metadata 'format' is 'pt'"):
        load_checkpoint(path)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_invalid_config_metadata(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "ck.safetensors", "random")
    meta = read_metadata(path)
    meta["config"] = '{"backbone": "vgg16"}'
    save_file(load_file(path), str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="backbone='vgg16' is not supported"):
        load_checkpoint(path)


def test_config_json_round_trip():
    config = ModelConfig(backbone="resnet50", image_size=(640, 232), adapt_cls_features=True, sigma=3.0)
    assert ModelConfig.from_json(config.to_json()) == config


def test_half_precision_model_saves_as_float32(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model.half(), tmp_path / "ck.safetensors", "random")
    assert all(t.dtype in (torch.float32, torch.int64) for t in load_file(path).values())
    loaded, _ = load_checkpoint(path)
    assert loaded.adaptor.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.adaptor.weight, tiny_model.adaptor.weight.float())
