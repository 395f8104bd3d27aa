"""Image decoding with limits: encoded bytes -> an 8-bit BGR OpenCV array, or a typed refusal.

Order of checks, cheapest first, so hostile input costs (almost) nothing:

1. ``empty`` / ``too_many_bytes``: the length of the bytes.
2. ``not_an_image``: the magic bytes (:func:`imagetag.formats.sniff_format`).
3. The format's own header is parsed here in pure Python (PNG IHDR, JPEG SOFn, GIF logical
   screen, BMP DIB header, TIFF first IFD, WebP VP8/VP8L/VP8X): ``truncated`` when the header
   itself is cut, ``zero_size`` for a 0 width or height, ``too_many_pixels`` /
   ``side_too_long`` against :class:`~imagetag.settings.ImageLimits`. This happens *before*
   OpenCV allocates anything, so a decompression bomb (a tiny file declaring 100k × 100k
   pixels) is refused for the price of reading a few header bytes.
4. Cheap structural checks where a decoder would otherwise silently invent pixels: a JPEG
   without an end-of-image marker after its scan (libjpeg fills the missing part with grey and
   only warns), a PNG without IEND, a BMP or WebP shorter than its own declared size
   -> ``truncated``.
5. Decoding by OpenCV with ``IMREAD_COLOR``: grayscale, palette, 16-bit (scaled to 8 bits),
   CMYK (JPEG and TIFF) all come out as 8-bit BGR, and the EXIF orientation is applied
   (``IMREAD_COLOR`` honours it unless ``IMREAD_IGNORE_ORIENTATION`` is given). Images with an
   alpha channel (PNG colour types 4/6 or a tRNS chunk, WebP with alpha) are decoded
   unchanged and composited onto white, so a transparent background does not turn black.
   GIF: the first frame. A decoder failure is ``truncated`` when the end marker is missing,
   else ``corrupt``.

Every refusal is an :class:`ImageRejected` (a :class:`~imagetag.errors.RecordError` with
``stage="decode"``) that keeps the original bytes for the dead-letter topic.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from imagetag.errors import RecordError
from imagetag.formats import sniff_format

STAGE = "decode"

# Reason tokens (machine-countable, stable: dashboards and the DLQ count them).
EMPTY = "empty"
TOO_MANY_BYTES = "too_many_bytes"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
ZERO_SIZE = "zero_size"
TOO_MANY_PIXELS = "too_many_pixels"
SIDE_TOO_LONG = "side_too_long"
CORRUPT = "corrupt"

REASONS: frozenset[str] = frozenset(
    {
        EMPTY,
        TOO_MANY_BYTES,
        NOT_AN_IMAGE,
        TRUNCATED,
        ZERO_SIZE,
        TOO_MANY_PIXELS,
        SIDE_TOO_LONG,
        CORRUPT,
    }
)


class Limits(Protocol):
    """What the decoder needs from :class:`imagetag.settings.ImageLimits`."""

    @property
    def max_bytes(self) -> int: ...
    @property
    def max_pixels(self) -> int: ...
    @property
    def max_side(self) -> int: ...


class ImageRejected(RecordError):
    """An image that cannot or may not be decoded. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "", original: bytes | None = None) -> None:
        super().__init__(STAGE, reason, detail, original)


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded."""

    format: str
    width: int
    height: int
    channels: int  # colour channels as stored: 1 gray, 3 colour, 4 colour+alpha or CMYK
    has_alpha: bool = False


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: ``pixels`` is ``uint8[height, width, 3]`` BGR, orientation applied.

    ``width``/``height`` are those of ``pixels`` (after EXIF rotation); ``channels`` and
    ``format`` describe the source as encoded.
    """

    pixels: np.ndarray = field(repr=False)
    width: int
    height: int
    format: str
    channels: int

    def gray(self) -> np.ndarray:
        """``uint8[height, width]`` luminance (what the SIFT/ORB featurizers work on)."""
        return cv2.cvtColor(self.pixels, cv2.COLOR_BGR2GRAY)


def decode_image(data: bytes, limits: Limits) -> DecodedImage:
    """Decode ``data`` into an 8-bit BGR image, enforcing ``limits`` before decoding.

    Raises :class:`ImageRejected` (``stage="decode"``) with a reason from :data:`REASONS`;
    the error keeps ``data`` as ``original``. Never raises anything else for bad input.
    """
    data = bytes(data)
    header = read_header(data, limits)
    _check_complete(data, header.format)
    flags = cv2.IMREAD_UNCHANGED if header.has_alpha else cv2.IMREAD_COLOR
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        pixels = cv2.imdecode(buffer, flags)
    except cv2.error as exc:  # OpenCV raises for some malformed inputs instead of returning None
        raise ImageRejected(CORRUPT, f"OpenCV: {exc.msg}", data) from exc
    if pixels is None or pixels.size == 0:
        reason = TRUNCATED if not _has_end_marker(data, header.format) else CORRUPT
        raise ImageRejected(reason, f"OpenCV could not decode this {header.format}", data)
    if header.has_alpha:
        pixels = _to_bgr(pixels)
    height, width = pixels.shape[:2]
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels),
        width=int(width),
        height=int(height),
        format=header.format,
        channels=header.channels,
    )


