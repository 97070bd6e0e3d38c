"""The folded graph exports to ONNX (dynamo exporter, dynamic batch) and onnxruntime reproduces it: the input of
the deployment step (ONNX -> TensorRT engine), so export breakage is caught here, on CPU."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnxruntime as ort
import torch
from conftest import TINY
from conftest import make_model

from pipeline.folded import FoldedSSN

OUTPUTS = ["score_logit", "score", "anomaly_map"]


def test_onnx_export_dynamic_batch_matches_onnxruntime(tmp_path):
    model = make_model(TINY)
    model.map_sigmoid = True  # as served
    folded = FoldedSSN.from_model(model)
    path = tmp_path / "folded.onnx"
    batch = torch.export.Dim("batch", min=1, max=16)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # exporter progress lines
        warnings.simplefilter("ignore")
        torch.onnx.export(
            folded,
            (torch.randn(2, 3, *TINY.image_size),),
            str(path),
            input_names=["images"],
            output_names=OUTPUTS,
            dynamic_shapes={"images": {0: batch}},
            opset_version=18,
            dynamo=True,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for n in (1, 3):  # neither is the export example's batch
        x = torch.randn(n, 3, *TINY.image_size, generator=torch.Generator().manual_seed(n))
        got = session.run(OUTPUTS, {"images": x.numpy()})
        with torch.no_grad():
            expected = folded(x)
        for name, a, b in zip(OUTPUTS, got, expected):
            b = b.numpy()
            assert a.shape == b.shape, name
            assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max()), name
