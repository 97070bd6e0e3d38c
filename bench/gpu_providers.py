"""Providers `triton` (pipeline/engine.py: the folded graph with the Triton kernels, a CUDA graph per batch; off CUDA
the folded CPU graph, with a warning) and `torch-compile` (the folded graph through torch.compile, max-autotune) of
bench/throughput.py."""

from __future__ import annotations

import torch

from pipeline.engine import GpuEngine
from pipeline.folded import FoldedSSN
from pipeline.model import SuperSimpleNet

GPU_PROVIDERS = ("triton", "torch-compile")


def engine_stage_calls(engine: GpuEngine, x: torch.Tensor) -> dict[str, callable]:
    with torch.inference_mode():
        l2, l3 = engine.folded.backbone_features(x)
        seg_map, _ = engine.heads(l2, l3)
    return {
        "backbone": lambda: engine.folded.backbone_features(x),
        "feat+heads": lambda: engine.heads(l2, l3),
        "postprocess": lambda: engine.postprocess(seg_map),
        "e2e": lambda: engine(x),
    }


def gpu_provider_module(model: SuperSimpleNet, provider: str) -> torch.nn.Module:
    """`triton`: the GPU engine (the folded graph off CUDA); `torch-compile`: the folded graph, max-autotune."""
    if provider == "triton":
        return GpuEngine.from_model(model, dtype=model.adaptor.weight.dtype)
    return torch.compile(FoldedSSN.from_model(model), mode="max-autotune", dynamic=False)  # one graph per batch
