"""Backbone weight sources: torchvision weights API (offline cache), local files, explicit random."""

from __future__ import annotations

import socket

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from pipeline.backbone import BackboneWeightsError
from pipeline.backbone import load_backbone
from pipeline.backbone import torchvision_weights


def _torchvision_state(name="resnet18", seed=0):
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None).state_dict()


def _same_as_torchvision(backbone, state, name="resnet18"):
    net = getattr(torchvision.models, name)(weights=None)
    net.load_state_dict(state)
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        got = backbone(x)[1]
    return torch.equal(want, got)


def test_torchvision_weights_api_reads_the_hub_cache(tmp_path, monkeypatch):
    """The real torchvision loading path, fed by a file we place in the hub cache (no download)."""
    state = _torchvision_state()
    member = torchvision_weights("resnet18", "IMAGENET1K_V1")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / member.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    backbone = load_backbone("resnet18", "IMAGENET1K_V1")
    assert _same_as_torchvision(backbone, state)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file(tmp_path, suffix):
    state = _torchvision_state(seed=3)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert _same_as_torchvision(load_backbone("resnet18", str(path)), state)


def test_random_backbone_warns():
    with pytest.warns(UserWarning, match="RANDOM weights.*results will be poor"):
        load_backbone("resnet18", "random")


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_backbone("resnet18", str(tmp_path / "missing.pth"))


def test_weights_of_another_backbone_are_refused(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(_torchvision_state("resnet50"), path)
    with pytest.raises(BackboneWeightsError, match="r50.pth.*(shape|do not fit)"):
        load_backbone("resnet18", str(path))


def test_unknown_weights_name_lists_accepted():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        load_backbone("wide_resnet50_2", "IMAGENET22K")


def test_unknown_backbone_lists_accepted():
    with pytest.raises(ValueError, match="backbone='vgg16' is not supported; accepted: resnet18"):
        load_backbone("vgg16", "random")


def _offline() -> bool:
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
        return False
    except OSError:
        return True


@pytest.mark.skipif(not _offline(), reason="host is online: torchvision would download instead of failing")
def test_offline_without_cache_explains_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BackboneWeightsError, match="resnet18-f37072fd.pth.*--backbone-weights PATH"):
        load_backbone("resnet18", "IMAGENET1K_V1")


def test_relative_weights_file_without_usual_suffix(tmp_path, monkeypatch):
    state = _torchvision_state(seed=5)
    torch.save(state, tmp_path / "weights.bin")
    monkeypatch.chdir(tmp_path)
    assert _same_as_torchvision(load_backbone("resnet18", "weights.bin"), state)
