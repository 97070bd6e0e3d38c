"""The supervised balanced epoch of SegDecNet / SuperSimpleNet (spec §2.4), as a sampler + a flip view.

One epoch holds every positive once per flip block (blocks: unchanged, vertical flip, horizontal flip, 180°
rotation; only the first without `flips`) and as many negatives, drawn by inverse-frequency sampling:
    p = 1 - freq / max(freq);  p <- p - median(p) + 1;  p <- p ** (4 ln N_neg);  p /= sum(p)
with replacement only when more negatives are needed than exist. The first epoch draws uniformly (every
frequency is still 0). Negatives are never augmented. Length: 2 N_pos, or 8 N_pos with flips.

The authors keep the frequency counters inside the dataset, which forces `num_workers <= 1`. Here the sampler
(main process) draws the whole epoch at once, so any `num_workers` works, and each epoch is a pure function of
(seed, epoch): `set_epoch(e)` replays the counters, so a resumed run draws exactly what an uninterrupted one
would. It yields integer codes `flip * len(dataset) + index`; `FlipView` decodes them. A sample's `index` stays
the dataset index of its image (the flip is not part of it), and `FlipView.augmented` tells the trainer that
features are not a pure function of `index` (no feature cache).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from training.data.base import DatasetError
from training.data.base import DefectDataset
from training.data.labels import FLIPS


def inverse_frequency(freq: np.ndarray) -> np.ndarray:
    """Retrieval counts [N_neg] -> sampling probabilities [N_neg] (the authors' `generate_permutation`)."""
    p = 1.0 - freq / np.max(freq)
    p = p - np.median(p) + 1.0
    p = p ** (math.log(len(p)) * 4.0)
    return p / np.sum(p)


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Balanced supervised epochs over a DefectDataset; shard with num_replicas/rank for DistributedDataParallel."""

    def __init__(self, dataset: DefectDataset, *, flips: bool, seed: int, num_replicas: int = 1, rank: int = 0):
        self.positives = dataset.positive_indices
        self.negatives = dataset.negative_indices
        if len(self.positives) == 0:
            raise DatasetError(f"{dataset.source} [{dataset.split}]: supervised training needs defective images; none")
        if len(self.negatives) == 0:
            raise DatasetError(f"{dataset.source} [{dataset.split}]: supervised training needs good images; none")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.size = len(dataset)
        self.blocks = len(FLIPS) if flips else 1
        self.per_epoch_negatives = self.blocks * len(self.positives)
        self.replace = self.per_epoch_negatives > len(self.negatives)
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0
        self._freq = np.zeros(len(self.negatives))
        self._freq_epoch = 0  # counters hold the draws of epochs [0, _freq_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(2 * self.per_epoch_negatives / self.num_replicas)

    def _draw_negatives(self, epoch: int) -> np.ndarray:
        """Positions into `self.negatives` drawn for `epoch`; updates the counters (epochs must come in order)."""
        rng = np.random.default_rng([self.seed, epoch, 0])
        n = len(self.negatives)
        p = None if epoch == 0 else inverse_frequency(self._freq)
        drawn = rng.choice(n, size=self.per_epoch_negatives, replace=self.replace, p=p)
        np.add.at(self._freq, drawn, 1)
        return drawn

    def cache_keys(self) -> list[int]:
        """Every code an epoch can yield (each positive in each flip block, each negative unflipped), sorted: the
        keys a feature cache needs (training/feature_cache.py)."""
        codes = [block * self.size + int(i) for block in range(self.blocks) for i in self.positives]
        return sorted(codes + [int(i) for i in self.negatives])

    def negative_counts(self, epoch: int) -> np.ndarray:
        """How often each negative was drawn in epochs [0, epoch) (replayed if needed)."""
        self._advance_to(epoch)
        return self._freq.copy()

    def _advance_to(self, epoch: int) -> None:
        if epoch < self._freq_epoch:
            self._freq[:] = 0
            self._freq_epoch = 0
        while self._freq_epoch < epoch:
            self._draw_negatives(self._freq_epoch)
            self._freq_epoch += 1

    def epoch_plan(self, epoch: int) -> list[tuple[int, int]]:
        """Every (dataset index, flip code) of `epoch`, shuffled, before sharding."""
        self._advance_to(epoch)
        drawn = self._draw_negatives(epoch)
        self._freq_epoch += 1
        plan = [(int(i), block) for block in range(self.blocks) for i in self.positives]
        plan += [(int(self.negatives[j]), 0) for j in drawn]
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(plan))
        return [plan[k] for k in order]

    def __iter__(self):
        plan = self.epoch_plan(self.epoch)
        total = len(self) * self.num_replicas
        plan = plan + plan[: total - len(plan)]  # pad like DistributedSampler so every rank gets len(self)
        for index, flip in plan[self.rank :: self.num_replicas]:
            yield flip * self.size + index


class FlipView(torch.utils.data.Dataset):
    """Decodes BalancedSampler codes: `view[flip * len(dataset) + index]` = `dataset.load(index, flip)`."""

    def __init__(self, dataset: DefectDataset, flips: bool) -> None:
        self.dataset = dataset
        self.augmented = bool(flips)

    def __len__(self) -> int:
        return len(self.dataset) * len(FLIPS)

    def __getitem__(self, code: int) -> dict:
        flip, index = divmod(int(code), len(self.dataset))
        return self.dataset.load(index, flip)


def balanced_parts(
    dataset: DefectDataset, *, flips: bool, seed: int, num_replicas: int = 1, rank: int = 0
) -> tuple[FlipView, BalancedSampler]:
    """(dataset, sampler) for `DataLoader(view, batch_size, sampler=sampler)`; call `sampler.set_epoch(e)`."""
    sampler = BalancedSampler(dataset, flips=flips, seed=seed, num_replicas=num_replicas, rank=rank)
    return FlipView(dataset, flips), sampler
