"""Triton python-backend model `postprocess`, step 3 of the `supersimplenet` ensemble.

Gets the TensorRT engine's outputs (score_logit [n, 1], seg_logits [n, 1, fh, fw]); with
FORCE_CPU_ONLY_INPUT_TENSORS=no they stay on the GPU and arrive here through DLPack without a copy. Runs the
anomaly-map op (upsample + Gaussian blur + sigmoid; `map_impl` picks its formulation in kernels/), the sigmoid of
the score, the thresholds and the map stride: `pipeline.deploy.serving.finish_logits`, built on the `finish_frame` the
portable `supersimplenet_py` model runs. One response per request, in order. The ensemble requests all four outputs
of this step whatever the client asked for, so a request parameter `map_stride` 0 is what skips the map op here.
"""

import os
import sys

if os.environ.get("SSN_PROJECT_ROOT"):  # set by `ssn serve`: this checkout's pipeline/, not another install
    sys.path.insert(0, os.environ["SSN_PROJECT_ROOT"])

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack

from pipeline import protocol
from pipeline.config import ModelConfig
from pipeline.deploy.serving import finish_logits
from pipeline.deploy.triton_io import error_response
from pipeline.deploy.triton_io import instance_device
from pipeline.deploy.triton_io import model_parameters
from pipeline.deploy.triton_io import outputs_response
from pipeline.deploy.triton_io import request_map_stride
from pipeline.inference import Thresholds


def _tensor(request, name: str, device: str) -> torch.Tensor:
    return from_dlpack(pb_utils.get_input_tensor_by_name(request, name).to_dlpack()).to(device)


class TritonPythonModel:
    def initialize(self, args):
        _, params = model_parameters(args)
        self.device = instance_device(args)
        height, width = (int(v) for v in params["image_size"].split(","))
        # only image_size and sigma matter to the anomaly-map op; the backbone field is a placeholder
        self.config = ModelConfig(backbone="resnet18", image_size=(height, width), sigma=float(params["sigma"]))
        self.map_impl = params["map_impl"]
        self.thresholds = Thresholds.from_strings(params["image_threshold"], params["pixel_threshold"])
        self.map_stride = protocol.parse_map_stride(params["map_stride"], "config parameter")

    def execute(self, requests):
        responses, strides, logits, segs = [None] * len(requests), [], [], []
        for index, request in enumerate(requests):
            try:
                strides.append(request_map_stride(request, self.map_stride))
            except ValueError as err:
                responses[index] = error_response(str(err))
                continue
            logits.append(_tensor(request, "score_logit", self.device))  # [n, 1]
            segs.append(_tensor(request, "seg_logits", self.device))  # [n, 1, fh, fw]
        if not logits:
            return responses
        # every request of the batch in one call of the anomaly-map op, on the rows that want a map
        rows = [stride for stride, logit in zip(strides, logits) for _ in range(len(logit))]
        outputs = finish_logits(torch.cat(logits), torch.cat(segs), rows, self.config, self.thresholds, self.map_impl)
        start = 0
        for index in range(len(requests)):
            if responses[index] is None:
                n = len(logits.pop(0))
                responses[index] = outputs_response(outputs[start : start + n])
                start += n
        return responses
