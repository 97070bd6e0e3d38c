"""Small in-memory datasets that follow the training sample contract (BRIEF.md), for the trainer tests."""

from __future__ import annotations

import torch

from pipeline.config import ModelConfig

SMALL = ModelConfig(backbone="resnet18", image_size=(32, 48))  # 8 x 12 features: fast training tests


class TensorDataset(torch.utils.data.Dataset):
    """`n` random normalized images; the last `n_defect` are defects with a rectangular mask (segmented unless
    `segmented=False`). Deterministic from `seed`."""

    augmented = False

    def __init__(self, n: int, config: ModelConfig, n_defect: int = 0, seed: int = 0, segmented: bool = True):
        g = torch.Generator().manual_seed(seed)
        h, w = config.image_size
        self.images = torch.randn(n, 3, h, w, generator=g)
        self.masks = torch.zeros(n, 1, h, w)
        self.labels_ = torch.zeros(n)
        for i in range(n - n_defect, n):
            y, x = int(torch.randint(0, h // 2, (1,), generator=g)), int(torch.randint(0, w // 2, (1,), generator=g))
            self.masks[i, :, y : y + h // 4, x : x + w // 4] = 1
            self.images[i, :, y : y + h // 4, x : x + w // 4] += 2.0
            self.labels_[i] = 1
        self.segmented = segmented

    @property
    def labels(self):
        return self.labels_.long().numpy()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        defect = bool(self.labels_[index])
        use_mask = not defect or self.segmented
        return {
            "image": self.images[index],
            "mask": self.masks[index] if use_mask else torch.zeros_like(self.masks[index]),
            "label": self.labels_[index],
            "is_segmented": torch.tensor(use_mask),
            "loss_mask": torch.ones_like(self.masks[index]),
            "path": f"mem://{index}",
            "index": index,
        }


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def max_state_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
