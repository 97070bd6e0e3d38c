"""In-process inference: which module computes a Prediction (`reference`, `fast-cpu`, `folded`, `triton`), loaded
from a checkpoint, and the alarm thresholds stored with it. `ssn infer`, evaluation, export and the serving adapters
all choose their module here. `triton` is the GPU engine (pipeline/engine.py: the folded graph with the Triton
kernels and CUDA graphs, fp16); on a CUDA device `folded` is served by it too, and without CUDA it falls back to
`folded` with a warning."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

INFERENCE_IMPLS = ("reference", "fast-cpu", "folded", "triton")
DEFAULT_IMPL = "folded"  # exact, a third of the arithmetic (pipeline/folded.py)


def inference_module(model, impl: str) -> torch.nn.Module:
    """The module to serve/export for `impl` (BRIEF contract: forward -> Prediction, .config, .map_sigmoid)."""
    if impl not in INFERENCE_IMPLS:
        raise ValueError(f"impl={impl!r} is unknown; accepted: {', '.join(INFERENCE_IMPLS)}")
    if impl == "folded":
        try:
            from pipeline.folded import FoldedSSN
        except ImportError as err:
            raise ValueError(f"impl='folded' needs pipeline/folded.py, not importable here ({err})") from err
        return FoldedSSN.from_model(model).eval()
    if impl == "triton":
        from pipeline.engine import GpuEngine

        module = GpuEngine.from_model(model).eval()  # the folded CPU graph, with a warning, off CUDA
        return module.warmup() if isinstance(module, GpuEngine) else module  # kernels and graphs before traffic
    model.impl = impl
    return model.eval()


def load_inference_module(checkpoint, impl: str = DEFAULT_IMPL, device: str = "cpu"):
    """(module with map_sigmoid=True on `device`, checkpoint metadata)."""
    from pipeline.checkpoint import load_checkpoint

    model, metadata = load_checkpoint(checkpoint, impl="reference", map_sigmoid=True)
    if impl == "folded" and torch.device(device).type == "cuda":
        impl = "triton"  # the same folded graph, with the kernels and CUDA graphs (served supersimplenet_py on GPU)
    return inference_module(model.to(device), impl), metadata


@dataclass(frozen=True)
class Thresholds:
    image: float | None = None  # on the score probability
    pixel: float | None = None  # on the anomaly-map probability

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Thresholds:
        try:
            raw = json.loads(metadata.get("thresholds") or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"checkpoint metadata 'thresholds' is not JSON: {err}") from err
        return cls(_optional_float(raw.get("image")), _optional_float(raw.get("pixel")))

    @classmethod
    def from_strings(cls, image: str, pixel: str) -> Thresholds:
        return cls(_optional_float(image or None), _optional_float(pixel or None))


def _optional_float(value) -> float | None:
    return None if value is None else float(value)
