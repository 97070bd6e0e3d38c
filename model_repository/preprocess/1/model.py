"""Triton python-backend model `preprocess`, step 1 of the `supersimplenet` ensemble: encoded frames -> IMAGES.

A thin adapter over `pipeline.deploy.preprocess`: the header checks of pipeline/frames.py, then the DALI pipeline
that `supersimplenet_py` runs too (KIND_GPU: `fn.decoders.image(device="mixed")`, nvJPEG / the hardware JPEG
decoder, the images stay on that GPU and leave through DLPack; KIND_CPU: libjpeg-turbo). A python step rather than
Triton's DALI backend because there one bad frame fails every request of its batch (pipeline/deploy/preprocess.py);
here a request with a bad frame gets an error naming it, and the other requests of the batch go on to the engine.

Parameters (config.pbtxt, filled by `ssn deploy`): image_size "H,W", mean and std "r,g,b" (the checkpoint's),
max_image_pixels, decode_threads.
"""

import os
import sys

if os.environ.get("SSN_PROJECT_ROOT"):  # set by `ssn serve`: this checkout's pipeline/, not another install
    sys.path.insert(0, os.environ["SSN_PROJECT_ROOT"])

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import to_dlpack

from pipeline.config import ModelConfig
from pipeline.deploy.preprocess import OUTPUT_NAME
from pipeline.deploy.preprocess import DaliPreprocessor
from pipeline.deploy.preprocess import decode_frames
from pipeline.deploy.triton_io import answer_requests
from pipeline.deploy.triton_io import instance_device
from pipeline.deploy.triton_io import model_parameters
from pipeline.deploy.triton_io import request_frames


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


class TritonPythonModel:
    def initialize(self, args):
        config, params = model_parameters(args)
        self.device = torch.device(instance_device(args))
        height, width = (int(v) for v in params["image_size"].split(","))
        # only image_size, mean and std matter to preprocessing; the backbone field is a placeholder
        model_config = ModelConfig(
            backbone="resnet18", image_size=(height, width), mean=_floats(params["mean"]), std=_floats(params["std"])
        )
        self.max_image_pixels = int(params["max_image_pixels"])
        self.decoder = DaliPreprocessor(
            model_config,
            config["max_batch_size"],
            "gpu" if self.device.type == "cuda" else "cpu",
            self.device.index,
            int(params["decode_threads"]),
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        frames, owners = request_frames(requests, responses)
        images, decoded, errors = decode_frames(self.decoder, frames, self.max_image_pixels)  # [k, 3, H, W]
        row = {i: r for r, i in enumerate(decoded)}
        results = [errors[i] if i in errors else row[i] for i in range(len(frames))]
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # DALI's copy into `images` is on that stream
        answer_requests(responses, owners, results, lambda rows: self._response(images[rows[0] : rows[-1] + 1]))
        return responses

    @staticmethod
    def _response(images: torch.Tensor):
        return pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack(OUTPUT_NAME, to_dlpack(images.contiguous()))])
