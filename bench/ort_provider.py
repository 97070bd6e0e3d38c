"""Provider `onnxruntime`: the folded graph exported to ONNX (full and split, fp32, dynamic batch) and run by
onnxruntime's CPU execution provider (pipeline/deploy/onnx_runtime.py: the sessions the served model uses).

Built once per bench run; the export and session-build times are reported. fp32 only: onnxruntime's CPU execution
provider has no bf16 arithmetic (a bf16 MatMul has no CPU kernel and ONNX Conv takes no bf16 before opset 22;
onnxruntime issues #20630 and #19937), so `--dtype bf16` skips it with that reason instead of timing fp32.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from pipeline.deploy.export import export_onnx
from pipeline.deploy.onnx_runtime import OnnxModule
from pipeline.folded import FoldedSSN
from pipeline.model import Prediction

NAME = "onnxruntime"


def unsupported(dtype: str, device: str) -> str | None:
    """None when the provider runs at `dtype` on `device`; else the reason it is skipped."""
    if device != "cpu":
        return "runs on CPU only here (onnxruntime's CPU execution provider; the GPU path is TensorRT)"
    if dtype != "fp32":
        return (
            f"onnxruntime's CPU execution provider has no {dtype} arithmetic (no bf16/fp16 MatMul or Conv kernels "
            "on x86; a bf16 graph does not load: onnxruntime issues #20630, #19937); it is timed in fp32 runs only"
        )
    return None


class OrtProvider:
    """Both graphs of the folded module as onnxruntime sessions; calling it runs the full graph."""

    def __init__(self, folded: FoldedSSN, max_batch: int, threads: int = 0):
        self.config = folded.config
        self._dir = tempfile.TemporaryDirectory(prefix="ssn-ort-")  # removed with this object
        self.setup_s: dict[str, float] = {}
        self.graphs: dict[str, OnnxModule] = {}
        for graph in ("full", "split"):
            start = time.perf_counter()
            path = export_onnx(folded, Path(self._dir.name) / f"{graph}.onnx", graph, "fp32", max(max_batch, 2))
            self.setup_s[f"export {graph}"] = time.perf_counter() - start
            start = time.perf_counter()
            self.graphs[graph] = OnnxModule(path, threads)
            self.setup_s[f"session {graph}"] = time.perf_counter() - start
        self.threads = self.graphs["full"].session.get_session_options().intra_op_num_threads

    def __call__(self, images: torch.Tensor) -> Prediction:
        return self.graphs["full"](images)

    def seg_and_score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.graphs["split"].seg_and_score(images)

    def describe(self) -> str:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.setup_s.items())
        return f"{NAME}: {self.threads} intra-op threads, all graph optimizations; built once: {times}"


def stage_calls(provider: OrtProvider, x: torch.Tensor) -> dict[str, callable]:
    return {"seg+score": lambda: provider.seg_and_score(x), "e2e": lambda: provider(x)}
