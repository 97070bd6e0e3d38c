"""Feature-level synthetic anomalies (spec §2.1) and GT-mask downsampling.

    adapted A [B, C, fh, fw] (+ pooled P in the JIMS variant), mask m [B, 1, fh, fw], label y [B]
      -> duplicate to 2B -> noise_mask = 1 * (1 - y if not bad) * (1 - m if not overlap) * Perlin mask
      -> A' = A + eps * noise_mask (P' = P + the same eps * noise_mask), eps ~ N(0, noise_std^2)
      -> m' = [m + noise_mask > 0], y' = [y + any(m') > 0]

Randomness is keyed per sample: sample `j` of the 2B batch draws its Perlin mask and its noise from a
`torch.Generator` on the features' device seeded with `seeds[j]` (the trainer derives them from the run seed, the
epoch and the sample's position in the epoch's global order). So a perturbation does not depend on how the global
batch is split across processes, on feature caching, or on where a resumed run restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from training.perlin import NO_ANOMALY
from training.perlin import perlin_mask

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Deterministic 63-bit seed from integers: a multiply-xorshift mix over the sequence with splitmix64's constants
    (not its shifts, so not splitmix64 itself; the seeds of every run depend on it as it is)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h >> 1


@dataclass(frozen=True)
class GeneratorConfig:
    threshold: float = 0.2  # perlin_thr: MVTec 0.2, VisA and supervised 0.6, weak 0.2
    noise_std: float = 0.015
    overlap: bool = True  # False: no synthetic noise on GT-defect pixels (supervised configs)
    bad: bool = True  # False: no synthetic noise on images labelled defective (no official config uses it)
    no_anomaly: str = "empty"
    enabled: bool = True  # False: no synthetic anomalies and no duplication (B samples out; see __call__)

    def __post_init__(self) -> None:
        if self.no_anomaly not in NO_ANOMALY:
            raise ValueError(f"no_anomaly={self.no_anomaly!r}; accepted: {', '.join(NO_ANOMALY)}")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std={self.noise_std!r} must be >= 0")


class Perturbed(NamedTuple):  # 2B samples (B when the generator is disabled)
    adapted: torch.Tensor  # [2B, C, fh, fw]
    pooled: torch.Tensor | None  # [2B, C, fh, fw] in the JIMS variant, else None
    mask: torch.Tensor  # [2B, 1, fh, fw] float {0, 1}
    label: torch.Tensor  # [2B] float {0, 1}
    noise_mask: torch.Tensor  # [2B, 1, fh, fw] where synthetic noise was added


def sample_seeds(base: int, epoch: int, positions: torch.Tensor | list[int]) -> list[int]:
    """Seeds of the 2B duplicated samples: copy 0 of every sample, then copy 1 (the duplication order)."""
    positions = [int(p) for p in positions]
    return [mix_seed(base, epoch, p, copy) for copy in (0, 1) for p in positions]


class AnomalyGenerator:
    def __init__(self, config: GeneratorConfig):
        self.config = config

    def masks_and_noise(
        self, seeds: list[int], channels: int, size: tuple[int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Perlin masks [N, 1, fh, fw] and unit-std Gaussian noise [N, C, fh, fw], one seed per sample."""
        gen = torch.Generator(device=device)
        masks, noise = [], []
        for seed in seeds:
            gen.manual_seed(seed)
            masks.append(perlin_mask(size, self.config.threshold, gen, self.config.no_anomaly)[0])
            noise.append(torch.randn((1, channels, *size), generator=gen, device=device))
        return torch.cat(masks), torch.cat(noise)

    def __call__(
        self,
        adapted: torch.Tensor,
        pooled: torch.Tensor | None,
        mask: torch.Tensor,
        label: torch.Tensor,
        seeds: list[int],
    ) -> Perturbed:
        # adapted/pooled: [B, C, fh, fw], mask: [B, 1, fh, fw] in {0, 1}, label: [B]; seeds: 2B ints
        b, c, fh, fw = adapted.shape
        if not self.config.enabled:
            # the duplicate would be an exact copy: with mean-reduced losses and batch-statistics BN the gradient
            # of [x, x] equals that of [x], so the copy is skipped (half the heads' work)
            pooled = None if pooled is None else pooled.float()
            return Perturbed(adapted.float(), pooled, mask.float(), label.float(), torch.zeros_like(mask).float())
        if len(seeds) != 2 * b:
            raise ValueError(f"need 2B = {2 * b} seeds (one per duplicated sample), got {len(seeds)}")
        cfg = self.config
        # float32 whatever the autocast dtype: noise of std 0.015 must not be rounded away
        adapted = torch.cat((adapted, adapted)).float()
        pooled = None if pooled is None else torch.cat((pooled, pooled)).float()
        mask = torch.cat((mask, mask)).float()
        label = torch.cat((label, label)).float()

        noise_mask, eps = self.masks_and_noise(seeds, c, (fh, fw), adapted.device)
        if not cfg.bad:
            noise_mask = noise_mask * (1 - label).view(-1, 1, 1, 1)
        if not cfg.overlap:
            noise_mask = noise_mask * (1 - mask)
        noise = eps * cfg.noise_std * noise_mask  # [2B, C, fh, fw]

        new_mask = (mask + noise_mask > 0).float()
        new_label = ((label + new_mask.flatten(1).amax(1)) > 0).float()
        pooled = None if pooled is None else pooled + noise
        return Perturbed(adapted + noise, pooled, new_mask, new_label, noise_mask)


def downsample_mask(mask: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """GT mask [B, 1, H, W] -> [B, 1, fh, fw] in {0, 1}: bilinear, then >= 0.5 (DeSTSeg's rule, spec §2.1).
    align_corners: False in ICPR and anomalib, True in JIMS."""
    small = F.interpolate(mask.float(), size=tuple(size), mode="bilinear", align_corners=align_corners)
    return (small >= 0.5).float()


def resize_loss_mask(loss_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Distance-transform weights [B, 1, H, W] -> [B, 1, fh, fw] (bilinear, align_corners=True, as OFF-JIMS)."""
    return F.interpolate(loss_mask.float(), size=tuple(size), mode="bilinear", align_corners=True)
