"""Encoded frames checked before any decoder sees them (no torch, no decoding).

A frame is the bytes of one image file. `check_frame` names what is wrong with a frame that would crash, hang or
exhaust a decoder: empty or unrecognised bytes, a JPEG/PNG cut short, an unsupported format, or a header that
claims more pixels than `max_pixels` (a decompression bomb is refused from its header, before decoding).
JPEG and PNG headers are parsed here directly; other formats the decoders accept (BMP, TIFF, WebP, PNM, JPEG 2000)
are identified by Pillow, which reads only their header. Trailing zero bytes (client-side padding of a batch)
are ignored: JPEG and PNG are checked without them; the other formats are given to Pillow whole, since their files
may end with zero bytes of their own (a WebP file often does).
"""

from __future__ import annotations

import io
import struct
from typing import NamedTuple

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; industrial cameras reach ~65 MP: raise it with --max-image-pixels
OTHER_FORMATS = ("BMP", "TIFF", "WEBP", "PPM", "JPEG2000")  # decoded by DALI besides JPEG and PNG
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FrameError(ValueError):
    pass


class FrameInfo(NamedTuple):
    format: str
    width: int
    height: int
    channels: int  # 0 when the header does not say


def check_frame(data: bytes | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> FrameInfo:
    """FrameInfo of an acceptable frame; FrameError naming the problem otherwise."""
    data = bytes(data)
    if not data:
        raise FrameError("frame is empty (0 bytes)")
    body = data.rstrip(b"\x00")
    if not body:
        raise FrameError(f"frame is {len(data)} zero bytes, not an image")
    if body.startswith(b"\xff\xd8"):
        info = _jpeg_info(body)
    elif body.startswith(_PNG_MAGIC):
        info = _png_info(body)
    else:  # Pillow reads only the header; these formats may end with zero bytes of their own (WebP's RIFF padding)
        info = _other_info(data)
    if info.width < 1 or info.height < 1:
        raise FrameError(f"{info.format} header gives an empty image ({info.width}x{info.height})")
    pixels = info.width * info.height
    if pixels > max_pixels:
        raise FrameError(
            f"{info.format} header claims {info.width}x{info.height} = {pixels / 1e6:.1f} MP, over the limit of "
            f"{max_pixels / 1e6:.1f} MP (max_image_pixels); refused before decoding (decompression bomb guard)"
        )
    return info


def _jpeg_info(data: bytes) -> FrameInfo:
    if not data.endswith(b"\xff\xd9"):
        raise FrameError(f"truncated JPEG: no end-of-image marker (FFD9) after {len(data)} bytes")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise FrameError(f"corrupt JPEG: expected a marker at byte {pos}, found 0x{data[pos]:02X}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 10 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return FrameInfo("JPEG", width, height, data[pos + 9])
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise FrameError("corrupt JPEG: no frame header (SOF) before the image data")


def _png_info(data: bytes) -> FrameInfo:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise FrameError(f"corrupt PNG: no IHDR header chunk ({len(data)} bytes)")
    if b"IEND" not in data[-12:]:
        raise FrameError(f"truncated PNG: no IEND chunk at the end of {len(data)} bytes")
    width, height = struct.unpack(">II", data[16:24])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(data[25], 0)
    return FrameInfo("PNG", width, height, channels)


def _other_info(data: bytes) -> FrameInfo:
    from PIL import Image
    from PIL import UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
            fmt, (width, height), bands = img.format, img.size, len(img.getbands())
    except Image.DecompressionBombError as err:
        raise FrameError(f"image header claims too many pixels; refused before decoding ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        head = data[:8].hex(" ")
        raise FrameError(
            f"frame ({len(data)} bytes, starting {head}) is not a supported image: send JPEG, PNG, "
            f"{', '.join(OTHER_FORMATS)}"
        ) from None
    if fmt not in OTHER_FORMATS:
        raise FrameError(f"image format {fmt} is not supported: send JPEG, PNG, {', '.join(OTHER_FORMATS)}")
    return FrameInfo(fmt, width, height, bands)
