"""Decoding with limits: every format, every normalisation, every refusal (generated images)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from imagetag.errors import RecordError
from imagetag.images import (
    REASONS,
    DecodedImage,
    ImageRejected,
    decode_image,
    make_thumbnail,
    read_header,
)
from imagetag.settings import ImageLimits

LIMITS = ImageLimits()


def _encode(ext: str, pixels: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, pixels, params or [])
    assert ok
    return buf.tobytes()


def _picture(height: int = 30, width: int = 40) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _cmyk_tiff(cmyk: np.ndarray) -> bytes:
    """An uncompressed CMYK TIFF (PhotometricInterpretation = 5, separated), written by hand."""
    height, width, _ = cmyk.shape
    pixels = cmyk.tobytes()
    entries = [
        (256, 3, 1, width),  # ImageWidth
        (257, 3, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample (one value shared by the 4 samples is tolerated)
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 5),  # Photometric: separated (CMYK)
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 4),  # SamplesPerPixel
        (278, 3, 1, height),  # RowsPerStrip
        (279, 4, 1, len(pixels)),  # StripByteCounts
        (284, 3, 1, 1),  # PlanarConfiguration: chunky
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = data_offset
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + pixels


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    tiff = (
        b"II*\x00"
        + struct.pack("<I", 8)
        + struct.pack("<H", 1)
        + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
        + struct.pack("<I", 0)
    )
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def _reason(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, limits)
    err = info.value
    assert isinstance(err, RecordError)
    assert err.stage == "decode"
    assert err.reason in REASONS
    assert err.original == data  # the dead-letter topic gets the bytes as they came
    return err.reason


# -- formats and normalisation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "fmt", "lossless"),
    [
        (".png", "png", True),
        (".jpg", "jpeg", False),
        (".gif", "gif", False),
        (".bmp", "bmp", True),
        (".tiff", "tiff", True),
        (".webp", "webp", False),
    ],
)
def test_every_format_decodes_to_8bit_bgr(ext: str, fmt: str, lossless: bool) -> None:
    picture = _picture()
    image = decode_image(_encode(ext, picture), LIMITS)
    assert isinstance(image, DecodedImage)
    assert (image.format, image.width, image.height) == (fmt, 40, 30)
    assert image.pixels.shape == (30, 40, 3)
    assert image.pixels.dtype == np.uint8
    if lossless:
        assert np.array_equal(image.pixels, picture)


def test_lossless_webp_header() -> None:
    data = _encode(".webp", _picture(17, 23), [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert data[12:16] == b"VP8L"
    assert (read_header(data, LIMITS).width, read_header(data, LIMITS).height) == (23, 17)
    assert decode_image(data, LIMITS).pixels.shape == (17, 23, 3)


def test_grayscale_becomes_three_channels() -> None:
    gray = _picture()[..., 0]
    image = decode_image(_encode(".png", gray), LIMITS)
    assert image.channels == 1
    assert image.pixels.shape == (30, 40, 3)
    assert np.array_equal(image.pixels[..., 1], gray)
    assert np.array_equal(image.gray(), gray)


def test_16_bit_is_scaled_to_8_bit() -> None:
    picture = _picture()
    image = decode_image(_encode(".png", picture.astype(np.uint16) * 257), LIMITS)
    assert image.pixels.dtype == np.uint8
    assert np.array_equal(image.pixels, picture)


def test_rgba_is_composited_on_white() -> None:
    picture = _picture()
    alpha = np.zeros((30, 40), np.uint8)
    alpha[:, :20] = 255  # left half opaque, right half transparent
    image = decode_image(_encode(".png", np.dstack([picture, alpha])), LIMITS)
    assert image.channels == 4
    assert np.array_equal(image.pixels[:, :20], picture[:, :20])
    assert (image.pixels[:, 20:] == 255).all()


def test_rgba_webp_is_composited_on_white() -> None:
    rgba = np.dstack([_picture(), np.zeros((30, 40), np.uint8)])
    data = _encode(".webp", rgba, [cv2.IMWRITE_WEBP_QUALITY, 101])
    image = decode_image(data, LIMITS)
    assert image.channels == 4
    assert (image.pixels == 255).all()


def test_cmyk_tiff_becomes_bgr() -> None:
    cmyk = np.zeros((8, 10, 4), np.uint8)
    cmyk[:, :, 1] = 255  # full magenta, no black -> red + blue
    image = decode_image(_cmyk_tiff(cmyk), LIMITS)
    assert image.channels == 4
    assert image.pixels.shape == (8, 10, 3)
    b, g, r = image.pixels[4, 5].astype(int)
    assert r > 200 and b > 200 and g < 50


@pytest.mark.parametrize("ext", [".gif", ".png"])  # GIF, APNG
def test_an_animation_decodes_to_its_first_frame(ext: str) -> None:
    blue = np.zeros((20, 30, 3), np.uint8)
    blue[:] = (255, 0, 0)
    red = np.zeros((20, 30, 3), np.uint8)
    red[:] = (0, 0, 255)
    animation = cv2.Animation()
    animation.frames = [blue, red]
    animation.durations = [100, 100]
    ok, buf = cv2.imencodeanimation(ext, animation)
    assert ok and (ext == ".gif" or b"acTL" in buf.tobytes())
    image = decode_image(buf.tobytes(), LIMITS)
    assert (image.width, image.height) == (30, 20)
    assert tuple(image.pixels[10, 15]) == (255, 0, 0)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_a_damaged_animated_png_is_refused_not_a_crash() -> None:
    """OpenCV 4.12's APNG reader dies of SIGSEGV on an acTL followed by an IDAT whose rows have
    an invalid filter type (found by test_properties); run in a child, so a crash fails this
    test instead of the whole run."""
    rows = b"".join(b"\x07" + bytes(3 * 8) for _ in range(8))  # filter type 7 does not exist
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
        + _png_chunk(b"acTL", struct.pack(">II", 3, 0))
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )
    child = subprocess.run(
        [sys.executable, "-c", CHILD_DECODE],
        input=data,
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr.decode(errors="replace")[-2000:]
    assert child.stdout.decode().split() == ["decode", "corrupt"]


CHILD_DECODE = """
import sys
from imagetag.images import ImageRejected, decode_image
from imagetag.settings import ImageLimits
try:
    decode_image(sys.stdin.buffer.read(), ImageLimits())
    print("decoded")
