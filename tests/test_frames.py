"""Frame headers byte by byte (pipeline/frames.py): JPEG segments built here by hand (fill bytes, markers without a
length, long segments, dimensions over 32767, a frame header cut short, junk between segments), PNG colour types
and chunk checks, the other formats through Pillow, and the exact error texts a camera operator reads."""

from __future__ import annotations

import io
import struct

import pytest
from frame_samples import encode
from frame_samples import png_claiming
from frame_samples import random_bytes
from frame_samples import scene
from PIL import Image

from pipeline.frames import FrameError
from pipeline.frames import FrameInfo
from pipeline.frames import check_frame

SOI, EOI = b"\xff\xd8", b"\xff\xd9"
FORMATS = "send JPEG, PNG, BMP, TIFF, WEBP, PPM, JPEG2000"


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def sof(height: int, width: int, channels: int = 3, marker: int = 0xC0) -> bytes:
    components = b"".join(bytes([i + 1, 0x11, 0]) for i in range(channels))
    return segment(marker, bytes([8]) + struct.pack(">HH", height, width) + bytes([channels]) + components)


APP0 = segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
SOS = segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + b"\x12\x34\x56"  # scan header, then entropy-coded bytes


def jpeg(*parts: bytes) -> bytes:
    return SOI + b"".join(parts) + EOI


def refused(data: bytes, **kwargs) -> str:
    with pytest.raises(FrameError) as err:
        check_frame(data, **kwargs)
    return str(err.value)


# ---- JPEG -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "info"),
    [
        (jpeg(APP0, sof(90, 120), SOS), ("JPEG", 120, 90, 3)),
        (jpeg(APP0, b"\xff\xff\xff", sof(90, 120), SOS), ("JPEG", 120, 90, 3)),  # fill bytes before a marker
        (jpeg(b"\xff\x01", APP0, b"\xff\xd0\xff\xd7", sof(64, 48, 1), SOS), ("JPEG", 48, 64, 1)),  # no length
        (jpeg(segment(0xE2, bytes(40000)), sof(10, 20), SOS), ("JPEG", 20, 10, 3)),  # a segment over 32 KiB
        (jpeg(APP0, sof(100, 40000), SOS), ("JPEG", 40000, 100, 3)),  # a width over 32767
        (jpeg(APP0, sof(33000, 30, 4, marker=0xC2), SOS), ("JPEG", 30, 33000, 4)),  # progressive, CMYK
    ],
    ids=["plain", "fill-bytes", "lengthless-markers", "long-segment", "wide", "progressive-tall"],
)
def test_jpeg_headers_built_by_hand(data, info):
    assert check_frame(data) == FrameInfo(*info)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (SOI + b"\x00\x10" + EOI, "corrupt JPEG: expected a marker at byte 2, found 0x00"),
        (jpeg(APP0, b"\x00\x00"), "corrupt JPEG: expected a marker at byte 20, found 0x00"),  # junk, 4 bytes to go
        (jpeg(APP0), "corrupt JPEG: no frame header (SOF) before the image data"),
        (jpeg(APP0, SOS), "corrupt JPEG: no frame header (SOF) before the image data"),
        (jpeg(APP0, b"\xff\xc0\x00\x11\x08\x00"), "corrupt JPEG: no frame header (SOF) before the image data"),
        (jpeg(sof(90, 120), SOS)[:-1], "truncated JPEG: no end-of-image marker (FFD9) after 35 bytes"),
    ],
    ids=["junk-after-soi", "junk-at-the-end", "no-sof", "scan-before-sof", "sof-cut-short", "no-eoi"],
)
def test_jpeg_refusals_say_what_is_wrong(data, message):
    assert refused(data) == message


def test_only_zero_bytes_are_padding_and_one_soi():
    """Bytes after the end marker other than zero padding make the frame no JPEG file; so does a second SOI
    (ITU-T T.81 B.2.1: one SOI per image; libjpeg refuses "two SOI markers")."""
    frame = jpeg(APP0, sof(90, 120), SOS)
    assert check_frame(frame + b"\x00" * 3).width == 120
    message = f"truncated JPEG: no end-of-image marker (FFD9) after {len(frame) + 2} bytes"
    assert refused(frame + b"XX") == message
    assert refused(SOI + frame).startswith("corrupt JPEG: ")


