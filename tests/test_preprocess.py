"""DALI preprocessing vs pipeline/images.py, frame header checks, bad-frame isolation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import TINY
from frame_samples import encode
from frame_samples import jpeg_claiming
from frame_samples import png_claiming
from frame_samples import random_bytes
from frame_samples import scene
from frame_samples import truncated_jpeg
from frame_samples import undecodable_jpeg
from frame_samples import valid_frames
from PIL import Image

from pipeline.deploy.preprocess import DaliPreprocessor
from pipeline.frames import FrameError
from pipeline.frames import check_frame
from pipeline.images import to_model_input

# one 8-bit level in normalized units is 1 / (255 * std). JPEG decoders (libjpeg-turbo in DALI, Pillow's libjpeg)
# may differ by a couple of levels on some pixels; the 8-bit rounding after the resize differs by one level on
# exact .5 ties (frequent when upscaling by 1.5: up to ~6% of the values); without resize, lossless formats match
# to float rounding.
LEVEL = 1 / (255 * min(TINY.std))
MAX_LEVELS = {"jpeg": 3, "lossless": 1}
MEAN_LEVELS = 0.1


def _reference(data: bytes) -> torch.Tensor:
    return to_model_input(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy(), TINY)[0]


@pytest.fixture(scope="module")
def decoder():
    return DaliPreprocessor(TINY, max_batch_size=8)


def test_dali_cpu_matches_images_py(decoder):
    frames = valid_frames()
    images, errors = decoder([np.frombuffer(f, np.uint8) for f in frames.values()])
    assert errors == {} and images.shape == (len(frames), 3, *TINY.image_size) and images.dtype == torch.float32
    for (name, data), got in zip(frames.items(), images):
        diff = (got - _reference(data)).abs()
        assert diff.max() <= MAX_LEVELS["jpeg" if "jpeg" in name else "lossless"] * LEVEL + 1e-6, name
        assert diff.mean() <= MEAN_LEVELS * LEVEL, name


def test_image_at_model_size_is_not_resampled(decoder):
    data = encode(scene(*TINY.image_size, seed=11), "PNG")
    images, _ = decoder([np.frombuffer(data, np.uint8)])
    assert (images[0] - _reference(data)).abs().max() <= 1e-5


def test_bad_frame_fails_alone_and_pipeline_recovers(decoder):
    good = [np.frombuffer(f, np.uint8) for f in list(valid_frames().values())[:3]]
    bad = np.frombuffer(undecodable_jpeg(), np.uint8)
    check_frame(bad.tobytes())  # passes the header checks: only the decoder can tell
    images, errors = decoder([good[0], bad, good[1], good[2]])
    assert list(errors) == [1] and "could not decode the image" in errors[1]
    assert images.shape[0] == 3
    alone, _ = decoder(good)
    assert torch.equal(images, alone)


def test_check_frame_accepts_and_describes():
    info = check_frame(encode(scene(90, 120), "JPEG"))
    assert info == ("JPEG", 120, 90, 3)
    assert check_frame(encode(scene(30, 40), "PNG", mode="L")) == ("PNG", 40, 30, 1)
    assert check_frame(encode(scene(30, 40), "BMP")).format == "BMP"
    assert check_frame(encode(scene(30, 40), "JPEG", mode="CMYK")).channels == 4
    assert check_frame(encode(scene(30, 40)) + b"\x00" * 37).width == 40  # zero padding of a client batch


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "frame is empty"),
        (b"\x00" * 64, "64 zero bytes"),
        (random_bytes(), "is not a supported image: send JPEG, PNG"),
        (truncated_jpeg(), "truncated JPEG: no end-of-image marker"),
        (encode(scene(40, 40), "PNG")[:-30], "truncated PNG"),
        (jpeg_claiming(20000, 20000), r"JPEG header claims 20000x20000 = 400.0 MP, over the limit of 64.0 MP"),
        (png_claiming(20000, 20000), r"PNG header claims 20000x20000 = 400.0 MP.*decompression bomb"),
        (encode(scene(20, 20), "GIF"), "image format GIF is not supported"),
        (b"\xff\xd8\xff\xda\x00\x02\xff\xd9", "no frame header"),
    ],
    ids=["empty", "zeros", "random", "trunc-jpeg", "trunc-png", "bomb-jpeg", "bomb-png", "gif", "no-sof"],
)
def test_check_frame_refuses(data, message):
    with pytest.raises(FrameError, match=message):
        check_frame(data)


def test_pixel_limit_is_configurable():
    with pytest.raises(FrameError, match="over the limit of 0.0 MP"):
        check_frame(encode(scene(100, 100)), max_pixels=5000)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="DALI 'mixed' decoding needs a CUDA device")
def test_dali_mixed_matches_cpu(decoder):
    """GPU decode (nvJPEG / hardware decoder) vs libjpeg-turbo: same tolerance as against Pillow."""
    frames = [np.frombuffer(f, np.uint8) for f in valid_frames().values()]
    gpu, errors = DaliPreprocessor(TINY, max_batch_size=8, device="gpu", device_id=0)(frames)
    cpu, _ = decoder(frames)
    assert errors == {} and gpu.is_cuda
    assert (gpu.cpu() - cpu).abs().max() <= MAX_LEVELS["jpeg"] * LEVEL + 1e-6
