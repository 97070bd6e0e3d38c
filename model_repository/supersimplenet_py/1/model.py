"""Triton python-backend model `supersimplenet_py`: encoded frames in, score / label / anomaly map out.

A thin adapter: the work is `pipeline.deploy.serving.Predictor` (DALI decode, the inference module, thresholds), the
same object the tests and bench/serve.py run in-process. Contract of the python backend: `execute` gets the
requests the dynamic batcher merged and returns exactly one response per request, in order. Each request holds
one or more frames (input IMAGE, [n, nbytes]); a request with a bad frame gets an error response naming the frame
and the problem, and the other requests of the batch are answered normally.

Parameters (config.pbtxt, filled by `ssn deploy`): checkpoint (file in this folder), impl, runtime (torch, or
onnxruntime: the exported graph `onnx`, checked against the checkpoint), image_threshold, pixel_threshold, map_stride,
max_image_pixels, decode_threads, torch_threads. The instance kind picks the device: KIND_CPU runs everything on CPU;
KIND_GPU decodes with DALI "mixed" and runs the module on that GPU.
"""

import os
import sys

if os.environ.get("SSN_PROJECT_ROOT"):  # set by `ssn serve`: this checkout's pipeline/, not another install
    sys.path.insert(0, os.environ["SSN_PROJECT_ROOT"])

from pathlib import Path

import triton_python_backend_utils as pb_utils

from pipeline import protocol
from pipeline.deploy.serving import Predictor
from pipeline.deploy.serving import served_module
from pipeline.deploy.triton_io import answer_requests
from pipeline.deploy.triton_io import error_response
from pipeline.deploy.triton_io import instance_device
from pipeline.deploy.triton_io import model_parameters
from pipeline.deploy.triton_io import outputs_response
from pipeline.deploy.triton_io import request_frames
from pipeline.deploy.triton_io import request_map_stride
from pipeline.inference import Thresholds


class TritonPythonModel:
    def initialize(self, args):
        config, params = model_parameters(args)
        device = instance_device(args)
        folder = Path(args["model_repository"]) / args["model_version"]
        module = served_module(folder, params, device)
        self.map_stride = protocol.parse_map_stride(params["map_stride"], "config parameter")
        self.predictor = Predictor(
            module,
            Thresholds.from_strings(params["image_threshold"], params["pixel_threshold"]),
            max_batch_size=config["max_batch_size"],
            device=device,
            map_stride=self.map_stride,
            max_image_pixels=int(params["max_image_pixels"]),
            decode_threads=int(params["decode_threads"]),
            torch_threads=int(params["torch_threads"]),
        )
        what = f"impl {params['impl']} as {type(module).__name__} ({params.get('runtime') or 'torch'})"
        pb_utils.Logger.log_info(f"supersimplenet_py: {what} on {device}, folder {folder}")

    def execute(self, requests):
        responses, strides = [None] * len(requests), {}
        for index, request in enumerate(requests):
            try:
                strides[index] = request_map_stride(request, self.map_stride)
            except ValueError as err:
                responses[index] = error_response(str(err))
        frames, owners = request_frames(requests, responses)  # flattened over the requests
        results = self.predictor.predict(frames, [strides[owner] for owner in owners])
        answer_requests(responses, owners, results, outputs_response)
        return responses
