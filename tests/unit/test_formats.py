"""sniff_format recognises real encoder output by magic bytes and nothing else."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from imagetag.formats import CONTENT_TYPES, SUPPORTED_FORMATS, content_type, sniff_format


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
