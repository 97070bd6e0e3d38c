"""The supervised balanced epoch (spec §2.4): lengths, four flips per positive, inverse-frequency negatives."""

from __future__ import annotations

from collections import Counter

import datafakes
import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from training.data.base import DatasetError
from training.data.base import build_dataset
from training.data.sampler import BalancedSampler
from training.data.sampler import balanced_parts
from training.data.sampler import inverse_frequency


def fake_dataset(tmp_path, n_neg: int, n_pos: int, size=(40, 56)):
    datafakes.folder(tmp_path, good=n_neg, defects=n_pos, masks=n_pos)
    return build_dataset("folder", tmp_path, "train", ModelConfig(backbone="resnet18", image_size=size), dt=(3, 2))


def decode(sampler: BalancedSampler, codes) -> list[tuple[int, int]]:
    return [(c % sampler.size, c // sampler.size) for c in codes]


def test_epoch_lengths_and_four_flips_per_positive(tmp_path):
    data = fake_dataset(tmp_path, n_neg=20, n_pos=3)
    pos, neg = set(data.positive_indices.tolist()), set(data.negative_indices.tolist())
    plain = BalancedSampler(data, flips=False, seed=0)
    assert len(plain) == 2 * 3 == len(list(plain))
    flipped = BalancedSampler(data, flips=True, seed=0)
    items = decode(flipped, list(flipped))
    assert len(flipped) == 8 * 3 == len(items)
    assert Counter((i, f) for i, f in items if i in pos) == {(i, f): 1 for i in pos for f in range(4)}
    negatives = [(i, f) for i, f in items if i in neg]
    assert len(negatives) == 12 and all(f == 0 for _, f in negatives)  # negatives are never augmented
    assert len({i for i, _ in negatives}) == 12  # 12 <= 20: drawn without replacement


def test_replacement_only_when_more_negatives_are_needed(tmp_path):
    data = fake_dataset(tmp_path, n_neg=5, n_pos=3)
    sampler = BalancedSampler(data, flips=True, seed=1)
    negatives = [i for i, f in decode(sampler, list(sampler)) if i in set(data.negative_indices.tolist())]
    assert len(negatives) == 12 and len(set(negatives)) == 5


def test_inverse_frequency_formula():
    freq = np.array([0.0, 1.0, 2.0, 4.0])
    p = 1 - freq / 4
    p = (p - np.median(p) + 1) ** (4 * np.log(4))
    np.testing.assert_allclose(inverse_frequency(freq), p / p.sum())
    np.testing.assert_allclose(inverse_frequency(np.full(6, 3.0)), np.full(6, 1 / 6))  # equal counts: uniform


def test_negative_counts_even_out_over_epochs(tmp_path):
    data = fake_dataset(tmp_path, n_neg=30, n_pos=2)  # 8 negatives per epoch out of 30
    sampler = BalancedSampler(data, flips=True, seed=0)
    counts = sampler.negative_counts(15)  # 120 draws: 4 per negative on average
    assert counts.sum() == 120 and counts.max() - counts.min() <= 2
    spreads = []  # what plain uniform draws give: far less even
    for seed in range(20):
        rng, uniform = np.random.default_rng(seed), np.zeros(30)
        for _ in range(15):
            uniform[rng.choice(30, 8, replace=False)] += 1
        spreads.append(uniform.std())
    assert counts.std() < 0.5 * min(spreads)


def test_deterministic_resumable_and_sharded(tmp_path):
    data = fake_dataset(tmp_path, n_neg=9, n_pos=2)
    a, b = BalancedSampler(data, flips=True, seed=5), BalancedSampler(data, flips=True, seed=5)
    plans = []
    for epoch in range(4):
        a.set_epoch(epoch)
        plans.append(list(a))
    b.set_epoch(3)  # a resumed run at epoch 3 replays the counters: the same draws
    assert list(b) == plans[3] and plans[0] != plans[1]
    c = BalancedSampler(data, flips=True, seed=6)
    assert list(c) != plans[0]
    shards = [BalancedSampler(data, flips=True, seed=5, num_replicas=3, rank=r) for r in range(3)]
    for s in shards:
        s.set_epoch(3)
    got = [list(s) for s in shards]
    padded = plans[3] + plans[3][:2]  # 16 padded to 18, as DistributedSampler does
    assert all(len(s) == 6 for s in shards) and got == [padded[r::3] for r in range(3)]


def test_flip_view_flips_image_mask_and_weights_together(tmp_path):
    data = fake_dataset(tmp_path, n_neg=2, n_pos=1, size=(40, 56))  # no resize: flips are exact on the grid
    view, sampler = balanced_parts(data, flips=True, seed=0)
    assert view.augmented and not data.augmented
    index = int(data.positive_indices[0])
    base = view[index]
    for flip, dims in ((1, [-2]), (2, [-1]), (3, [-2, -1])):
        sample = view[flip * len(data) + index]
        assert sample["index"] == index and sample["path"] == base["path"]
        for key in ("image", "mask", "loss_mask"):
            assert torch.equal(sample[key], torch.flip(base[key], dims)), (flip, key)
    assert float(base["loss_mask"].max()) == 3.0 and float(base["mask"].sum()) > 0
    loader = torch.utils.data.DataLoader(view, batch_size=4, sampler=sampler)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 40, 56) and batch["is_segmented"].dtype == torch.bool


def test_sampler_needs_both_classes(tmp_path):
    data = fake_dataset(tmp_path, n_neg=3, n_pos=0)
    with pytest.raises(DatasetError, match="needs defective images"):
        BalancedSampler(data, flips=True, seed=0)
