"""Supervision regimes and the authors' settings for each (spec §2.5).

| regime       | data                                  | stop_grad | clip | overlap | flips | perlin_thr     | seed   |
| unsupervised | good training images only             | True      | no   | True    | no    | preset 0.2/0.6 | 42     |
| supervised   | good + defective, every defect masked | False     | 1.0  | False   | yes   | 0.6            | 456654 |
| mixed        | good + defective, some defects masked | False     | 1.0  | False   | yes   | 0.6 (0.2 if 0) | 456654 |
| weak         | good + defective, no masks used       | False     | 1.0  | False   | yes   | 0.2            | 456654 |

With the JIMS head (`adapt_cls_features=False`) the supervised, mixed and weak regimes also dilate training
masks (7x7) and weight the seg loss with distance-transform weights (w=3, p=2). Positives whose mask is not used
(`is_segmented=False`) get no seg loss but keep label 1 for the cls loss. "weak" is the authors' MIXED path with
0 segmented positives (what their published weak numbers come from).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.config import ModelConfig
from pipeline.config import Preset
from pipeline.config import TrainConfig
from training.generator import GeneratorConfig

UNSUPERVISED_SEED = 42
SUPERVISED_SEED = 456654
SUPERVISED_THRESHOLD = 0.6
WEAK_THRESHOLD = 0.2
JIMS_DILATE = 7
JIMS_DT = (3.0, 2.0)


@dataclass(frozen=True)
class Regime:
    name: str
    stop_grad: bool
    clip_grad: bool
    overlap: bool
    flips: bool
    seed: int
    uses_defects: bool  # defective training images are used (balanced sampler)
    requires_masks: bool  # every defective training image must have a mask
    masks_used: bool  # defect masks enter the seg loss (False: weak)
    perlin_threshold: float | None  # None: the preset's


REGIMES: dict[str, Regime] = {
    r.name: r
    for r in (
        Regime("unsupervised", True, False, True, False, UNSUPERVISED_SEED, False, False, False, None),
        Regime("supervised", False, True, False, True, SUPERVISED_SEED, True, True, True, SUPERVISED_THRESHOLD),
        Regime("mixed", False, True, False, True, SUPERVISED_SEED, True, False, True, SUPERVISED_THRESHOLD),
        Regime("weak", False, True, False, True, SUPERVISED_SEED, True, False, False, WEAK_THRESHOLD),
    )
}


def get_regime(name: str) -> Regime:
    if name not in REGIMES:
        raise ValueError(f"supervision={name!r} is unknown; accepted: {', '.join(REGIMES)}")
    return REGIMES[name]


@dataclass(frozen=True)
class Resolved:
    """Everything a run needs from (preset, regime, overrides)."""

    regime: Regime
    model: ModelConfig
    train: TrainConfig
    generator: GeneratorConfig
    dataset_options: dict  # passed to training.data.build_dataset for the training split
    mask_align_corners: bool  # GT-mask downsampling: False in ICPR, True in JIMS


def resolve(preset: Preset, regime_name: str, model: ModelConfig | None = None, seed: int | None = None) -> Resolved:
    """Apply the regime's settings to the preset. `model` (already overridden by the user) replaces the preset's
    model config; stop_grad always follows the regime."""
    regime = get_regime(regime_name)
    model = dataclasses.replace(model or preset.model, stop_grad=regime.stop_grad)
    threshold = preset.train.perlin_threshold if regime.perlin_threshold is None else regime.perlin_threshold
    train = dataclasses.replace(
        preset.train,
        perlin_threshold=threshold,
        supervised=regime.uses_defects,
        clip_grad=regime.clip_grad,
        overlap=regime.overlap,
        flips=regime.flips,
        seed=regime.seed if seed is None else seed,
        feature_window=preset.train.feature_window if regime.requires_masks else 0,  # windows need every mask
    )
    if train.feature_window < 0:
        raise ValueError(f"feature_window={train.feature_window!r} must be >= 0 (0: the whole feature map)")
    jims = not model.adapt_cls_features
    options: dict = {"good_only": not regime.uses_defects, "requires_masks": regime.requires_masks}
    if regime.uses_defects and jims:
        options |= {"dilate": JIMS_DILATE, "dt": JIMS_DT}
    synthetic = train.synthetic_with_masks or not regime.masks_used  # unsupervised and weak use no masks
    generator = GeneratorConfig(
        threshold=threshold, noise_std=train.noise_std, overlap=train.overlap, enabled=synthetic
    )
    return Resolved(regime, model, train, generator, options, mask_align_corners=jims)


def with_threshold(resolved: Resolved, threshold: float) -> Resolved:
    """The same run with another Perlin threshold (e.g. 0.2 for a mixed run whose data has 0 masked defects)."""
    train = dataclasses.replace(resolved.train, perlin_threshold=threshold)
    generator = dataclasses.replace(resolved.generator, threshold=threshold)
    return dataclasses.replace(resolved, train=train, generator=generator)


def regime_for_split(good: int, defective: int, masked: int) -> tuple[str, str]:
    """The regime a training split's content calls for, and why: labelled defects all with masks -> supervised,
    some with masks -> mixed, none with masks -> weak, only good images -> unsupervised."""
    content = f"{good} good, {defective} defective, {masked} with masks"
    if defective == 0:
        return "unsupervised", f"{content}: only good images"
    if masked == defective:
        return "supervised", f"{content}: every defect has a mask"
    if masked == 0:
        return "weak", f"{content}: no defect has a mask"
    return "mixed", f"{content}: some defects have masks"