except ImageRejected as err:
    print(err.stage, err.reason)
"""


def test_exif_orientation_is_applied() -> None:
    picture = np.zeros((20, 40, 3), np.uint8)
    picture[:, :10] = 255  # white band on the left
    data = _with_exif_orientation(_encode(".jpg", picture), 6)  # 6 = rotate 90° clockwise
    image = decode_image(data, LIMITS)
    assert (image.width, image.height) == (20, 40)
    assert image.pixels[:8].mean() > 240  # the band is now on top
    assert image.pixels[12:].mean() < 15


def test_orientation_applies_to_alpha_png() -> None:
    """OpenCV ignores EXIF when reading unchanged (alpha): the decoder turns it itself."""
    from PIL import Image

    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:, :10, :3] = 255  # white band on the left, stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to show
    out = io.BytesIO()
    Image.fromarray(rgba).save(out, "PNG", exif=exif)
    image = decode_image(out.getvalue(), LIMITS)
    assert (image.width, image.height) == (20, 40)
    assert image.pixels[:8].mean() > 240 and image.pixels[12:].mean() < 15


def test_jpeg_with_data_after_its_end() -> None:
    """A motion photo: a video after the EOI, holding start-of-scan but no end-of-image bytes."""
    data = _encode(".jpg", _picture()) + b"ftypmp42\xff\xda\x00\x08" + bytes(range(256))
    assert decode_image(data, LIMITS).pixels.shape == (30, 40, 3)


def test_jpeg_with_stray_bytes_between_segments() -> None:
    jpeg = _encode(".jpg", _picture())
    dqt = jpeg.find(b"\xff\xdb")
    assert decode_image(jpeg[:dqt] + b"\x00\x00" + jpeg[dqt:], LIMITS).width == 40


def test_png_with_data_after_iend() -> None:
    data = _encode(".png", _picture()) + b"old pixels a cropping tool left behind" * 10
    assert np.array_equal(decode_image(data, LIMITS).pixels, _picture())


def test_bmp_whose_alpha_is_all_zero_is_opaque() -> None:
    from imagetag.testing.corpus import odd_images

    data = bytearray(odd_images()["bmp_32bit_v5_alpha"])
    (offset,) = struct.unpack_from("<I", data, 10)
    data[offset + 3 :: 4] = bytes(len(data[offset + 3 :: 4]))  # every alpha byte 0
    image = decode_image(bytes(data), LIMITS)
    assert image.pixels.mean() < 250  # not composited into white


def test_float_tiff_is_stretched_to_8_bits() -> None:
    ramp = np.linspace(-1.0, 3.0, 30 * 40, dtype=np.float32).reshape(30, 40)
    ramp[0, 0], ramp[0, 1] = np.nan, np.inf
    image = decode_image(_encode(".tiff", ramp), LIMITS)
    assert image.pixels.dtype == np.uint8
    assert image.pixels[-1, -1, 0] == 255  # the largest finite value
    assert image.pixels[0, 2, 0] == 0  # the smallest
    assert (image.pixels[0, :2] == 0).all()  # NaN, infinity


def test_thumbnail_is_a_small_jpeg() -> None:
    image = decode_image(_encode(".png", _picture(300, 400)), LIMITS)
    thumb = decode_image(make_thumbnail(image, max_side=64), LIMITS)
    assert (thumb.format, thumb.width, thumb.height) == ("jpeg", 64, 48)


# -- refusals ------------------------------------------------------------------------------------


def test_empty() -> None:
    assert _reason(b"") == "empty"


def test_too_many_bytes() -> None:
    data = _encode(".png", _picture())
    assert _reason(data, ImageLimits(max_bytes=len(data) - 1)) == "too_many_bytes"


@pytest.mark.parametrize("data", [b"hello world, not an image", b"\x00" * 64, b"BM" + b"x" * 30])
def test_not_an_image(data: bytes) -> None:
    assert _reason(data) == "not_an_image"


def test_unsupported_format_names_it() -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(32)
    with pytest.raises(ImageRejected) as info:
        decode_image(heic, LIMITS)
    assert (info.value.reason, info.value.detail) == ("unsupported_format", "HEIC is not supported")
    assert info.value.original == heic
    assert _reason(b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>') == (
        "unsupported_format"
    )


def test_png_whose_first_chunk_is_not_ihdr_is_corrupt() -> None:
    data = _encode(".png", _picture())
    text = b"\x00\x00\x00\x03tEXta\x00b" + struct.pack(">I", zlib.crc32(b"tEXta\x00b"))
    assert _reason(data[:8] + text + data[8:]) == "corrupt"


@pytest.mark.parametrize("ext", [".png", ".jpg", ".gif", ".bmp", ".tiff", ".webp"])
def test_header_cut_short_is_truncated(ext: str) -> None:
    data = _encode(ext, _picture())
    assert _reason(data[:16]) == "truncated"


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_body_cut_short_is_truncated(ext: str) -> None:
    data = _encode(ext, _picture(64, 64))
    assert _reason(data[: len(data) * 2 // 3]) == "truncated"


def test_gif_cut_short_is_refused() -> None:
    data = _encode(".gif", _picture(64, 64))
    assert _reason(data[: len(data) // 2]) in {"truncated", "corrupt"}


def _png_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode(".png", _picture(4, 4)))
    struct.pack_into(">II", data, 16, width, height)  # IHDR (CRC now wrong: never decoded)
    return bytes(data)


def test_zero_size() -> None:
    assert _reason(_png_declaring(0, 10)) == "zero_size"
    gif = bytearray(_encode(".gif", _picture()))
    struct.pack_into("<HH", gif, 6, 40, 0)
    assert _reason(bytes(gif)) == "zero_size"


def test_too_many_pixels_is_refused_from_the_header() -> None:
    limits = ImageLimits(max_pixels=1000)
    assert _reason(_encode(".png", _picture(40, 40)), limits) == "too_many_pixels"


def test_side_too_long() -> None:
    limits = ImageLimits(max_side=30)
    assert _reason(_encode(".jpg", _picture(10, 31)), limits) == "side_too_long"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "gif", "bmp", "tiff", "webp"])
def test_decompression_bomb_costs_nothing(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers declaring 60000 x 60000 pixels are refused before OpenCV sees them."""
    side = 60000
    data = bytearray(_encode({"jpeg": ".jpg"}.get(fmt, f".{fmt}"), _picture(8, 8)))
    if fmt == "png":
        struct.pack_into(">II", data, 16, side, side)
    elif fmt == "jpeg":
        sof = data.find(b"\xff\xc0")
        struct.pack_into(">HH", data, sof + 5, side, side)
    elif fmt == "gif":
        struct.pack_into("<HH", data, 6, side, side)
    elif fmt == "bmp":
        struct.pack_into("<ii", data, 18, side, side)
    elif fmt == "tiff":
        data = bytearray(_cmyk_tiff(np.zeros((2, 2, 4), np.uint8)))
        struct.pack_into("<H", data, 10 + 8, side)  # ImageWidth value
        struct.pack_into("<H", data, 10 + 12 + 8, side)  # ImageLength value
    elif fmt == "webp":
        data = bytearray(_encode(".webp", _picture(8, 8), [cv2.IMWRITE_WEBP_QUALITY, 101]))
        bits = (side - 1) | ((side - 1) << 14)
        struct.pack_into(
            "<I", data, 21, bits | (struct.unpack_from("<I", data, 21)[0] & ~0xFFFFFFF)
        )

    def no_decoding(*args: object) -> None:
        raise AssertionError("OpenCV was asked to decode a bomb")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    assert _reason(bytes(data), ImageLimits(max_side=100_000)) == "too_many_pixels"


def test_garbage_after_a_valid_header_is_corrupt() -> None:
    data = bytearray(_encode(".png", _picture(32, 32)))
    idat = data.find(b"IDAT")
    data[idat + 4 : idat + 60] = b"\xaa" * 56
    assert _reason(bytes(data)) in {"corrupt", "truncated"}
