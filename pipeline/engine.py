"""The GPU engine, provider `triton`: the folded graph with the Triton kernels, fp16/bf16, CUDA graphs per batch.

    images [B, 3, H, W] (any float dtype; cast to the engine's) -> backbone (channels_last, cuDNN)
      -> per layer ONE GEMM l_k @ [W_seg,k | V_k]  (cuBLAS; seg and cls products side by side: l_k is read once)
      -> ssn::seg_head   (resample + pool + bias + LeakyReLU + 1024 -> 1 dot)             -> seg map [B, 1, fh, fw]
      -> ssn::cls_head   (25 tap shifts + resample + seg-map stencil + bias + ReLU + pools) -> pooled [B, 258]
         -> Linear(258, 1)                                                                 -> score logits [B]
      -> ssn::anomaly_map (upsample + Gaussian blur + sigmoid + max)                       -> map [B, 1, H, W]

The ops (kernels/) run their Triton kernels on CUDA tensors and their plain-PyTorch forms on CPU tensors, so this
module also runs on a CPU (tests compare it with the reference model there). On CUDA, `warmup()` compiles and
autotunes the kernels and captures one CUDA graph per batch bucket (1, 2, 4, ..., 64): a batch is padded to the
next bucket, the graph replayed and the outputs sliced (and copied out of the graph's buffers); batches above the
largest bucket run in chunks of it. `GpuEngine.from_model` falls back to the folded CPU graph, with a warning,
where there is no CUDA device. Same contract as SuperSimpleNet and FoldedSSN: forward(images) -> Prediction,
`.config`, `.map_sigmoid`; inference only; a changed source model raises StaleFoldError until `refresh()`.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels import anomaly_map
from kernels import cls_head
from kernels import seg_head
from pipeline.folded import FoldedSSN
from pipeline.folded import StaleFoldError
from pipeline.folding import SEG_SLOPE
from pipeline.model import SEG_HIDDEN
from pipeline.model import Prediction
from pipeline.model import SuperSimpleNet
from pipeline.model import check_images

BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # batch sizes with a captured CUDA graph (Triton server's dynamic batcher sizes)
OPS = {"seg_head": seg_head.seg_head, "cls_head": cls_head.cls_head, "anomaly_map": anomaly_map.anomaly_map}
# the Triton launchers themselves, on any device: CPU tensors run them under TRITON_INTERPRET=1 (tests)
LAUNCHERS = {
    "seg_head": seg_head.seg_head_triton,
    "cls_head": cls_head.cls_head_triton,
    "anomaly_map": anomaly_map.anomaly_map_triton,
}


class _Graph(NamedTuple):
    graph: torch.cuda.CUDAGraph
    images: torch.Tensor  # [bucket, 3, H, W] static input (channels_last)
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # score logit, score, anomaly map (static)


class GpuEngine(nn.Module):
    """Inference-only SuperSimpleNet on the GPU; forward(images) -> Prediction, like SuperSimpleNet."""

    def __init__(self, folded: FoldedSSN, buckets: tuple[int, ...] = BUCKETS, cuda_graphs: bool = True):
        super().__init__()
        if not buckets or any(b < 1 for b in buckets):
            raise ValueError(f"buckets={buckets!r} must be batch sizes >= 1")
        self.folded = folded
        self.config = folded.config
        self.map_sigmoid = folded.map_sigmoid
        self.buckets = tuple(sorted(set(buckets)))
        self.cuda_graphs = cuda_graphs
        self.ops = OPS
        self._graphs: dict[int, _Graph] = {}
        self._pool = None
        self._derive()
        super().train(False)

    @classmethod
    def from_model(
        cls,
        model: SuperSimpleNet,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
        buckets: tuple[int, ...] = BUCKETS,
        cuda_graphs: bool = True,
    ) -> nn.Module:
        """Fold `model` (eval mode) onto `device` (default: the model's) in `dtype`. Without a CUDA device there:
        the folded CPU graph in the model's dtype (FoldedSSN), with a warning saying so."""
        device = torch.device(device) if device is not None else model.adaptor.weight.device
        if device.type != "cuda" or not torch.cuda.is_available():
            why = "CUDA is not available" if not torch.cuda.is_available() else f"the model is on {device}"
            warnings.warn(
                f"GPU engine: {why}; falling back to the folded CPU graph (pipeline/folded.py), same outputs",
                stacklevel=2,
            )
            return FoldedSSN.from_model(model, device="cpu").eval()
        return cls(FoldedSSN.from_model(model, dtype=dtype, device=device), buckets, cuda_graphs)

    def _derive(self) -> None:
        # buffers computed from the folded ones (not saved: refresh() recomputes them)
        f = self.folded
        (h2, _), (h3, _) = self.config.layer_sizes
        for k, seg_w, cls_w in ((2, f.seg_w2, f.cls_w2), (3, f.seg_w3, f.cls_w3)):
            self.register_buffer(f"w{k}", torch.cat([seg_w, cls_w], dim=1), persistent=False)  # [C_k, 1024 + 3200]
        self.register_buffer("rows2", f.seg_rows[:, :h2], persistent=False)  # [fh, h2] views: the unshifted
        self.register_buffer("rows3", f.seg_rows[:, h2 : h2 + h3], persistent=False)  # resize + pool operators

    @property
    def dtype(self) -> torch.dtype:
        return self.folded.seg_w2.dtype

    @property
    def device(self) -> torch.device:
        return self.folded.seg_w2.device

    # ---- the graph ------------------------------------------------------------------------------------------

    def heads(self, l2: torch.Tensor, l3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # l2: [B, C2, h2, w2], l3: [B, C3, h3, w3] -> (seg map logits [B, 1, fh, fw], score logits [B])
        f, ops = self.folded, self.ops
        z2 = l2.permute(0, 2, 3, 1) @ self.w2  # [B, h2, w2, 1024 + 3200]: one GEMM per layer (channels_last view)
        z3 = l3.permute(0, 2, 3, 1) @ self.w3
        seg_z = (z2[..., :SEG_HIDDEN], z3[..., :SEG_HIDDEN])
        cls_z = (z2[..., SEG_HIDDEN:], z3[..., SEG_HIDDEN:])
        operators = (self.rows2, self.rows3, f.seg_cols2, f.seg_cols3)
        seg_map = ops["seg_head"](*seg_z, *operators, f.seg_bias, f.seg_out[:, 0], SEG_SLOPE)
        pooled = ops["cls_head"](*cls_z, *operators, seg_map, f.cls_map_w, f.cls_bias)  # [B, 258] float32
        return seg_map, F.linear(pooled.to(f.fc_w.dtype), f.fc_w, f.fc_b).reshape(-1)

    def postprocess(self, seg_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # seg_map: [B, 1, fh, fw] -> (anomaly map [B, 1, H, W], its per-image max [B] float32)
        f = self.folded
        return self.ops["anomaly_map"](seg_map, f.map_rows, f.map_cols, self.map_sigmoid)

    def eager(self, images: torch.Tensor) -> Prediction:
        """images [B, 3, H, W] in the engine's dtype and device -> Prediction, no checks, no CUDA graph."""
        seg_map, score_logit = self.heads(*self.folded.backbone_features(images))
        anomaly_map, _ = self.postprocess(seg_map)
        return Prediction(score_logit, score_logit.sigmoid(), anomaly_map)

    def forward(self, images: torch.Tensor) -> Prediction:
        """images [B, 3, H, W] normalized float (any float dtype, any device) -> Prediction on the engine's device."""
        check_images(images, self.config.image_size)
        reason = self.folded.stale_reason()
        if reason is not None:
            raise StaleFoldError(f"the source model changed after folding: {reason}; call engine.refresh()")
        if not (self.cuda_graphs and self.device.type == "cuda"):
            return self.eager(images.to(device=self.device, dtype=self.dtype))
        largest = self.buckets[-1]
        if images.shape[0] > largest:  # in chunks of the largest bucket
            parts = [self._replay(images[i : i + largest]) for i in range(0, images.shape[0], largest)]
            return Prediction(*(torch.cat(field) for field in zip(*parts)))
        return self._replay(images)

    # ---- CUDA graphs ----------------------------------------------------------------------------------------

    def _replay(self, images: torch.Tensor) -> Prediction:
        n = images.shape[0]
        bucket = next(b for b in self.buckets if b >= n)
        graph = self._graphs.get(bucket) or self._capture(bucket)
        graph.images[:n].copy_(images)  # cast + layout change + host->device as needed; rows n.. are padding
        graph.graph.replay()
        return Prediction(*(t[:n].clone() for t in graph.outputs))

    def _capture(self, bucket: int) -> _Graph:
        images = torch.zeros(bucket, 3, *self.config.image_size, dtype=self.dtype, device=self.device)
        images = images.contiguous(memory_format=torch.channels_last)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(2):  # compiles and autotunes the kernels, sets up cuBLAS/cuDNN, before capture
                self.eager(images)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:  # one memory pool for every bucket: replays never overlap, and each replay's
            self._pool = torch.cuda.graph_pool_handle()  # outputs are copied out before the next one
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            outputs = tuple(self.eager(images))
        self._graphs[bucket] = _Graph(graph, images, outputs)
        return self._graphs[bucket]

    def warmup(self, buckets: tuple[int, ...] | None = None) -> GpuEngine:
        """Compile, autotune and capture a CUDA graph for each bucket before traffic (no-op on CPU)."""
        if self.cuda_graphs and self.device.type == "cuda":
            for bucket in buckets or self.buckets:
                if bucket not in self._graphs:
                    self._capture(next(b for b in self.buckets if b >= bucket))
        return self

    def refresh(self) -> GpuEngine:
        """Re-fold from the changed source model; the CUDA graphs are captured again on the next call."""
        self.folded.refresh()
        self._graphs.clear()
        self._derive()
        return self

    def train(self, mode: bool = True) -> GpuEngine:
        if mode:
            raise RuntimeError("GpuEngine is inference-only; train the SuperSimpleNet (reference) and build it again")
        return super().train(False)