def test_empty_dimensions_and_the_pixel_limit():
    assert refused(jpeg(sof(0, 120))) == "JPEG header gives an empty image (120x0)"
    assert refused(jpeg(sof(90, 0))) == "JPEG header gives an empty image (0x90)"
    assert check_frame(jpeg(sof(1, 1))) == FrameInfo("JPEG", 1, 1, 3)
    assert check_frame(jpeg(sof(100, 50)), max_pixels=5000).width == 50  # exactly at the limit
    assert refused(jpeg(sof(100, 51)), max_pixels=5000) == (
        "JPEG header claims 51x100 = 0.0 MP, over the limit of 0.0 MP (max_image_pixels); refused before decoding "
        "(decompression bomb guard)"
    )


# ---- PNG --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3), ("P", 3), ("LA", 2), ("RGBA", 4)])
def test_png_colour_types(mode, channels):
    data = encode(scene(30, 40), "PNG", mode=mode)
    assert check_frame(data) == FrameInfo("PNG", 40, 30, channels)


def test_png_headers_and_chunks():
    data = encode(scene(30, 40), "PNG")
    unknown = bytearray(data)
    unknown[25] = 5  # not a PNG colour type: the header does not say
    assert check_frame(bytes(unknown)).channels == 0
    assert check_frame(encode(scene(1, 1), "PNG")) == FrameInfo("PNG", 1, 1, 3)
    renamed = data[:12] + b"IHDX" + data[16:]
    assert refused(renamed) == f"corrupt PNG: no IHDR header chunk ({len(data)} bytes)"
    assert refused(data[:33]) == "truncated PNG: no IEND chunk at the end of 33 bytes"  # signature + IHDR only
    assert refused(data[:20]) == "corrupt PNG: no IHDR header chunk (20 bytes)"
    assert refused(data + b"\x01" * 5) == f"truncated PNG: no IEND chunk at the end of {len(data) + 5} bytes"
    assert check_frame(data + b"\x00" * 5).width == 40  # zero padding is not part of the frame
    assert refused(png_claiming(0, 5)) == "PNG header gives an empty image (0x5)"
    huge = refused(png_claiming(2**31 + 5, 1))
    assert huge.startswith("PNG header claims 2147483653x1 = 2147.5 MP, over the limit of 64.0 MP")
    near = refused(png_claiming(72_050_001, 1), max_pixels=64_050_001)  # MP to one decimal, rounded
    assert near.startswith("PNG header claims 72050001x1 = 72.1 MP, over the limit of 64.1 MP (max_image_pixels)")


# ---- other formats, and frames that are no image at all ----------------------------------------------------------


def test_other_formats_through_their_headers():
    assert check_frame(encode(scene(30, 40), "BMP")) == FrameInfo("BMP", 40, 30, 3)
    assert check_frame(encode(scene(30, 40), "TIFF", mode="RGBA")) == FrameInfo("TIFF", 40, 30, 4)
    assert check_frame(encode(scene(20, 10), "TIFF", mode="L")) == FrameInfo("TIFF", 10, 20, 1)
    bmp = bytearray(encode(scene(4, 4), "BMP"))
    bmp[18:26] = struct.pack("<ii", 20000, 20000)  # 400 MP: Pillow refuses the header itself
    assert refused(bytes(bmp)).startswith("image header claims too many pixels; refused before decoding (")


def test_a_webp_ending_with_its_own_zero_bytes_is_accepted():
    """RIFF pads chunks to an even size with a zero byte and VP8 data may end with zeros: those bytes belong to the
    file (trailing zeros were stripped before Pillow read it, and every such WebP was refused)."""
    data = encode(scene(30, 40), "WEBP")
    assert data.endswith(b"\x00")
    assert check_frame(data) == FrameInfo("WEBP", 40, 30, 3)
    assert check_frame(data + b"\x00" * 9) == FrameInfo("WEBP", 40, 30, 3)  # and zero padding of a batch


def test_messages_for_frames_that_are_no_image():
    assert refused(b"") == "frame is empty (0 bytes)"
    assert refused(b"\x00" * 64) == "frame is 64 zero bytes, not an image"
    data = random_bytes()
    assert refused(data) == (f"frame (700 bytes, starting {data[:8].hex(' ')}) is not a supported image: {FORMATS}")
    gif = io.BytesIO()
    Image.fromarray(scene(20, 20)).save(gif, "GIF")
    assert refused(gif.getvalue()) == f"image format GIF is not supported: {FORMATS}"