def read_header(data: bytes, limits: Limits) -> ImageHeader:
    """Sniff and parse the header of ``data`` and check it against ``limits``; no decoding.

    Raises :class:`ImageRejected` for empty, oversized, unknown, truncated-header, zero-sized,
    too-many-pixels and side-too-long input.
    """
    if len(data) == 0:
        raise ImageRejected(EMPTY, "no bytes", data)
    if len(data) > limits.max_bytes:
        raise ImageRejected(TOO_MANY_BYTES, f"{len(data)} bytes > limit {limits.max_bytes}", data)
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected(NOT_AN_IMAGE, "magic bytes of no supported format", data)
    try:
        header = _PARSERS[fmt](data)
    except (struct.error, IndexError) as exc:
        raise ImageRejected(TRUNCATED, f"{fmt} header is cut short", data) from exc
    if header.width <= 0 or header.height <= 0:
        raise ImageRejected(ZERO_SIZE, f"{fmt} declares {header.width}x{header.height}", data)
    if max(header.width, header.height) > limits.max_side:
        raise ImageRejected(
            SIDE_TOO_LONG,
            f"{header.width}x{header.height}: a side exceeds {limits.max_side}",
            data,
        )
    if header.width * header.height > limits.max_pixels:
        raise ImageRejected(
            TOO_MANY_PIXELS,
            f"{header.width}x{header.height} = {header.width * header.height} pixels"
            f" > limit {limits.max_pixels}",
            data,
        )
    return header


def make_thumbnail(image: DecodedImage, max_side: int = 64, quality: int = 75) -> bytes:
    """A small JPEG of ``image`` whose longer side is at most ``max_side`` pixels."""
    scale = min(1.0, max_side / max(image.width, image.height))
    pixels = image.pixels
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - encoding an 8-bit BGR array to JPEG does not fail
        raise RuntimeError("JPEG encoding of a thumbnail failed")
    return encoded.tobytes()


# -- header parsers ----------------------------------------------------------------------------
# Each takes the whole buffer and raises struct.error / IndexError when it is too short.


def _png_header(data: bytes) -> ImageHeader:
    length, chunk = struct.unpack_from(">I4s", data, 8)
    if chunk != b"IHDR" or length < 13:
        raise struct.error("first chunk is not IHDR")
    width, height, _depth, colour_type = struct.unpack_from(">IIBB", data, 16)
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour_type, 3)
    # tRNS gives transparency to gray/RGB/palette images; it comes before the first IDAT.
    idat = data.find(b"IDAT", 33)
    has_trns = data.find(b"tRNS", 33, idat if idat != -1 else len(data)) != -1
    has_alpha = colour_type in (4, 6) or has_trns
    return ImageHeader("png", width, height, 4 if colour_type == 6 else channels, has_alpha)


# SOFn markers carrying the frame size: C0-C3, C5-C7, C9-CB, CD-CF (C4 DHT, C8 JPG, CC DAC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header(data: bytes) -> ImageHeader:
    pos = 2
    while True:
        if data[pos] != 0xFF:
            raise ImageRejected(CORRUPT, f"JPEG marker expected at byte {pos}", data)
        while data[pos] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            raise ImageRejected(CORRUPT, "JPEG without a frame header", data)
        (length,) = struct.unpack_from(">H", data, pos)
        if marker in _JPEG_SOF:
            _, height, width, components = struct.unpack_from(">BHHB", data, pos + 2)
            return ImageHeader("jpeg", width, height, components)
        pos += length


def _gif_header(data: bytes) -> ImageHeader:
    width, height = struct.unpack_from("<HH", data, 6)
    return ImageHeader("gif", width, height, 3)


def _bmp_header(data: bytes) -> ImageHeader:
    (dib_size,) = struct.unpack_from("<I", data, 14)
    if dib_size == 12:  # BITMAPCOREHEADER: 16-bit sizes
        width, height, _, bits = struct.unpack_from("<hhHH", data, 18)
    else:
        width, height, _, bits = struct.unpack_from("<iiHH", data, 18)
    channels = {1: 1, 4: 3, 8: 3, 16: 3, 24: 3, 32: 4}.get(bits, 3)
    return ImageHeader("bmp", abs(width), abs(height), channels)  # negative height: top-down


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8


