"""Frozen-backbone feature cache: each epoch after the cache is filled costs only the trainable part.

What is cached: the backbone's layer2 and layer3 outputs (their native resolution; 8x smaller than the pooled
features at 2x the layer2 size), plus the targets at feature size (mask, label, is_segmented, loss weights). The
adaptor is trained, so adapted features cannot be cached; the upscale/pool runs inside the step (cheap).

Why it is exact: the backbone is frozen and in eval mode, so its outputs are a pure function of the image, and
the synthetic anomalies are keyed by (seed, epoch, position), not drawn from a stream that the backbone pass
could advance. The cache is filled with batches of the training batch size (CPU and GPU kernels may pick another
algorithm for another batch size), and a cached run then gives the same weights as an uncached one bit for bit
(`tests/test_feature_cache.py`).

Only valid when the features are a pure function of the key the sampler yields. A plain dataset's keys are its
indices. The supervised regimes' flips are deterministic: the balanced sampler yields (flip, index) codes, and
`keys=sampler.cache_keys()` caches each code the epochs can draw (every positive in each flip, every negative
unflipped) once. `FeatureCache.build` refuses any other dataset whose `augmented` attribute is True.

Storage: `memory` (tensors on the training device) or `disk` (layer2/layer3 in .npy memory maps under a folder,
the small targets in memory), for sets that do not fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.model import SuperSimpleNet
from training.generator import resize_loss_mask
from training.step import TrainBatch
from training.step import autocast
from training.step import targets_at_feature_size

STORAGES = ("memory", "disk")


class CacheRefused(ValueError):
    pass


def cache_bytes(model: SuperSimpleNet, count: int) -> int:
    """Bytes of layer2 + layer3 float32 outputs for `count` images."""
    c2, c3 = model.config.channels
    fh, fw = model.config.feature_size
    h, w = fh // 2, fw // 2
    h3, w3 = (h + 1) // 2, (w + 1) // 2
    return 4 * count * (c2 * h * w + c3 * h3 * w3)


class FeatureCache:
    def __init__(self, tensors: dict[str, torch.Tensor | np.ndarray], device: torch.device, rows: dict[int, int]):
        self.tensors = tensors
        self.device = device
        self.rows = rows  # sampler key (dataset index, or a balanced sampler's flip code) -> row

    def __len__(self) -> int:
        return len(self.tensors["label"])

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for k, v in self.tensors.items() if k != "bf16")

    @classmethod
    def build(
        cls,
        model: SuperSimpleNet,
        dataset,
        batch_size: int,
        device: torch.device,
        mask_align_corners: bool,
        storage: str = "memory",
        folder: str | Path | None = None,
        amp: bool = False,
        num_workers: int = 0,
        progress=None,
        keys: list[int] | None = None,
    ) -> FeatureCache:
        """One pass over `dataset` in index order (or over `keys`, the sampler's codes, in their order), in batches
        of the training batch size."""
        if getattr(dataset, "augmented", False) and keys is None:
            raise CacheRefused(
                "the feature cache needs un-augmented training data (backbone features must be a pure function "
                "of the image); this dataset applies image-level augmentation (flips): train without the cache"
            )
        if storage not in STORAGES:
            raise ValueError(f"feature cache storage={storage!r}; accepted: {', '.join(STORAGES)}")
        if storage == "disk" and folder is None:
            raise ValueError("a disk feature cache needs a folder")
        keys = list(range(len(dataset))) if keys is None else [int(k) for k in keys]
        source = torch.utils.data.Subset(dataset, keys)
        loader = torch.utils.data.DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        n = len(keys)
        tensors: dict = {}
        done = 0
        for samples in loader if progress is None else progress(loader):
            images = samples["image"].to(device)
            model.check_input(images)
            with torch.no_grad(), autocast(device, amp):
                l2, l3 = model.backbone(images)
            mask, _, plain = targets_at_feature_size(samples, model.config.feature_size, mask_align_corners, device)
            # per-sample resized weights, whatever the batch decides (resizing is per sample)
            loss_mask = resize_loss_mask(samples["loss_mask"].to(device), model.config.feature_size)
            rows = {
                "l2": l2,
                "l3": l3,
                "mask": mask.to(torch.uint8),
                "label": samples["label"].float(),
                "is_segmented": samples["is_segmented"].bool(),
                "loss_mask": loss_mask,
                "plain": plain,
                "index": torch.as_tensor(samples["index"]).long(),  # the dataset index (a code's image)
            }
            position = torch.arange(done, done + len(images))
            done += len(images)
            if not tensors:
                tensors = {k: _allocate(k, v, n, storage, folder, device) for k, v in rows.items()}
                tensors["bf16"] = {k for k, v in rows.items() if v.dtype == torch.bfloat16}
            for key, value in rows.items():
                _store(tensors[key], position, value)
        return cls(tensors, device, {key: row for row, key in enumerate(keys)})

    def batch(self, keys: torch.Tensor | list[int]) -> TrainBatch:
        """The TrainBatch of the sampler's `keys`, on the training device."""
        idx = torch.as_tensor([self.rows[int(k)] for k in keys], dtype=torch.long)
        t = self.tensors

        def take(key: str) -> torch.Tensor:
            value = t[key]
            if isinstance(value, np.ndarray):  # disk memory map: gather rows, then move
                rows = torch.from_numpy(np.ascontiguousarray(value[idx.numpy()]))
                return (rows.view(torch.bfloat16) if key in t["bf16"] else rows).to(self.device)
            return value[idx.to(value.device)].to(self.device)

        plain = take("plain")
        return TrainBatch(
            take("l2"),
            take("l3"),
            take("mask").float(),
            take("label"),
            take("is_segmented"),
            None if bool(plain.all()) else take("loss_mask"),
            take("index").cpu(),
        )


def _allocate(key: str, like: torch.Tensor, n: int, storage: str, folder, device: torch.device):
    shape = (n, *like.shape[1:])
    if storage == "disk" and key in ("l2", "l3"):
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        dtype = np.int16 if like.dtype == torch.bfloat16 else np.float32  # bf16 kept bit for bit
        return np.lib.format.open_memmap(path / f"{key}.npy", mode="w+", dtype=dtype, shape=shape)
    return torch.empty(
        shape, dtype=like.dtype, device=device if key not in ("label", "is_segmented", "index") else "cpu"
    )


def _store(target, index: torch.Tensor, value: torch.Tensor) -> None:
    if isinstance(target, np.ndarray):
        value = value.cpu()
        target[index.numpy()] = (value.view(torch.int16) if value.dtype == torch.bfloat16 else value).numpy()
    else:
        target[index.to(target.device)] = value.to(target.device)
