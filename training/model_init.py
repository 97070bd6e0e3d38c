"""Building the model to train: seeded init, backbone weights, and BN calibration of a random backbone.

With ImageNet weights (`IMAGENET1K_V1`, the paper's choice and the default of every preset) the backbone is used as
it is. Where no pretrained weights exist (`--backbone-weights random`, or the synthetic demo on an offline host) the
backbone keeps torchvision's own seeded initialisation (Kaiming-normal convs, BN gamma 1 and beta 0) and its BN
running statistics, which are 0 and 1 at init and would leave activations unnormalised, are set to the statistics
of the training images: one pass over them with the BN layers in training mode and a cumulative average
(momentum None). Only good training images are used, nothing is learned by gradient, and the calibrated
statistics are stored with the embedded backbone in the checkpoint, so evaluation and serving see the same
network. The recorded source reads e.g. `random(seed=42)+bn-calibrated(64 images)`.

Colour calibration (`TrainConfig.colour_floor` > 0, the tiny preset): before the BN pass, the input's colour
directions are rescaled by how little they vary on the good images, a regularised whitening folded into conv1's
weights (exact: conv1 is linear in its input channels). On a grey line nearly all variation is luminance, and a
random conv1 mixes a colour-only defect into its channels no more strongly than the texture's own luminance
changes; after the rescaling a colour direction weighs up to 1/sqrt(floor) times more. The floor (a fraction of
the largest eigenvalue) keeps sensor noise from being blown up.

Conv1 choice (`TrainConfig.choose_conv1`, the tiny preset): a copy of the random backbone whose conv1 starts from
the oriented bank is calibrated the same way, and the one whose frozen features rank the labelled training defects
higher keeps its place (training/conv1_choice.py); the recorded source names the choice and both probe scores.

Score init (`TrainConfig.score_map_max_init` != 0, the tiny preset): the cls head's fc weight on the map's max
(spec §1.3, input 256 of 258) starts at that value and every other fc weight and the bias at 0 instead of their
Xavier draws, so the image score starts as exactly the map's maximum and the 5x5-conv pools only add what training
finds in them. With 32 labelled defects the conv pools fit the training defects and rank unseen ones worse than the
map's max does (README: the stone line at seed 1); with their Xavier draws the other 257 inputs would start the
score as the map's max plus a random sum of them.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from pipeline.backbone import DEFAULT_WEIGHTS
from pipeline.backbone import RANDOM
from pipeline.backbone import Backbone
from pipeline.backbone import BackboneWeightsError
from pipeline.backbone import load_backbone
from pipeline.config import ModelConfig
from pipeline.model import CLS_HIDDEN
from pipeline.model import SuperSimpleNet
from training.conv1_choice import orient_conv1
from training.conv1_choice import probe_auroc
from training.conv1_choice import probe_reason
from training.state import seed_everything


def _batchnorms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def calibrate_batchnorm(backbone: Backbone, images, device: torch.device) -> int:
    """Set every BN running mean/var of `backbone` to the statistics of `images` (an iterable of [B,3,H,W]
    normalized batches). Returns the number of images seen. The backbone stays frozen and in eval mode."""
    bns = _batchnorms(backbone)
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.training = True  # bypasses Backbone.train(), which always keeps eval mode
    seen = 0
    try:
        for batch in images:
            batch = batch.to(device)
            backbone(batch)
            seen += batch.shape[0]
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
            bn.training = False
    if seen == 0:
        raise ValueError("BN calibration of the random backbone needs at least one training image")
    return seen


def colour_gains(cov: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(M [3, 3], gains [3]) for a pixel colour covariance [3, 3]: M = V diag(g) V^T with
    g_i = sqrt((l_max + e) / (l_i + e)), e = floor * l_max. The dominant direction keeps gain 1."""
    values, vectors = torch.linalg.eigh(cov.double())
    values = values.clamp(min=0)
    reg = values + floor * values.max()
    gains = (reg.max() / reg).sqrt()
    return (vectors * gains) @ vectors.T, gains


@torch.no_grad()
def calibrate_colour(backbone: Backbone, images, floor: float, device: torch.device) -> torch.Tensor:
    """Fold the colour rescaling of `images` (an iterable of [B,3,H,W] normalized batches) into conv1; returns
    the gains. conv1(M x) = (W M) x, so W'[o, c] = sum_k W[o, k] M[k, c]."""
    pixels = torch.cat([batch.to(device).permute(0, 2, 3, 1).reshape(-1, 3) for batch in images]).double()
    if pixels.shape[0] < 2:
        raise ValueError("colour calibration of the random backbone needs at least one training image")
    matrix, gains = colour_gains(torch.cov(pixels.T), floor)
    weight = backbone.conv1.weight
    weight.copy_(torch.einsum("okhw,kc->ochw", weight.double(), matrix.to(weight.device)).to(weight.dtype))
    return gains


