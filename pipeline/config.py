"""Frozen configs and named presets (spec §1, §2.3-2.5).

`ModelConfig` fixes everything the `nn.Module` and a checkpoint depend on; `TrainConfig` holds the training
hyperparameters the training issue consumes. A `Preset` bundles both under a name (`mvtec`, `visa`, `ksdd2`,
`sensum`, `sensum_softgel`, `tiny`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from dataclasses import field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision constructor name -> (layer2 channels, layer3 channels)
BACKBONES: dict[str, tuple[int, int]] = {
    "resnet18": (128, 256),
    "resnet34": (128, 256),
    "resnet50": (512, 1024),
    "wide_resnet50_2": (512, 1024),
    "wide_resnet101_2": (512, 1024),
}
LAYERS = ("layer2", "layer3")  # the only layer pair the model supports (spec §1.1)
MIN_SIDE = 32  # layer3 must be >= 2x2 and the 25-tap reflect blur needs > 12 pixels


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and inference semantics; saved in every checkpoint."""

    backbone: str = "wide_resnet50_2"
    image_size: tuple[int, int] = (256, 256)  # (H, W) the model accepts
    align_corners: bool = True  # feature upscaling: official code True, anomalib False
    adapt_cls_features: bool = False  # True: ICPR (cls head sees adapted features); False: JIMS (raw pooled)
    stop_grad: bool = True  # detach the seg map on its way into the cls head (unsupervised configs)
    sigma: float = 4.0  # anomaly-map Gaussian; kernel = 2*ceil(3*sigma)+1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone={self.backbone!r} is not supported; accepted: {', '.join(BACKBONES)}")
        size = tuple(self.image_size)
        if len(size) != 2 or not all(isinstance(s, int) and s >= MIN_SIDE for s in size):
            raise ValueError(f"image_size={self.image_size!r} must be (H, W), two ints >= {MIN_SIDE}")
        object.__setattr__(self, "image_size", size)
        if not self.sigma > 0:
            raise ValueError(f"sigma={self.sigma!r} must be > 0")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name}={getattr(self, name)!r} must have 3 values (RGB)")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"std={self.std!r} must be positive")

    @property
    def channels(self) -> tuple[int, int]:
        return BACKBONES[self.backbone]

    @property
    def feature_channels(self) -> int:
        return sum(self.channels)

    @property
    def feature_size(self) -> tuple[int, int]:
        """Spatial size of the pooled/adapted features: 2x the layer2 size (spec §1.5)."""
        return tuple(2 * _resnet_out(s, 8) for s in self.image_size)

    @property
    def layer_sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Spatial sizes (h, w) of the backbone's layer2 and layer3 outputs at image_size."""
        return tuple(tuple(_resnet_out(s, stride) for s in self.image_size) for stride in (8, 16))

    @property
    def blur_kernel(self) -> int:
        return 2 * math.ceil(3 * self.sigma) + 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {sorted(unknown)}")
        for key in ("image_size", "mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters (spec §2.1-2.5); consumed by `training/`."""

    perlin_threshold: float = 0.2
    supervised: bool = False
    clip_grad: bool = False
    overlap: bool = True  # allow synthetic noise on GT-defect pixels
    flips: bool = False  # 4x flip augmentation of positives (supervised)
    epochs: int = 300
    batch_size: int = 32
    adapt_lr: float = 1e-4
    seg_lr: float = 2e-4
    cls_lr: float = 2e-4
    seed: int = 42
    noise_std: float = 0.015
    # False: where labelled defect masks train the seg head (supervised, mixed), no feature-noise anomalies and no
    # duplicated batch; the unsupervised and weak regimes always use them (nothing else teaches the seg head there)
    synthetic_with_masks: bool = True
    colour_floor: float = 0.0  # > 0: a random backbone's conv1 gets the colour rescaling (training/model_init.py)
    choose_conv1: bool = False  # a random conv1 as drawn or the oriented bank, by a probe (training/conv1_choice.py)
    feature_window: int = 0  # > 0: supervised steps train the heads on an n x n feature window (training/windows.py)
    score_map_max_init: float = 0.0  # != 0: the cls fc starts as this x the map's max (training/model_init.py)


@dataclass(frozen=True)
class Preset:
    name: str
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    note: str = ""


_SUPERVISED = TrainConfig(perlin_threshold=0.6, supervised=True, clip_grad=True, overlap=False, flips=True, seed=456654)
_SUP_MODEL = {"stop_grad": False}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("mvtec", ModelConfig(), TrainConfig(perlin_threshold=0.2), "MVTec AD, unsupervised"),
        Preset("visa", ModelConfig(), TrainConfig(perlin_threshold=0.6), "VisA, unsupervised"),
        Preset("ksdd2", ModelConfig(image_size=(640, 232), **_SUP_MODEL), _SUPERVISED, "KSDD2 N246, supervised"),
        Preset("sensum", ModelConfig(image_size=(320, 192), **_SUP_MODEL), _SUPERVISED, "SensumSODF capsule"),
        Preset("sensum_softgel", ModelConfig(image_size=(144, 144), **_SUP_MODEL), _SUPERVISED, "SensumSODF softgel"),
        Preset(
            "tiny",
            # supervised on the line's labelled defects, JIMS head (cls head on the pooled features, dilated and
            # distance-weighted masks): with a random backbone the unsupervised maps depend on the seed. The CPU
            # recipe (README "Training and evaluation", bench/quality.py): the masks alone teach the seg head (no
            # feature-noise anomalies, so no duplicated batch), twice the authors' learning rates, a
            # colour-calibrated conv1 (as drawn or the oriented bank, chosen on the training split), 320x320 input
            # (the 128-px lines upsampled: thin defects span more feature cells) whose heads train on 40x40 windows
            # of the 80x80 feature map, the score started at the map's max, in bf16 on the CPU
            ModelConfig(backbone="resnet18", image_size=(320, 320), adapt_cls_features=False, **_SUP_MODEL),
            dataclasses.replace(
                _SUPERVISED,
                epochs=12,
                batch_size=8,
                synthetic_with_masks=False,
                adapt_lr=2e-4,
                seg_lr=4e-4,
                cls_lr=4e-4,
                colour_floor=0.1,
                choose_conv1=True,
                feature_window=40,
                score_map_max_init=1.0,
            ),
            "embedded CPU default: resnet18 at 320x320, JIMS head, supervised on the labelled defects, 12 epochs "
            "on 40x40 feature windows, the score started at the map's max",
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; accepted: {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_value(raw: str) -> Any:
    """A command-line value: JSON when it parses (numbers, lists, true/false), else the string itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def override(config: Any, assignments: list[str]) -> Any:
    """Apply `key=value` strings to a frozen dataclass (values parsed as JSON, else kept as strings)."""
    names = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or key not in names:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(names))}")
        value = parse_value(raw.lower() if raw.lower() in ("true", "false") else raw)
        changes[key] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(config, **changes)


def _resnet_out(size: int, stride: int) -> int:
    """Spatial size after a torchvision ResNet stage of total stride 8 (layer2) or 16 (layer3)."""
    size = (size - 1) // 2 + 1  # conv1, stride 2, pad 3, k 7
    size = (size - 1) // 2 + 1  # maxpool, stride 2, pad 1, k 3
    for _ in range(int(math.log2(stride)) - 2):
        size = (size - 1) // 2 + 1  # stride-2 3x3 conv, pad 1
    return size