def _tiff_header(data: bytes) -> ImageHeader:
    order = "<" if data[:2] == b"II" else ">"
    (magic,) = struct.unpack_from(order + "H", data, 2)
    big = magic == 43  # BigTIFF: 8-byte offsets and counts, 20-byte entries
    if big:
        (offset,) = struct.unpack_from(order + "Q", data, 8)
        (count,) = struct.unpack_from(order + "Q", data, offset)
        entry_at, entry_size, value_offset = offset + 8, 20, 12
    else:
        (offset,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, offset)
        entry_at, entry_size, value_offset = offset + 2, 12, 8
    tags: dict[int, int] = {}
    for i in range(min(count, 4096)):
        base = entry_at + i * entry_size
        tag, kind = struct.unpack_from(order + "HH", data, base)
        if tag in (256, 257, 277) and kind in _TIFF_TYPES:
            fmt, _ = _TIFF_TYPES[kind]
            (tags[tag],) = struct.unpack_from(order + fmt, data, base + value_offset)
    if 256 not in tags or 257 not in tags:
        raise struct.error("TIFF IFD without ImageWidth/ImageLength")
    return ImageHeader("tiff", tags[256], tags[257], tags.get(277, 1))


def _webp_header(data: bytes) -> ImageHeader:
    chunk = data[12:16]
    if len(chunk) < 4:
        raise struct.error("no WebP chunk")
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageRejected(CORRUPT, "VP8 frame without its start code", data)
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF, 3)
    if chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        alpha = bool((bits >> 28) & 1)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return ImageHeader("webp", width, height, 4 if alpha else 3, alpha)
    if chunk == b"VP8X":
        flags = data[20]
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        if len(data) < 30:
            raise struct.error("VP8X chunk cut short")
        alpha = bool(flags & 0x10)
        return ImageHeader("webp", width, height, 4 if alpha else 3, alpha)
    raise ImageRejected(CORRUPT, f"unknown WebP chunk {chunk!r}", data)


_PARSERS = {
    "png": _png_header,
    "jpeg": _jpeg_header,
    "gif": _gif_header,
    "bmp": _bmp_header,
    "tiff": _tiff_header,
    "webp": _webp_header,
}


# -- completeness ------------------------------------------------------------------------------


def _check_complete(data: bytes, fmt: str) -> None:
    """Refuse as ``truncated`` what a decoder would accept while inventing missing pixels."""
    if fmt == "jpeg" or fmt == "png":
        if not _has_end_marker(data, fmt):
            raise ImageRejected(TRUNCATED, f"{fmt} ends before its end marker", data)
    elif fmt == "bmp":
        (declared,) = struct.unpack_from("<I", data, 2)
        (pixel_offset,) = struct.unpack_from("<I", data, 10)
        if pixel_offset >= len(data) or (declared > 0 and len(data) < declared):
            raise ImageRejected(TRUNCATED, f"bmp of {len(data)} bytes declares {declared}", data)
    elif fmt == "webp":
        (declared,) = struct.unpack_from("<I", data, 4)
        if len(data) < declared + 8:
            raise ImageRejected(
                TRUNCATED, f"webp of {len(data)} bytes declares {declared + 8}", data
            )


def _has_end_marker(data: bytes, fmt: str) -> bool:
    if fmt == "jpeg":
        # EOI after the start of the (last) scan; an EXIF thumbnail's EOI comes before it.
        sos = data.rfind(b"\xff\xda")
        return sos != -1 and data.find(b"\xff\xd9", sos) != -1
    if fmt == "png":
        return data.rfind(b"IEND") >= len(data) - 64 and data.rfind(b"IEND") > 8
    if fmt == "gif":
        return data.rstrip(b"\x00").endswith(b";")
    return True  # bmp, webp: checked by declared size; tiff: offsets, no end marker


def _to_bgr(pixels: np.ndarray) -> np.ndarray:
    """An image decoded with IMREAD_UNCHANGED (maybe 16-bit, gray or with alpha) -> 8-bit BGR."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        values = pixels.astype(np.float64)  # float TIFFs: stretch the range to 0..255
        span = float(values.max() - values.min()) or 1.0
        pixels = ((values - values.min()) * (255.0 / span)).astype(np.uint8)
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 2:  # gray + alpha (OpenCV usually expands this to 4 channels)
        gray, alpha = pixels[..., 0], pixels[..., 1]
        pixels = np.dstack([gray, gray, gray, alpha])
    if pixels.shape[2] == 4:
        bgr = pixels[..., :3].astype(np.float32)
        alpha = pixels[..., 3:4].astype(np.float32) / 255.0
        return np.clip(bgr * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
    return pixels
