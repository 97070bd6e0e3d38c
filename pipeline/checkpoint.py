"""Checkpoints as safetensors: tensors plus string metadata; loading executes no code.

Layout:
    tensors   adaptor.*, seg_head.*, cls_head.* (weights and BN buffers); backbone.* when embedded
    metadata  format, config (ModelConfig JSON: architecture + normalization), backbone_weights (source),
              thresholds (JSON, filled by training/evaluation; "{}" until then)

Embedding the backbone (default) makes a checkpoint self-contained for offline serving hosts; without it the
backbone is rebuilt from `backbone_weights` (or an explicit override) at load time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.backbone import Backbone
from pipeline.backbone import load_backbone
from pipeline.config import ModelConfig
from pipeline.model import SuperSimpleNet

FORMAT = "supersimplenet/1"


class CheckpointError(ValueError):
    pass


def save_checkpoint(
    model: SuperSimpleNet,
    path: str | Path,
    backbone_weights: str,
    embed_backbone: bool = True,
    thresholds: dict[str, float] | None = None,
) -> Path:
    """Write `model` to `path` (.safetensors). `backbone_weights` records where the backbone came from.
    Written to a temporary name and renamed: an interrupted write leaves the previous file or none."""
    path = Path(path)
    state = {k: v for k, v in model.state_dict().items() if embed_backbone or not k.startswith("backbone.")}
    # stored as float32 on CPU whatever the model's device/dtype, so any host can load it
    tensors = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()}
    metadata = {
        "format": FORMAT,
        "config": model.config.to_json(),
        "backbone_weights": backbone_weights,
        "backbone_embedded": json.dumps(embed_backbone),
        "thresholds": json.dumps(thresholds or {}),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp) for a temporary file next to `path`, fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in blocks (ties resume state and exported graphs to their checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file: {err}") from err
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: metadata 'format' is {metadata.get('format')!r}, want {FORMAT!r}"
        )
    return metadata


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: tensor data is corrupted or truncated: {err}") from err


def _diff_configs(found: ModelConfig, expected: ModelConfig) -> list[str]:
    a, b = json.loads(found.to_json()), json.loads(expected.to_json())
    return [f"{k}: checkpoint has {a[k]!r}, expected {b[k]!r}" for k in sorted(a) if a[k] != b[k]]


def load_checkpoint(
    path: str | Path,
    expected_config: ModelConfig | None = None,
    backbone_weights: str | None = None,
    impl: str = "reference",
    map_sigmoid: bool = False,
) -> tuple[SuperSimpleNet, dict[str, str]]:
    """Rebuild the model from `path`; refuse a config that differs from `expected_config` or any tensor that
    does not fit. `backbone_weights` overrides the recorded source when the backbone is not embedded."""
    path = Path(path)
    metadata = read_metadata(path)
    try:
        config = ModelConfig.from_json(metadata["config"])
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: metadata 'config' is invalid: {err}") from err
    if expected_config is not None and config != expected_config:
        diffs = "; ".join(_diff_configs(config, expected_config))
        raise CheckpointError(f"checkpoint {str(path)!r} config does not match: {diffs}")

    tensors = _read_tensors(path)
    embedded = any(k.startswith("backbone.") for k in tensors)
    if embedded:
        backbone = Backbone(config.backbone)
    else:
        backbone = load_backbone(config.backbone, backbone_weights or metadata.get("backbone_weights", ""))
    model = SuperSimpleNet(config, backbone, impl=impl, map_sigmoid=map_sigmoid)

    own = model.state_dict()
    wanted = {k for k in own if embedded or not k.startswith("backbone.")}
    missing = sorted(wanted - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit the {config.backbone} model: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    for key in sorted(tensors):
        if tensors[key].shape != own[key].shape or tensors[key].dtype != own[key].dtype:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: tensor {key!r} is {tuple(tensors[key].shape)} {tensors[key].dtype}, "
                f"the model built from its config needs {tuple(own[key].shape)} {own[key].dtype}"
            )
    model.load_state_dict(tensors, strict=False)
    return model.eval(), metadata
