"""Encoded test frames: real files written by Pillow, plus the malformed ones serving must refuse."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image


def scene(height: int = 90, width: int = 120, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: smooth gradients, texture and a bright blob (JPEG-friendly, like a real part)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 6, 3)
    rgb = np.stack([127 + 100 * np.sin(x / (7 + 3 * c) + y / 11 + phase[c]) for c in range(3)], -1)
    cy, cx = rng.uniform(0.2, 0.8, 2) * (height, width)
    rgb[(y - cy) ** 2 + (x - cx) ** 2 < (min(height, width) / 8) ** 2] = 250
    return np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, fmt, **({"quality": 92} if fmt == "JPEG" else {}) | kwargs)
    return buffer.getvalue()


def valid_frames() -> dict[str, bytes]:
    """Every kind a camera or a user may send: all must be decoded and scored."""
    return {
        "rgb_jpeg": encode(scene(90, 120, 1)),
        "gray_jpeg": encode(scene(70, 50, 2), mode="L"),
        "cmyk_jpeg": encode(scene(64, 96, 3), mode="CMYK"),
        "png": encode(scene(100, 80, 4), "PNG"),
        "rgba_png": encode(scene(64, 64, 5), "PNG", mode="RGBA"),
        "bmp": encode(scene(50, 70, 6), "BMP"),
    }


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    data = bytearray(encode(scene(16, 16, 7)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(scene(16, 16, 8), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    return bytes(data)


def truncated_jpeg() -> bytes:
    data = encode(scene(90, 120, 9))
    return data[: len(data) * 2 // 3]


def undecodable_jpeg() -> bytes:
    """Headers and end marker intact, but a 12-bit precision the 8-bit decoders refuse: passes the header checks,
    fails in the decoder (a JPEG cut in the middle with an end marker appended still decodes, gray-filled)."""
    data = bytearray(encode(scene(90, 120, 10)))
    data[data.index(b"\xff\xc0") + 4] = 12
    return bytes(data)


def random_bytes(n: int = 700, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
