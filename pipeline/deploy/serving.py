"""Serving logic behind the python-backend models (`model_repository/*/1/model.py` are thin adapters over it).

    frames (encoded bytes) -> check headers (pipeline/frames.py) -> DALI decode + resize + normalize
      -> inference module (Prediction: score, anomaly map probabilities) -> thresholds, map stride -> per frame

Every frame gets either a `FrameOutput` or a `FrameError` naming its problem; a bad frame never fails the others.
The same `Predictor` runs in-process (tests, bench) and inside tritonserver, so what is served is what is tested.
Thresholds follow the checkpoint contract: `image` on the score probability, `pixel` on the map probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import protocol
from pipeline.frames import DEFAULT_MAX_PIXELS
from pipeline.frames import FrameError
from pipeline.inference import DEFAULT_IMPL
from pipeline.inference import Thresholds
from pipeline.inference import load_inference_module


class FrameOutput(NamedTuple):
    score: float
    label: int
    anomaly_map: np.ndarray  # float32 [h, w]; [0, 0] when map_stride is 0
    mask: np.ndarray  # uint8 [h, w]; [0, 0] without a pixel threshold or when map_stride is 0


def finish_frame(score: float, prob_map: torch.Tensor | None, thresholds: Thresholds, map_stride: int) -> FrameOutput:
    """prob_map: [1, H, W] probabilities of one frame (None when map_stride is 0) -> FrameOutput (label, optional
    pooled map and mask)."""
    label = protocol.NO_LABEL if thresholds.image is None else int(score >= thresholds.image)
    empty = np.zeros((0, 0), np.float32)
    if map_stride == 0:
        return FrameOutput(score, label, empty, empty.astype(np.uint8))
    if map_stride > 1:
        prob_map = F.max_pool2d(prob_map, map_stride, ceil_mode=True)
    prob = prob_map[0].float().cpu().numpy()
    mask = empty if thresholds.pixel is None else prob >= thresholds.pixel
    return FrameOutput(score, label, prob, mask.astype(np.uint8))


def anomaly_map_from_logits(seg_logits: torch.Tensor, config, impl: str = "fast-cpu") -> torch.Tensor:
    """Ensemble postprocess: seg logits [B, 1, fh, fw] -> map probabilities [B, 1, H, W] (kernels op b). On GPU
    tensors every formulation but `reference` runs the fused Triton kernel (kernels/anomaly_map.py, same math)."""
    from kernels import reference

    if seg_logits.is_cuda and impl != "reference":
        from kernels.anomaly_map import upsample_blur

        return upsample_blur(seg_logits.float(), config.image_size, config.sigma, sigmoid=True)[0]

    return reference.anomaly_map(seg_logits.float(), config.image_size, config.sigma, sigmoid=True, impl=impl)


def finish_logits(
    score_logits: torch.Tensor, seg_logits: torch.Tensor, strides: Sequence[int], config, thresholds, impl: str
) -> list[FrameOutput]:
    """Ensemble postprocess of a batch: score logits [N, 1], seg logits [N, 1, fh, fw], one map stride per row ->
    a FrameOutput per row. The anomaly-map op runs on the rows that want a map (stride > 0) only: the ensemble asks
    its steps for every output whatever the client requested, so `map_stride` 0 is how a client skips that work."""
    scores = score_logits[:, 0].float().sigmoid().tolist()
    wanted = [row for row, stride in enumerate(strides) if stride > 0]
    maps = {}
    if wanted:
        rows = torch.tensor(wanted, device=seg_logits.device)
        maps = dict(zip(wanted, anomaly_map_from_logits(seg_logits.index_select(0, rows), config, impl)))
    return [finish_frame(score, maps.get(row), thresholds, strides[row]) for row, score in enumerate(scores)]


def served_module(folder, params: dict[str, str], device: str = "cpu"):
    """The inference module a python-backend model serves, from its version `folder` and config parameters:
    the checkpoint as PyTorch (`runtime` torch, the default) or its exported ONNX graph under onnxruntime."""
    from pathlib import Path

    from pipeline.deploy.onnx_runtime import RUNTIMES

    folder = Path(folder)
    runtime = params.get("runtime") or "torch"
    if runtime not in RUNTIMES:
        raise ValueError(f"config parameter runtime={runtime!r} is unknown; accepted: {', '.join(RUNTIMES)}")
    checkpoint = folder / params["checkpoint"]
    if runtime == "torch":
        return load_inference_module(checkpoint, params["impl"], device)[0]
    if device != "cpu":
        raise ValueError(f"runtime onnxruntime serves on CPU instances only, this instance is on {device}")
    if not params.get("onnx"):
        raise ValueError("runtime onnxruntime needs the config parameter 'onnx' (the graph file; `ssn deploy` sets it)")
    from pipeline.deploy.onnx_runtime import load_onnx_module

    return load_onnx_module(folder / params["onnx"], checkpoint, int(params.get("torch_threads") or 0))


class Predictor:
    """Encoded frames -> per-frame FrameOutput or FrameError, in batches of at most `max_batch_size`."""

    def __init__(
        self,
        module: torch.nn.Module,
        thresholds: Thresholds,
        max_batch_size: int = 16,
        device: str = "cpu",
        map_stride: int = 1,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        decode_threads: int = 1,
        torch_threads: int = 0,
    ):
        from pipeline.deploy.preprocess import DaliPreprocessor

        if torch_threads > 0:  # per process: on a shared CPU, fewer threads than cores avoid spin-wait contention
            torch.set_num_threads(torch_threads)
        self.module = module
        self.config = module.config
        self.thresholds = thresholds
        self.max_batch_size = max_batch_size
        self.device = torch.device(device)
        self.map_stride = map_stride
        self.max_image_pixels = max_image_pixels
        dali_device = "gpu" if self.device.type == "cuda" else "cpu"
        self.decoder = DaliPreprocessor(
            self.config, max_batch_size, dali_device, self.device.index or 0, decode_threads
        )

    @classmethod
    def from_checkpoint(cls, checkpoint, impl: str = DEFAULT_IMPL, device: str = "cpu", thresholds=None, **kwargs):
        module, metadata = load_inference_module(checkpoint, impl, device)
        return cls(module, thresholds or Thresholds.from_metadata(metadata), device=device, **kwargs)

    def predict(
        self, frames: Sequence[bytes | np.ndarray], map_strides: Sequence[int] | None = None
    ) -> list[FrameOutput | FrameError]:
        strides = list(map_strides) if map_strides is not None else [self.map_stride] * len(frames)
        results: list[FrameOutput | FrameError] = []
        for start in range(0, len(frames), self.max_batch_size):
            chunk = frames[start : start + self.max_batch_size]
            results += self._predict_chunk(chunk, strides[start : start + self.max_batch_size])
        return results

    def _predict_chunk(self, frames, strides) -> list[FrameOutput | FrameError]:
        from pipeline.deploy.preprocess import decode_frames

        arrays = [np.frombuffer(f, dtype=np.uint8) if isinstance(f, bytes | bytearray) else f for f in frames]
        images, decoded, errors = decode_frames(self.decoder, arrays, self.max_image_pixels)
        results: list[FrameOutput | FrameError | None] = [errors.get(i) for i in range(len(frames))]
        if decoded:
            with torch.inference_mode():
                pred = self.module(images.to(self.device))
            scores = pred.score.float().cpu().tolist()
            for row, i in enumerate(decoded):
                results[i] = finish_frame(scores[row], pred.anomaly_map[row], self.thresholds, strides[i])
        return results
