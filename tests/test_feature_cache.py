"""Frozen-backbone feature cache: a cached run gives the same weights as an uncached one, bit for bit."""

from __future__ import annotations

import dataclasses
import tempfile

import pytest
import torch
from conftest import make_model
from train_helpers import SMALL
from train_helpers import TensorDataset
from train_helpers import trainable_state

from pipeline.config import get_preset
from training.data.base import build_dataset
from training.feature_cache import CacheRefused
from training.feature_cache import FeatureCache
from training.regimes import resolve
from training.trainer import FitOptions
from training.trainer import fit

CPU = torch.device("cpu")


def run(cache: str, epochs: int = 2):
    resolved = resolve(get_preset("tiny"), "unsupervised", model=SMALL)
    model = make_model(SMALL, seed=0)
    data = TensorDataset(6, SMALL, seed=1)
    opts = FitOptions(epochs=epochs, batch_size=3, feature_cache=cache, progress=False)
    result = fit(model, data, resolved, opts, CPU, log=lambda _m: None)
    return trainable_state(model), result


@pytest.fixture(scope="module")
def uncached():
    return run("off")


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_cached_run_equals_uncached_run(uncached, storage, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the disk cache goes without --out
    plain, plain_result = uncached
    cached, cached_result = run(storage)
    assert cached_result.cache == storage and plain_result.cache == "off"
    assert plain_result.step_losses == cached_result.step_losses  # identical loss curve
    for key in plain:
        assert torch.equal(plain[key], cached[key]), key  # identical weights, bit for bit
    assert any(not torch.equal(plain[k], trainable_state(make_model(SMALL, seed=0))[k]) for k in plain)
    assert list(tmp_path.iterdir()) == []  # a disk cache is removed at the end of the run


def test_cache_refuses_augmented_data():
    data = TensorDataset(4, SMALL)
    data.augmented = True
    with pytest.raises(CacheRefused, match="augment"):
        FeatureCache.build(make_model(SMALL), data, 2, CPU, mask_align_corners=True)


def supervised_run(root, cache: str, window: int):
    """A supervised fit with flips on a real generated line (3 good, 2 masked defects), heads on feature windows."""
    config = SMALL
    data = build_dataset(
        "synthetic",
        root,
        "train",
        config,
        category="stone",
        seed=2,
        size=64,
        train=3,
        test=2,
        train_defects=2,
        requires_masks=True,
    )
    resolved = resolve(get_preset("tiny"), "supervised", model=config)
    train = dataclasses.replace(resolved.train, feature_window=window)
    resolved = dataclasses.replace(resolved, train=train)
    model = make_model(resolved.model, seed=0)
    opts = FitOptions(epochs=2, batch_size=4, feature_cache=cache, progress=False)
    result = fit(model, data, resolved, opts, CPU, log=lambda _m: None)
    return trainable_state(model), result


@pytest.mark.parametrize("window", [0, 6])
def test_a_flipped_supervised_run_caches_each_flip_once_and_equals_the_uncached_run(tmp_path, window, monkeypatch):
    built = []
    real_build = FeatureCache.build.__func__
    monkeypatch.setattr(
        FeatureCache, "build", classmethod(lambda cls, *a, **k: built.append(k["keys"]) or real_build(cls, *a, **k))
    )
    plain, plain_result = supervised_run(tmp_path, "off", window)
    cached, cached_result = supervised_run(tmp_path, "memory", window)
    assert plain_result.cache == "off" and cached_result.cache == "memory"
    # 5 images: the 2 defects in each of the 4 flips, the 3 good ones unflipped, as (flip * 5 + index) codes
    assert built == [[0, 1, 2, 3, 4, 8, 9, 13, 14, 18, 19]]
    assert plain_result.step_losses == cached_result.step_losses
    for key in plain:
        assert torch.equal(plain[key], cached[key]), key
