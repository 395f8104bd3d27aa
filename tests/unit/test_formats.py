"""sniff_format recognises real encoder output by magic bytes and nothing else;
identify_unsupported names the image formats we recognise but do not accept."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from imagetag.formats import (
    CONTENT_TYPES,
    SUPPORTED_FORMATS,
    content_type,
    identify_unsupported,
    sniff_format,
)


def _encode(ext: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, pixels)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    ("ext", "fmt"),
    [(".jpg", "jpeg"), (".png", "png"), (".bmp", "bmp"), (".tiff", "tiff"), (".webp", "webp")],
)
def test_sniffs_opencv_output(ext: str, fmt: str) -> None:
    assert sniff_format(_encode(ext)) == fmt


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"GIF89a\x01\x00\x01\x00", "gif"),
        (b"GIF87a\x01\x00\x01\x00", "gif"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (b"\xff\xd8\xff", "jpeg"),  # truncated still sniffs; the decoder rejects it later
    ],
)
def test_sniffs_headers(data: bytes, fmt: str) -> None:
    assert sniff_format(data) == fmt


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"BM but just text, not a bitmap",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",  # a WAV file is RIFF too
        b"%PDF-1.7\n",
        b"\x89PNG",  # too short to be sure
        b"\x00" * 64,
    ],
)
def test_rejects_non_images(data: bytes) -> None:
    assert sniff_format(data) is None


def test_accepts_memoryview_and_bytearray() -> None:
    data = _encode(".png")
    assert sniff_format(memoryview(data)) == "png"
    assert sniff_format(bytearray(data)) == "png"


def test_content_types_cover_every_format() -> None:
    assert set(CONTENT_TYPES) == SUPPORTED_FORMATS
    assert all(v.startswith("image/") for v in CONTENT_TYPES.values())
    assert content_type("jpeg") == "image/jpeg"


@pytest.mark.parametrize("data", [b"II+\x00\x08\x00\x00\x00", b"MM\x00+\x00\x08\x00\x00"])
def test_sniffs_bigtiff(data: bytes) -> None:
    assert sniff_format(data) == "tiff"


def _ftyp(*brands: bytes) -> bytes:
    body = brands[0] + bytes(4) + b"".join(brands[1:])
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (_ftyp(b"heic", b"mif1", b"heic"), "HEIC"),
        (_ftyp(b"mif1", b"mif1", b"miaf"), "HEIF"),
        (_ftyp(b"avif", b"avif", b"mif1"), "AVIF"),
        (_ftyp(b"mif1", b"avif"), "AVIF"),  # the compatible brands say what it is
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (
            b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- c -->\n<!DOCTYPE svg [ <!ENTITY a "b"> ]>\n<svg>',
            "SVG",
        ),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n\x00\x00", "JPEG 2000"),
        (b"\xff\x4f\xff\x51\x00\x2f", "JPEG 2000"),
        (b"\xff\x0a\xfa\x7f", "JPEG XL"),
        (b"8BPS\x00\x01", "PSD"),
        (
            b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00\x20\x00\x68\x04\x00\x00\x16\x00\x00\x00",
            "ICO",
        ),
        (b"P6\n16 12\n255\n", "Netpbm"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n", "EPS"),
        (b"\x00" * 40 + b"TRUEVISION-XFILE.\x00", "TGA"),
    ],
)
def test_identifies_image_formats_we_do_not_accept(data: bytes, name: str) -> None:
    assert sniff_format(data) is None
    assert identify_unsupported(data) == name


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        _ftyp(b"isom", b"isom", b"mp41"),  # a video
        b"<html><body><svg></svg></body></html>",  # an SVG inside HTML is a web page
        b'<?xml version="1.0"?><rss/>',
        b"%!PS-Adobe-3.0\n",  # PostScript, not EPS
        b"%PDF-1.7\n",
        b"\x00" * 64,
        _encode(".png"),  # a supported format is not "unsupported"
    ],
)
def test_identifies_nothing_else(data: bytes) -> None:
    assert identify_unsupported(data) is None
