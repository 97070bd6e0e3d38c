"""The exported ONNX graph run by onnxruntime's CPU execution provider, as an inference module.

    OnnxModule(path)(images [B, 3, H, W] float32) -> Prediction (full graph: score logit, score, map probabilities)
    OnnxModule(path).seg_and_score(images) -> (seg logits [B, 1, fh, fw], score logits [B])   (split graph)

One session, built once: intra-op threads = `threads` (0: the cores torch uses), one inter-op thread, sequential
execution, every graph optimization on. The served `supersimplenet_py` runs it (`ssn deploy --target py --runtime
onnxruntime`), and so does `bench/throughput.py --providers onnxruntime`: what is timed is what is served.

An ONNX file is tied to the checkpoint it was exported from by the checkpoint's sha256 in its metadata
(`checkpoint_sha256`, written by `ssn export` and `ssn deploy`); `check_onnx_matches` refuses any other pairing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.model import Prediction

RUNTIMES = ("torch", "onnxruntime")
CHECKPOINT_HASH = "checkpoint_sha256"  # ONNX metadata key
INSTALL_HINT = "pip install onnxruntime (a dependency of this package), or serve with --runtime torch"


class OnnxMismatchError(ValueError):
    """The ONNX file is not the export of the checkpoint it is served with."""


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"onnxruntime does not import in this interpreter ({err}); {INSTALL_HINT}") from err
    return onnxruntime


def session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session for `path`: `threads` intra-op threads (0: torch.get_num_threads())."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx_matches(onnx_path: str | Path, checkpoint: str | Path) -> dict[str, str]:
    """The ONNX metadata when `onnx_path` was exported from `checkpoint` (same sha256); else OnnxMismatchError."""
    from pipeline.checkpoint import file_sha256  # safetensors: only where a checkpoint is checked
    from pipeline.deploy.export import onnx_metadata

    meta = onnx_metadata(onnx_path)
    found = meta.get(CHECKPOINT_HASH)
    if found is None:
        raise OnnxMismatchError(
            f"{onnx_path} records no '{CHECKPOINT_HASH}': it was not exported by this version of `ssn export`/"
            f"`ssn deploy`, so nothing ties it to {checkpoint}; export it again from that checkpoint"
        )
    actual = file_sha256(checkpoint)
    if found != actual:
        raise OnnxMismatchError(
            f"{onnx_path} was exported from another checkpoint (sha256 {found[:12]}...) than {checkpoint} "
            f"(sha256 {actual[:12]}...); run `ssn deploy` (or `ssn export`) again from the checkpoint you serve"
        )
    return meta


class OnnxModule:
    """An exported graph (pipeline/deploy/export.py) as an inference module: `.config`, `.map_sigmoid`, forward."""

    def __init__(self, path: str | Path, threads: int = 0):
        from pipeline.config import ModelConfig
        from pipeline.deploy.export import INPUT
        from pipeline.deploy.export import OUTPUTS
        from pipeline.deploy.export import onnx_metadata

        meta = onnx_metadata(path)
        if "graph" not in meta or "config" not in meta:
            raise ValueError(f"{path} was not written by `ssn export` (no 'graph'/'config' metadata)")
        self.path = Path(path)
        self.graph = meta["graph"]
        self.config = ModelConfig.from_json(meta["config"])
        self.map_sigmoid = True  # exported graphs give map probabilities
        self.max_batch = int(meta.get("max_batch", 0)) or None
        self.input = INPUT
        self.outputs = list(OUTPUTS[self.graph])
        self.session = session(path, threads)

    def eval(self) -> OnnxModule:
        return self

    def run(self, images: torch.Tensor) -> list[torch.Tensor]:
        # images: [B, 3, H, W] float32 on the CPU -> the graph's outputs as CPU tensors
        if self.max_batch is not None and images.shape[0] > self.max_batch:
            raise ValueError(f"batch {images.shape[0]} exceeds the exported max_batch {self.max_batch} of {self.path}")
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        return [torch.from_numpy(a) for a in self.session.run(self.outputs, {self.input: array})]

    def seg_and_score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph != "split":
            raise ValueError(f"{self.path} is the {self.graph!r} graph; seg_and_score needs the 'split' graph")
        score_logit, seg_logits = self.run(images)
        return seg_logits, score_logit[:, 0]

    def __call__(self, images: torch.Tensor) -> Prediction:
        if self.graph != "full":
            raise ValueError(f"{self.path} is the {self.graph!r} graph; a Prediction needs the 'full' graph")
        score_logit, score, anomaly_map = self.run(images)
        return Prediction(score_logit, score, anomaly_map)


def load_onnx_module(onnx_path: str | Path, checkpoint: str | Path, threads: int = 0) -> OnnxModule:
    """The served form: the full graph, checked to be the export of `checkpoint`."""
    check_onnx_matches(onnx_path, checkpoint)
    module = OnnxModule(onnx_path, threads)
    if module.graph != "full":
        raise ValueError(f"{onnx_path} is the {module.graph!r} graph; the python model serves the 'full' graph")
    return module
