"""DALI preprocessing: encoded image bytes -> normalized float CHW at the model's size (spec §2.4).

One pipeline definition serves two uses:
- in-process, by the python serving model (`DaliPreprocessor`): `device="cpu"` with `device_id=None` on hosts
  without a GPU (libjpeg-turbo decode), `"gpu"` (`fn.decoders.image(device="mixed")`, nvJPEG / the hardware JPEG
  decoder) on a GPU;
- serialized as `model.dali` for Triton's DALI backend (`serialize_pipeline`): serialized with `device_id` unset,
  so it can be written on a host without a GPU; the backend sets the device of each model instance.

Steps: decode to RGB (grayscale, CMYK and alpha are converted), bilinear resize without antialiasing to
`config.image_size` rounded to 8 bits (as `pipeline/images.py` and the official loader), normalize with the
config's mean/std, CHW float. Against `pipeline/images.py` (Pillow decode, torch resize) the result differs by at
most a few 8-bit levels: JPEG IDCT/upsampling of the two decoders, and one level where the resize lands on an
exact .5 tie (tests/test_preprocess.py states the tolerances).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.config import ModelConfig

INPUT_NAME = "IMAGE"  # encoded bytes, UINT8 [-1]; must equal the DALI model's input name in config.pbtxt
OUTPUT_NAME = "IMAGES"  # FP32 [3, H, W]
DEVICES = ("cpu", "gpu")
SPEC_FILE = "pipeline.json"  # in the DALI model folder: what model.dali was serialized from


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
    synchronous: bool = True,
):
    """An unbuilt DALI pipeline. `synchronous` runs one batch per `run()` (in-process use)."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is unknown; accepted: {', '.join(DEVICES)}")
    if device == "cpu":
        device_id = None
    extra = {"exec_async": False, "exec_pipelined": False, "prefetch_queue_depth": 1} if synchronous else {}
    return _pipeline_def()(
        config,
        device,
        hw_decoder_load,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        **extra,
    )


def serialize_pipeline(config: ModelConfig, path: str | Path, max_batch_size: int, device: str = "gpu") -> Path:
    """Write `model.dali` for Triton's DALI backend (GPU decode by default), and `pipeline.json` beside its
    version folder so `python -m pipeline.deploy.preprocess MODEL_DIR` can redo it with another DALI version."""
    import nvidia.dali

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(config, max_batch_size, device=device, device_id=None, num_threads=4, synchronous=False)
    pipe.serialize(filename=str(path))
    recipe = {"config": json.loads(config.to_json()), "max_batch_size": max_batch_size, "device": device}
    recipe["dali_version"] = nvidia.dali.__version__
    if path.parent.name.isdigit():  # <model>/<version>/model.dali
        path.parent.parent.joinpath(SPEC_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Re-serialize MODEL_DIR/1/model.dali from MODEL_DIR/pipeline.json with the DALI installed here (use the
    DALI version of the serving container's dali backend; no torch needed)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m pipeline.deploy.preprocess MODEL_DIR   (e.g. repo/preprocess)", file=sys.stderr)
        return 2
    model_dir = Path(argv[0])
    recipe = json.loads((model_dir / SPEC_FILE).read_text())
    config = ModelConfig.from_json(json.dumps(recipe["config"]))
    path = serialize_pipeline(config, model_dir / "1" / "model.dali", recipe["max_batch_size"], recipe["device"])
    print(f"wrote {path}")
    return 0


class DecodeError(ValueError):
    pass


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


if __name__ == "__main__":
    sys.exit(main())
