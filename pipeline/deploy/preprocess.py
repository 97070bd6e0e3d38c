"""DALI preprocessing: encoded image bytes -> normalized float CHW at the model's size (spec §2.4).

One pipeline definition, run in-process by `DaliPreprocessor`: `device="cpu"` with `device_id=None` on hosts
without a GPU (libjpeg-turbo decode), `"gpu"` (`fn.decoders.image(device="mixed")`, nvJPEG / the hardware JPEG
decoder) on a GPU. Both served models run it inside the python backend: `supersimplenet_py` and the ensemble's
`preprocess` step. Not the DALI backend: it answers every request of a batch with the error of one bad frame and
resets its pipeline (dali_backend 01783f8, `src/dali_model_instance.cc` `ExecuteBatched`,
`src/dali_executor/dali_executor.cc` `DaliExecutor::Run`), while here a bad frame fails alone (`decode_frames`).

Steps: decode to RGB (grayscale, CMYK and alpha are converted), bilinear resize without antialiasing to
`config.image_size` rounded to 8 bits (as `pipeline/images.py` and the official loader), normalize with the
config's mean/std, CHW float. Against `pipeline/images.py` (Pillow decode, torch resize) the result differs by at
most a few 8-bit levels: JPEG IDCT/upsampling of the two decoders, and one level where the resize lands on an
exact .5 tie (tests/test_preprocess.py states the tolerances).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.config import ModelConfig
from pipeline.frames import FrameError
from pipeline.frames import check_frame

INPUT_NAME = "IMAGE"  # the pipeline's external source: encoded bytes, UINT8 [-1]
OUTPUT_NAME = "IMAGES"  # FP32 [3, H, W]: the preprocess step's output (model_repository/preprocess)
DEVICES = ("cpu", "gpu")


def _pipeline_def():
    """The pipeline function (DALI imported on first use: the camera side never needs it)."""
    from nvidia.dali import fn
    from nvidia.dali import pipeline_def
    from nvidia.dali import types

    @pipeline_def
    def preprocess(config: ModelConfig, device: str, hw_decoder_load: float):
        encoded = fn.external_source(device="cpu", name=INPUT_NAME, dtype=types.UINT8, ndim=1)
        if device == "gpu":
            images = fn.decoders.image(encoded, device="mixed", output_type=types.RGB, hw_decoder_load=hw_decoder_load)
        else:
            images = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
        height, width = config.image_size
        # uint8 in, uint8 out: the resized image is rounded to 8 bits like the reference loader
        images = fn.resize(images, resize_x=width, resize_y=height, interp_type=types.INTERP_LINEAR, antialias=False)
        return fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[255.0 * m for m in config.mean],
            std=[255.0 * s for s in config.std],
        )

    return preprocess


def build_pipeline(
    config: ModelConfig,
    batch_size: int,
    device: str = "cpu",
    device_id: int | None = None,
    num_threads: int = 1,
    hw_decoder_load: float = 0.65,
):
    """An unbuilt DALI pipeline that runs one batch per `run()`, synchronously (in-process use)."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is unknown; accepted: {', '.join(DEVICES)}")
    if device == "cpu":
        device_id = None
    return _pipeline_def()(
        config,
        device,
        hw_decoder_load,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        exec_async=False,
        exec_pipelined=False,
        prefetch_queue_depth=1,
    )


class DaliPreprocessor:
    """Runs the pipeline in-process: `(frames) -> (images [n, 3, H, W] torch float, {index: error})`.

    A frame DALI cannot decode invalidates the whole DALI pipeline object, so after a failed batch the pipeline is
    rebuilt and the frames are decoded one by one: only the bad frames fail.
    """

    def __init__(
        self, config: ModelConfig, max_batch_size: int, device: str = "cpu", device_id: int | None = 0, threads=1
    ):
        self.config = config
        self.max_batch_size = max_batch_size
        self.device = device
        self.device_id = device_id if device == "gpu" else None
        self.threads = threads
        self._pipe = self._build()

    def _build(self):
        pipe = build_pipeline(self.config, self.max_batch_size, self.device, self.device_id, self.threads)
        pipe.build()
        return pipe

    def _run(self, frames: Sequence[np.ndarray]):
        import torch

        self._pipe.feed_input(INPUT_NAME, list(frames))
        (out,) = self._pipe.run()
        batch = out.as_tensor()  # every image has the same [3, H, W] shape
        if self.device == "gpu":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            images = torch.empty(batch.shape(), dtype=torch.float32, device=f"cuda:{self.device_id}")
            feed_ndarray(batch, images, cuda_stream=torch.cuda.current_stream(images.device))
            return images
        return torch.from_numpy(np.array(batch))

    def __call__(self, frames: Sequence[np.ndarray]) -> tuple[object, dict[int, str]]:
        import torch

        if len(frames) > self.max_batch_size:
            raise ValueError(f"{len(frames)} frames > max_batch_size {self.max_batch_size}")
        if not frames:
            return torch.empty(0, 3, *self.config.image_size), {}
        try:
            return self._run(frames), {}
        except RuntimeError:
            self._pipe = self._build()
        images, errors = [], {}
        for i, frame in enumerate(frames):
            try:
                images.append(self._run([frame]))
            except RuntimeError as err:
                errors[i] = f"could not decode the image ({frame.size} bytes; DALI: {_reason(err)})"
                self._pipe = self._build()
        stacked = torch.cat(images) if images else torch.empty(0, 3, *self.config.image_size)
        return stacked, errors


def _reason(err: Exception) -> str:
    """DALI's reason from its message (after "encountered:", without the pipeline-invalid note)."""
    text = str(err)
    tail = text.split("encountered:", 1)[-1]
    lines = [s.strip(" :") for s in tail.splitlines() if s.strip() and "no longer valid" not in s]
    return "; ".join(lines) if lines else type(err).__name__


def decode_frames(
    decoder: DaliPreprocessor, frames: Sequence[np.ndarray], max_pixels: int
) -> tuple[object, list[int], dict[int, FrameError]]:
    """Header checks (pipeline/frames.py), then DALI, each frame on its own account:
    (images [k, 3, H, W] of the k frames that decoded, their indices in `frames`, {index: FrameError} of the rest).
    """
    errors: dict[int, FrameError] = {}
    checked = []
    for i, frame in enumerate(frames):
        try:
            check_frame(memoryview(np.ascontiguousarray(frame)), max_pixels)
        except FrameError as err:
            errors[i] = err
            continue
        checked.append(i)
    images, failed = decoder([frames[i] for i in checked])
    for k, message in failed.items():
        errors[checked[k]] = FrameError(message)
    return images, [i for k, i in enumerate(checked) if k not in failed], errors
