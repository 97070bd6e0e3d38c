"""Frozen torchvision backbone returning layer2 and layer3 (spec §1.1).

Weights come from one of three explicit sources:
- a torchvision weights name (`IMAGENET1K_V1`, the paper's choice for WRN50-2): loaded through the torchvision
  weights API, which reads `$TORCH_HOME/hub/checkpoints` and downloads only when the file is not cached there;
- a local file (`.pth`/`.pt` state dict read with `weights_only=True`, or `.safetensors`), for offline hosts;
- `random`: only when asked for, with a warning, because results will be poor.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

from pipeline.config import BACKBONES

RANDOM = "random"
DEFAULT_WEIGHTS = "IMAGENET1K_V1"
_PRUNED = ("layer4.", "fc.")  # not part of the feature extractor


class BackboneWeightsError(RuntimeError):
    pass


class Backbone(nn.Module):
    """ResNet stem + layer1..layer3; frozen and always in eval mode (BN uses running stats in training too)."""

    def __init__(self, name: str):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"backbone={name!r} is not supported; accepted: {', '.join(BACKBONES)}")
        net = getattr(torchvision.models, name)(weights=None)
        self.name = name
        # torchvision's own module names, so its state dicts load as they are (minus layer4 and fc)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)  # frozen: never leaves eval mode

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, 3, H, W] normalized -> l2: [B, C2, H/8, W/8], l3: [B, C3, H/16, W/16] (ceil for odd sizes)
        with torch.no_grad():
            l2 = self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))
            return l2, self.layer3(l2)

    def load_torchvision_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a full torchvision state dict (layer4 and fc are skipped), checking every key and shape."""
        renamed = {k: v for k, v in state.items() if not k.startswith(_PRUNED)}
        own = self.state_dict()
        missing = sorted(set(own) - set(renamed))
        unexpected = sorted(set(renamed) - set(own))
        if missing or unexpected:
            raise BackboneWeightsError(
                f"backbone weights {source} do not fit {self.name}: missing {missing[:3]} unexpected {unexpected[:3]}"
            )
        for key, value in renamed.items():
            if value.shape != own[key].shape:
                raise BackboneWeightsError(
                    f"backbone weights {source}: {key} has shape {tuple(value.shape)}, "
                    f"{self.name} expects {tuple(own[key].shape)}"
                )
        self.load_state_dict(renamed)


def torchvision_weights(name: str, weights: str):
    """The torchvision weights enum member for `backbone` and a name like IMAGENET1K_V1."""
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[weights]
    except KeyError:
        accepted = ", ".join(m.name for m in enum)
        raise ValueError(
            f"backbone weights {weights!r} unknown for {name}; accepted: {accepted}, a file path, or '{RANDOM}'"
        ) from None


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise BackboneWeightsError(
            f"backbone weights file {str(path)!r} holds {type(state).__name__}, not a state dict"
        )
    return state


def load_backbone(name: str, weights: str = DEFAULT_WEIGHTS) -> Backbone:
    """Build `name` and load `weights` (a torchvision weights name, a file path, or 'random')."""
    backbone = Backbone(name)
    if weights == RANDOM:
        warnings.warn(
            f"backbone {name} uses RANDOM weights (asked for explicitly): defect detection results will be poor. "
            "Use IMAGENET1K_V1 or --backbone-weights PATH for real use.",
            stacklevel=2,
        )
        return backbone
    looks_like_path = (
        Path(weights).exists() or Path(weights).suffix in (".pth", ".pt", ".safetensors") or "/" in weights
    )
    if looks_like_path:
        backbone.load_torchvision_state_dict(read_weights_file(Path(weights)), repr(weights))
        return backbone
    member = torchvision_weights(name, weights)
    try:
        state = member.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # offline host, proxy, corrupt cache...
        raise BackboneWeightsError(
            f"could not load {name} weights {weights} through the torchvision weights API ({err}); "
            f"on an offline host, put the file {member.url.rsplit('/', 1)[-1]} in "
            f"{torch.hub.get_dir()}/checkpoints or pass --backbone-weights PATH"
        ) from err
    backbone.load_torchvision_state_dict(state, f"{name}.{weights}")
    return backbone
