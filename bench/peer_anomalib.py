"""Peer provider `anomalib`: anomalib's SupersimplenetModel carrying this model's weights, timed side by side.

Optional (`pip install -e '.[peers]'`, anomalib 2.7.0); bench/throughput.py skips it with one line when absent.
What anomalib 2.7.0's torch model computes at inference (read from its torch_model.py; nothing of it is copied here),
and how ours is configured to compute the same:
- feature stage: layer2/layer3 upscaled bilinearly without align_corners (= False), concatenated, 3x3 avg pool
  (count_include_pad), 1x1 adaptor conv -> ours with `align_corners=False` (the mvtec preset uses True, the
  official code's choice; timing does not depend on it);
- heads: `adapt_cls_features` selects ICPR (True) or JIMS (False), as ours -> passed through from our config;
- anomaly map: bilinear upsample, then a 25x25 Gaussian (sigma fixed at 4, reflect border) -> our sigma must be 4;
- eval forward returns sigmoid(score) and sigmoid(map) -> compared with ours at `map_sigmoid=True`;
- backbone: a timm model name (pretrained weights downloaded at construction) or any nn.Module (torchvision FX
  extraction of layer2/layer3) -> we pass timm's architecture built without weights (nothing downloaded) and copy
  our backbone's weights into the extracted graph.
Its modules: feature_extractor.feature_extractor.feature_extractor (the backbone graph), adaptor.projection,
segdec.seg_head (0 conv, 1 BN, 3 conv), segdec.cls_conv (0 conv, 1 BN), segdec.cls_fc.
`build_peer` checks the peer equal to our `reference` model within 1e-4 (score and map) before it is timed.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from pipeline.model import Prediction
from pipeline.model import SuperSimpleNet

PEER = "anomalib"
VERSION = "2.7.0"
INSTALL = "pip install -e '.[peers]' (anomalib 2.7.0)"
TOLERANCE = 1e-4  # max |peer - reference| on score and map probabilities, fp32
TIMM_NAMES = {  # torchvision-V1 weights layout under timm's names (anomalib: "use .tv weights")
    "resnet18": "resnet18.tv_in1k",
    "resnet34": "resnet34.tv_in1k",
    "resnet50": "resnet50.tv_in1k",
    "wide_resnet50_2": "wide_resnet50_2.tv_in1k",
    "wide_resnet101_2": "wide_resnet101_2.tv_in1k",
}


class PeerMismatch(RuntimeError):
    """The peer does not compute what `reference` computes; timing it would compare different work."""


def missing() -> str | None:
    """None when anomalib's SupersimplenetModel imports; else what is missing and how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from anomalib.models.image.supersimplenet.torch_model import SupersimplenetModel  # noqa: F401
    except ImportError as err:
        return f"anomalib is not installed ({err}); {INSTALL}"
    return None


def peer_config(config):
    """Our ModelConfig set to compute what anomalib computes (align_corners False); PeerMismatch where it cannot."""
    if config.sigma != 4:
        raise PeerMismatch(f"anomalib's anomaly map uses sigma 4, this config has sigma {config.sigma}")
    if config.backbone not in TIMM_NAMES:
        raise PeerMismatch(f"no timm name known for backbone {config.backbone!r}")
    return dataclasses.replace(config, align_corners=False)


class AnomalibSSN(nn.Module):
    """anomalib's model behind our Prediction contract (score and map probabilities; it returns no logit)."""

    def __init__(self, peer: nn.Module):
        super().__init__()
        self.peer = peer.eval()

    def backbone(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.peer.feature_extractor.feature_extractor(images)  # its layer2/layer3 extraction

    def forward(self, images: torch.Tensor) -> Prediction:
        out = self.peer(images)
        return Prediction(None, out.pred_score, out.anomaly_map)


def _copy(dst: nn.Module, src: nn.Module, what: str) -> None:
    ours, theirs = src.state_dict(), dst.state_dict()
    if set(ours) != set(theirs) or any(ours[k].shape != theirs[k].shape for k in ours):
        raise PeerMismatch(f"anomalib's {what} does not match ours: {sorted(set(ours) ^ set(theirs))[:4]}")
    dst.load_state_dict(ours)


def build_peer(model: SuperSimpleNet, check_images: torch.Tensor | None = None) -> AnomalibSSN:
    """anomalib's SupersimplenetModel with `model`'s weights (backbone, adaptor, seg head, cls conv and fc), checked
    equal to `model` (fp32, map_sigmoid=True, configured by `peer_config`) on `check_images` within TOLERANCE."""
    reason = missing()
    if reason is not None:
        raise ImportError(reason)
    import timm
    from anomalib.models.image.supersimplenet.torch_model import SupersimplenetModel

    config = model.config
    if config != peer_config(config):
        raise PeerMismatch(f"configure the model with peer_config() first (align_corners={config.align_corners})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = timm.create_model(TIMM_NAMES[config.backbone], pretrained=False)
        peer = SupersimplenetModel(
            backbone=backbone,
            layers=["layer2", "layer3"],
            stop_grad=config.stop_grad,
            adapt_cls_features=config.adapt_cls_features,
        )
    _copy(peer.feature_extractor.feature_extractor.feature_extractor, model.backbone, "backbone")
    _copy(peer.adaptor.projection, model.adaptor, "adaptor")
    _copy(peer.segdec.seg_head, model.seg_head, "seg head")
    _copy(peer.segdec.cls_conv, model.cls_head.conv, "cls conv")
    _copy(peer.segdec.cls_fc, model.cls_head.fc, "cls fc")
    wrapped = AnomalibSSN(peer).to(model.adaptor.weight.device)
    if check_images is not None:
        check_equal(wrapped, model, check_images)
    return wrapped


def check_equal(peer: AnomalibSSN, model: SuperSimpleNet, images: torch.Tensor) -> float:
    """Largest |peer - model| over score and map probabilities; PeerMismatch beyond TOLERANCE."""
    if not model.map_sigmoid:
        raise ValueError("compare with map_sigmoid=True: anomalib returns map probabilities")
    with torch.inference_mode():
        ours, theirs = model(images), peer(images)
    worst = 0.0
    for name in ("score", "anomaly_map"):
        a, b = getattr(ours, name).float(), getattr(theirs, name).float()
        if a.shape != b.shape:
            raise PeerMismatch(f"anomalib's {name} has shape {tuple(b.shape)}, reference {tuple(a.shape)}")
        diff = (a - b).abs().max().item()
        if not diff <= TOLERANCE:
            raise PeerMismatch(f"anomalib's {name} differs from reference by {diff:.3g} (> {TOLERANCE})")
        worst = max(worst, diff)
    return worst
