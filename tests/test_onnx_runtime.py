"""The ONNX graph under onnxruntime as a served module: tied to its checkpoint, refused with the reason otherwise.

served_module's parameters are checked in tests/test_serving_outputs.py (serving's mutation target). The served
results themselves (onnxruntime in tritonserver vs in-process PyTorch) are tests/test_serving.py, whose
repository is `ssn deploy --target py`'s CPU default; the bench provider's outputs are tests/test_bench_cpu.py.
"""

from __future__ import annotations

import hashlib

import onnx
import pytest
from conftest import make_model
from onnx import TensorProto
from onnx import helper

from pipeline.checkpoint import save_checkpoint
from pipeline.deploy.deploy import DeployOptions
from pipeline.deploy.deploy import deploy
from pipeline.deploy.onnx_runtime import OnnxMismatchError
from pipeline.deploy.onnx_runtime import check_onnx_matches
from pipeline.deploy.onnx_runtime import load_onnx_module


def _tiny_onnx(path, **metadata) -> None:
    """A one-node graph carrying `metadata` (all check_onnx_matches reads)."""
    node = helper.make_node("Identity", ["images"], ["score"])
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("images", "score")]
    model = helper.make_model(helper.make_graph([node], "g", io[:1], io[1:]))
    helper.set_model_props(model, metadata)
    onnx.save_model(model, str(path))


def test_onnx_is_tied_to_its_checkpoint(tmp_path):
    ours, other = tmp_path / "ours.safetensors", tmp_path / "other.safetensors"
    ours.write_bytes(b"checkpoint A")
    other.write_bytes(b"checkpoint B")
    _tiny_onnx(tmp_path / "m.onnx", checkpoint_sha256=hashlib.sha256(b"checkpoint A").hexdigest(), graph="full")
    assert check_onnx_matches(tmp_path / "m.onnx", ours)["graph"] == "full"
    with pytest.raises(OnnxMismatchError, match=r"exported from another checkpoint .* than .*other\.safetensors"):
        load_onnx_module(tmp_path / "m.onnx", other)
    _tiny_onnx(tmp_path / "old.onnx", graph="full")  # written before the hash existed, or by another tool
    with pytest.raises(OnnxMismatchError, match="records no 'checkpoint_sha256'.*export it again"):
        load_onnx_module(tmp_path / "old.onnx", ours)


def test_deploy_refuses_onnxruntime_on_gpu(tmp_path):
    checkpoint = save_checkpoint(make_model(), tmp_path / "ck.safetensors", "random")
    with pytest.raises(ValueError, match="--runtime onnxruntime serves on CPU instances only"):
        deploy(checkpoint, tmp_path / "repo", DeployOptions(device="gpu", runtime="onnxruntime"))
    with pytest.raises(ValueError, match="runtime='onnx' is unknown"):
        deploy(checkpoint, tmp_path / "repo", DeployOptions(runtime="onnx"))
