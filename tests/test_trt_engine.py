"""TensorRT engine build from the exported ONNX (GPU host with `tensorrt` only; skipped elsewhere with the reason).

Run on a GPU host inside the NGC TensorRT container: `python -m pytest -q tests/test_trt_engine.py`.
"""

from __future__ import annotations

import json

import pytest
import torch

trt = pytest.importorskip(
    "tensorrt", reason="`tensorrt` is not installed (CPU-only host); run in the NGC TensorRT container on a GPU"
)
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT engines need a CUDA device"),
]

from conftest import TINY  # noqa: E402
from conftest import make_model  # noqa: E402

from pipeline.deploy import trt_engine  # noqa: E402
from pipeline.deploy.export import ExportGraph  # noqa: E402
from pipeline.deploy.export import export_onnx  # noqa: E402


def _run_engine(plan: bytes, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Execute a plan on CUDA tensors with the name-based API of TensorRT 10 and 11."""
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    x = x.cuda().contiguous()
    context.set_input_shape("images", tuple(x.shape))
    context.set_tensor_address("images", x.data_ptr())
    outputs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return outputs


@pytest.mark.parametrize(("dtype", "tol"), [("fp32", 1e-3), ("fp16", 2e-2)])
def test_engine_matches_pytorch_and_records_metadata(tmp_path, dtype, tol):
    model = make_model(map_sigmoid=True)
    onnx_path = export_onnx(model, tmp_path / "model.onnx", graph="split", dtype=dtype, max_batch=8)
    meta = trt_engine.build_engine(onnx_path, max_batch=8, opt_batch=4, workspace_gib=1)
    plan = tmp_path / "model.plan"
    assert json.loads((tmp_path / "model.plan.json").read_text()) == meta
    assert meta["tensorrt"] == trt.__version__ and meta["profile"]["max"] == [8, 3, *TINY.image_size]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert trt_engine.engine_problems(meta, trt_engine.host_description()) == ([], [])
    for batch in (1, 8):
        x = torch.randn(batch, 3, *TINY.image_size)
        got = _run_engine(plan.read_bytes(), x)
        with torch.inference_mode():
            score_logit, seg_logits = ExportGraph(model, "split")(x)
        torch.testing.assert_close(got["seg_logits"].cpu(), seg_logits, atol=tol, rtol=tol)
        torch.testing.assert_close(got["score_logit"].cpu(), score_logit, atol=tol, rtol=tol)
    # a second build reuses the timing cache
    trt_engine.build_engine(onnx_path, tmp_path / "again.plan", max_batch=8, timing_cache=tmp_path / "timing.cache")