def load_training_backbone(
    name: str, weights: str | None, allow_random_fallback: bool, log=print
) -> tuple[Backbone, str]:
    """(backbone, recorded source). weights None means the default (IMAGENET1K_V1). With `allow_random_fallback`
    (the synthetic demo only) an unavailable default falls back to a random backbone, announced loudly."""
    requested = weights or DEFAULT_WEIGHTS
    if requested == RANDOM:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # asked for explicitly; the source says so in the checkpoint
            return load_backbone(name, RANDOM), RANDOM
    rng = torch.random.get_rng_state()
    try:
        return load_backbone(name, requested), requested
    except (BackboneWeightsError, FileNotFoundError) as err:
        if weights is not None or not allow_random_fallback:
            raise
        torch.random.set_rng_state(rng)  # the failed attempt drew an init: fall back to the same backbone as 'random'
        log(
            f"WARNING: {name} {DEFAULT_WEIGHTS} weights are not available here ({err}).\n"
            f"WARNING: the synthetic demo continues with a RANDOM {name} backbone, BN-calibrated on the training "
            "images (README: 'Training and evaluation'); pass --backbone-weights to choose explicitly."
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_backbone(name, RANDOM), RANDOM


def build_model(
    config: ModelConfig,
    weights: str | None,
    seed: int,
    impl: str = "fast-cpu",
    allow_random_fallback: bool = False,
    log=print,
) -> tuple[SuperSimpleNet, str]:
    """Seed everything, then build backbone and heads in the official order (the init depends on the seed)."""
    seed_everything(seed)
    backbone, source = load_training_backbone(config.backbone, weights, allow_random_fallback, log)
    if source == RANDOM:
        source = f"{RANDOM}(seed={seed})"
    return SuperSimpleNet(config, backbone, impl=impl), source


@torch.no_grad()
def start_score_at_map_max(model: SuperSimpleNet, weight: float) -> None:
    """Start the cls fc as `weight` x the map-max pool (index 2 * CLS_HIDDEN of [x.max, x.mean, M.max, M.mean]):
    that weight set, every other weight and the bias 0. 0 keeps the Xavier draw. Draws nothing from the RNG."""
    if weight:
        fc = model.cls_head.fc
        fc.weight.zero_()
        fc.bias.zero_()
        fc.weight[0, 2 * CLS_HIDDEN] = weight


def calibrate_if_random(
    model: SuperSimpleNet,
    source: str,
    dataset,
    batch_size: int,
    device,
    log=print,
    colour_floor: float = 0.0,
    choose_conv1: bool = False,
) -> str:
    """Colour-calibrate (colour_floor > 0), then BN-calibrate a random backbone on the good images of `dataset`;
    with `choose_conv1`, also a copy whose conv1 starts from the oriented bank, and keep the one the training split
    ranks higher (training/conv1_choice.py). Returns the updated source string."""
    if not source.startswith(RANDOM):
        return source
    good = [i for i in range(len(dataset)) if _label(dataset, i) == 0]
    if not good:
        raise ValueError("BN calibration of the random backbone needs good training images; the dataset has none")
    subset = torch.utils.data.Subset(dataset, good)
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False)
    model.backbone.to(device)
    oriented = copy.deepcopy(model.backbone) if choose_conv1 else None
    calibrated = _calibrate(model.backbone, loader, colour_floor, device, log)
    if oriented is None:
        return f"{source}{calibrated}"
    reason = probe_reason(dataset)
    if reason:
        log(f"random {model.config.backbone} backbone: conv1 kept as drawn, not chosen ({reason})")
        return f"{source}{calibrated}"
    rng = torch.random.get_rng_state()  # the copy's calibration draws loader seeds; the training must not see it
    count = orient_conv1(oriented.conv1)
    _calibrate(oriented, loader, colour_floor, device, lambda _m: None)
    torch.random.set_rng_state(rng)
    drawn = probe_auroc(model, dataset)
    kept = model.backbone
    model.backbone = oriented
    bank = probe_auroc(model, dataset)
    take = torch.tensor([int(bank > drawn)], device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(take, src=0)  # a near tie may round apart across ranks: all follow rank 0
    if not take.item():
        model.backbone = kept
    choice = f"conv1-choice(drawn {100 * drawn:.1f}, oriented {100 * bank:.1f})"
    log(
        f"random {model.config.backbone} backbone: conv1 {'oriented' if take.item() else 'as drawn'} (pixel AUROC "
        f"of a nearest-good-cell probe on the training split: drawn {100 * drawn:.1f}, oriented {100 * bank:.1f})"
    )
    prefix = f"+oriented-conv1({count})" if take.item() else ""
    return f"{source}{prefix}{calibrated}+{choice}"


def _calibrate(backbone: Backbone, loader, colour_floor: float, device, log) -> str:
    """Colour (colour_floor > 0), then BN calibration of `backbone` on `loader`'s images; returns the source suffix."""
    suffix = ""
    if colour_floor > 0:
        gains = calibrate_colour(backbone, (s["image"] for s in loader), colour_floor, device)
        log(f"random {backbone.name} backbone: colour directions rescaled by {gains.tolist()} (conv1)")
        suffix = f"+colour(floor={colour_floor:g})"
    seen = calibrate_batchnorm(backbone, (s["image"] for s in loader), device)
    log(f"random {backbone.name} backbone: BN statistics calibrated on {seen} good training images")
    return f"{suffix}+bn-calibrated({seen} images)"


def _label(dataset, index: int) -> int:
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return int(labels[index])
    return int(dataset[index]["label"])
