"""Stand-in for the ensemble's TensorRT step where TensorRT cannot run (tests on a CPU host): a python-backend model
that runs the same exported ONNX (`<version>/model.onnx`, graph "split") with onnxruntime on CPU. Same name, inputs
and outputs as `supersimplenet_trt`; tests/test_ensemble.py copies it in as that model's `1/model.py`."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

OUTPUTS = ("score_logit", "seg_logits")


class TritonPythonModel:
    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]  # [n, 3, H, W]
        outputs = self.session.run(list(OUTPUTS), {"images": np.concatenate(batches)})
        responses, start = [], 0
        for batch in batches:
            rows = slice(start, start + len(batch))
            start += len(batch)
            tensors = [pb_utils.Tensor(name, value[rows]) for name, value in zip(OUTPUTS, outputs)]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
