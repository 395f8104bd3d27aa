"""Image decoding with limits: encoded bytes -> an 8-bit BGR OpenCV array, or a typed refusal.

Order of checks, cheapest first, so hostile input costs (almost) nothing:

1. ``empty`` / ``too_many_bytes``: the length of the bytes.
2. The magic bytes (:func:`imagetag.formats.sniff_format`). Not a format we accept:
   ``unsupported_format`` when it is an image format we recognise (HEIC, AVIF, SVG,
   JPEG 2000, ...: :func:`imagetag.formats.identify_unsupported`; the detail names it, e.g.
   "HEIC is not supported"), else ``not_an_image``.
3. The format's own header is parsed here in pure Python (PNG IHDR, JPEG SOFn, GIF logical
   screen and first image descriptor, BMP DIB header, TIFF first IFD, WebP VP8/VP8L/VP8X):
   ``truncated`` when the header itself is cut, ``corrupt`` when it is not what its format
   says, ``zero_size`` for a 0 width or height, ``too_many_pixels`` / ``side_too_long``
   against :class:`~imagetag.settings.ImageLimits`, for the image and for every other buffer
   the header makes the decoder allocate (a GIF's first frame, a TIFF tile). This happens
   *before* OpenCV allocates anything, so a decompression bomb (a tiny file declaring
   100k × 100k pixels) is refused for the price of reading a few header bytes.
4. Cheap structural checks where a decoder would otherwise invent pixels or fail for want of
   bytes -> ``truncated``: a JPEG whose marker walk ends before its end-of-image (libjpeg fills
   the missing part with grey and only warns), a PNG without IEND, a GIF without its trailer,
   a BMP or WebP shorter than its own declared size, a TIFF whose strips or tiles end past
   the end of the file. Data after the end (the video of a motion photo after a JPEG, the old
   pixels a cropping tool left after a PNG's IEND) is ignored, as every viewer does. The
   walks are bounded: a JPEG of over 65,536 segments or 1,000 scans (a decoding-time bomb:
   libjpeg would spend minutes on it) is ``corrupt``.
5. Decoding by OpenCV with ``IMREAD_COLOR``: grayscale, palette, 1- and 16-bit (scaled to
   8 bits), CMYK (JPEG and TIFF) all come out as 8-bit BGR. Images with an alpha channel (PNG
   colour types 4/6 or a tRNS chunk, GIF with a transparent colour, WebP with alpha, TIFF with
   an alpha extra sample, 32-bit BMP with an alpha mask) and TIFFs of 32-bit or floating-point
   samples are decoded unchanged, brought to 8 bits (floats: their finite range stretched) and
   composited onto white, so a transparent background does not turn black. Where OpenCV's
   unchanged output is not what the format means, it is corrected: a gray PNG's tRNS key
   becomes alpha, 8-bit TIFF colours come premultiplied, a BMP whose alpha is all 0 is opaque.
   GIF, WebP, MPO and TIFF: the first frame / page; APNG: its default image (the first frame
   or the still image before the animation), decoded as a still PNG.
6. The EXIF orientation is applied here, read from the JPEG APP1, PNG eXIf or WebP EXIF
   block (OpenCV leaves alpha images and WebP unrotated, so it is told to ignore EXIF and
   every format is turned the same way). TIFF: OpenCV applies its Orientation tag itself.

A decoder failure is ``truncated`` when the end marker is missing, else ``corrupt``. Every
refusal is an :class:`ImageRejected` (a :class:`~imagetag.errors.RecordError` with
``stage="decode"``) that keeps the original bytes for the dead-letter topic.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from imagetag.errors import RecordError
from imagetag.formats import identify_unsupported, sniff_format

STAGE = "decode"

# Reason tokens (machine-countable, stable: dashboards and the DLQ count them).
EMPTY = "empty"
TOO_MANY_BYTES = "too_many_bytes"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
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
        UNSUPPORTED_FORMAT,
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
    """What the header says, before any pixel is decoded.

    ``buffers``: ``(width, height)`` of the other pixel buffers the decoder allocates from this
    header (a GIF's first frame, a TIFF tile), held to the same limits as the image.
    ``unchanged``: decode with ``IMREAD_UNCHANGED`` (alpha, or samples ``IMREAD_COLOR``
    cannot convert). ``premultiplied``: OpenCV returns the colours already multiplied by alpha
    (8-bit TIFFs, read through libtiff's RGBA interface; associated alpha).
    """

    format: str
    width: int
    height: int
    channels: int  # colour channels as stored: 1 gray, 3 colour, 4 colour+alpha or CMYK
    has_alpha: bool = False
    buffers: tuple[tuple[int, int], ...] = ()
    unchanged: bool = False
    premultiplied: bool = False


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
    orientation = _exif_orientation(data, header.format)
    unchanged = header.has_alpha or header.unchanged
    # IMREAD_UNCHANGED ignores the EXIF orientation by itself; the orientation is applied below.
    flags = cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    encoded = _png_without_animation(data) if header.format == "png" else data
    buffer = np.frombuffer(encoded, dtype=np.uint8)
    try:
        pixels = cv2.imdecode(buffer, flags)
    except cv2.error as exc:  # OpenCV raises for some malformed inputs instead of returning None
        raise ImageRejected(CORRUPT, f"OpenCV: {exc.msg}", data) from exc
    if pixels is None or pixels.size == 0:
        reason = TRUNCATED if not _has_end_marker(data, header.format) else CORRUPT
        raise ImageRejected(reason, f"OpenCV could not decode this {header.format}", data)
    if unchanged:
        pixels = _to_bgr(_alpha_as_meant(pixels, data, header.format), header.premultiplied)
    pixels = _oriented(pixels, orientation)
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

    Raises :class:`ImageRejected` for empty, oversized, unknown, unsupported, truncated-header,
    malformed-header, zero-sized, too-many-pixels and side-too-long input.
    """
    if len(data) == 0:
        raise ImageRejected(EMPTY, "no bytes", data)
    if len(data) > limits.max_bytes:
        raise ImageRejected(TOO_MANY_BYTES, f"{len(data)} bytes > limit {limits.max_bytes}", data)
    fmt = sniff_format(data)
    if fmt is None:
        other = identify_unsupported(data)
        if other is not None:
            raise ImageRejected(UNSUPPORTED_FORMAT, f"{other} is not supported", data)
        raise ImageRejected(
            NOT_AN_IMAGE, f"magic bytes of no supported format (starts with {data[:8]!r})", data
        )
    try:
        header = _PARSERS[fmt](data)
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise ImageRejected(TRUNCATED, f"{fmt} header is cut short", data) from exc
    if header.width <= 0 or header.height <= 0:
        raise ImageRejected(ZERO_SIZE, f"{fmt} declares {header.width}x{header.height}", data)
    _check_area(data, limits, "", header.width, header.height)
    for width, height in header.buffers:
        _check_area(data, limits, f"{fmt} frame or tile ", width, height)
    return header


def _check_area(data: bytes, limits: Limits, what: str, width: int, height: int) -> None:
    if max(width, height) > limits.max_side:
        raise ImageRejected(
            SIDE_TOO_LONG, f"{what}{width}x{height}: a side exceeds {limits.max_side}", data
        )
    if width * height > limits.max_pixels:
        raise ImageRejected(
            TOO_MANY_PIXELS,
            f"{what}{width}x{height} = {width * height} pixels > limit {limits.max_pixels}",
            data,
        )


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
# Each takes the whole buffer and raises struct.error / IndexError / ValueError when it is too
# short, ImageRejected(CORRUPT) when it is not what the format says.

# Walks of the structure stop there (real files have a few dozen markers, chunks or blocks;
# 10 MB of empty ones would cost seconds of Python). A progressive JPEG has about ten scans;
# thousands of them over a large frame make libjpeg decode for minutes (its djpeg has
# -maxscans for that).
_MAX_SEGMENTS = 65_536
_JPEG_MAX_SCANS = 1_000


def _png_header(data: bytes) -> ImageHeader:
    length, chunk = struct.unpack_from(">I4s", data, 8)
    if chunk != b"IHDR" or length < 13:
        raise ImageRejected(CORRUPT, f"PNG whose first chunk is {chunk!r}, not IHDR", data)
    width, height, _depth, colour_type = struct.unpack_from(">IIBB", data, 16)
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour_type, 3)
    # tRNS gives transparency to gray/RGB/palette images; it comes before the first IDAT.
    has_trns = any(kind == b"tRNS" for kind, _, _ in _png_chunks_before_idat(data))
    has_alpha = colour_type in (4, 6) or has_trns
    return ImageHeader("png", width, height, 4 if colour_type == 6 else channels, has_alpha)


def _png_chunks(data: bytes, pos: int) -> Iterator[tuple[bytes, int, int]]:
    """``(type, offset of the chunk, length of its body)`` of the chunks from ``pos`` on;
    stops when the data ends, and after :data:`_MAX_SEGMENTS` chunks."""
    for _ in range(_MAX_SEGMENTS):
        if pos + 8 > len(data):
            return
        length, kind = struct.unpack_from(">I4s", data, pos)
        yield kind, pos, length
        pos += 12 + length


def _png_chunks_before_idat(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """``(type, offset of the body, length)`` of the chunks after IHDR and before the first
    IDAT (where tRNS, eXIf, iCCP, PLTE live)."""
    for kind, pos, length in _png_chunks(data, 33):  # after the signature and IHDR
        if kind in (b"IDAT", b"IEND"):
            return
        yield kind, pos + 8, length


_APNG_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})


def _png_without_animation(data: bytes) -> bytes:
    """An animated PNG as the still PNG of its default image (its IDAT, the first frame when
    an fcTL comes before it): ``data`` without its acTL, fcTL and fdAT chunks, what a viewer
    without APNG support shows. OpenCV 4.12 reads an acTL before the IDAT as an animation, and
    its APNG reader crashed the process (SIGSEGV) on a damaged one the property tests made;
    libpng's still-image path refuses such damage. Other PNGs are returned as they are."""
    if not any(kind == b"acTL" for kind, _, _ in _png_chunks_before_idat(data)):
        return data
    kept, end = [data[:8]], 8
    for kind, pos, length in _png_chunks(data, 8):
        end = pos + 12 + length
        if kind not in _APNG_CHUNKS:
            kept.append(data[pos:end])
        if kind == b"IEND":
            break
    kept.append(data[end:])  # a truncated last chunk stays truncated; after IEND is ignored
    return b"".join(kept)


# SOFn markers carrying the frame size: C0-C3, C5-C7, C9-CB, CD-CF (C4 DHT, C8 JPG, CC DAC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SOS, _JPEG_EOI, _JPEG_APP1 = 0xDA, 0xD9, 0xE1
# The marker that ends a scan's entropy-coded data: 0xFF followed by neither a stuffed 0x00,
# a restart marker nor another fill byte.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """``(marker, offset of its length field)`` of each marker after SOI, up to EOI included;
    the entropy-coded data after each SOS is skipped. Stray bytes between segments are
    skipped as libjpeg does (it warns and carries on). IndexError / struct.error when the data
    ends first; ImageRejected(CORRUPT) past :data:`_MAX_SEGMENTS` or :data:`_JPEG_MAX_SCANS`."""
    pos, scans = 2, 0
    for _ in range(_MAX_SEGMENTS):
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)
            if pos == -1:
                raise IndexError("JPEG ends between segments")
        while data[pos] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            continue
        yield marker, pos
        if marker == _JPEG_EOI:
            return
        (length,) = struct.unpack_from(">H", data, pos)
        pos += length
        if marker == _JPEG_SOS:
            scans += 1
            if scans > _JPEG_MAX_SCANS:
                raise ImageRejected(CORRUPT, f"JPEG with over {_JPEG_MAX_SCANS} scans", data)
            scan_end = _JPEG_SCAN_END.search(data, pos)
            if scan_end is None:
                raise IndexError("JPEG scan runs to the end of the data")
            pos = scan_end.start()
    raise ImageRejected(CORRUPT, f"JPEG with over {_MAX_SEGMENTS} segments", data)


def _jpeg_header(data: bytes) -> ImageHeader:
    for marker, pos in _jpeg_segments(data):
        if marker in (_JPEG_EOI, _JPEG_SOS):
            raise ImageRejected(CORRUPT, "JPEG without a frame header", data)
        if marker in _JPEG_SOF:
            _, _, height, width, components = struct.unpack_from(">HBHHB", data, pos)
            return ImageHeader("jpeg", width, height, components)
    raise AssertionError("unreachable: _jpeg_segments ends with EOI or raises")  # pragma: no cover


def _gif_header(data: bytes) -> ImageHeader:
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    transparent = False
    for _ in range(_MAX_SEGMENTS):
        if data[pos] != 0x21:  # not an extension: the first image, we hope
            break
        if data[pos + 1] == 0xF9:  # graphic control: bit 0 of its packed byte = transparency
            transparent = bool(data[pos + 3] & 1)
        pos = _gif_skip_sub_blocks(data, pos + 2)
    if data[pos] != 0x2C:
        raise ImageRejected(CORRUPT, f"GIF without an image (block 0x{data[pos]:02x})", data)
    frame_width, frame_height = struct.unpack_from("<HH", data, pos + 5)
    return ImageHeader("gif", width, height, 3, transparent, buffers=((frame_width, frame_height),))


def _gif_skip_sub_blocks(data: bytes, pos: int) -> int:
    """Offset after the sub-blocks starting at ``pos`` (each a length byte, 0 ends them)."""
    while size := data[pos]:
        pos += size + 1
    return pos + 1


_BMP_BITFIELDS, _BMP_ALPHABITFIELDS = 3, 6


def _bmp_header(data: bytes) -> ImageHeader:
    (dib_size,) = struct.unpack_from("<I", data, 14)
    has_alpha = False
    if dib_size == 12:  # BITMAPCOREHEADER: 16-bit sizes
        width, height, _, bits = struct.unpack_from("<hhHH", data, 18)
    else:
        width, height, _, bits, compression = struct.unpack_from("<iiHHI", data, 18)
        # 32-bit pixels with an alpha bit mask: in a V3+ header, or after a 40-byte one.
        alpha_mask = (dib_size >= 56 and compression == _BMP_BITFIELDS) or (
            compression == _BMP_ALPHABITFIELDS
        )
        if bits == 32 and alpha_mask:
            has_alpha = struct.unpack_from("<I", data, 66)[0] != 0
    channels = {1: 1, 4: 3, 8: 3, 16: 3, 24: 3, 32: 4}.get(bits, 3)
    # negative height: top-down
    return ImageHeader("bmp", abs(width), abs(height), channels, has_alpha)


_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8
_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_BITS, _TIFF_PHOTOMETRIC = 256, 257, 258, 262
_TIFF_STRIP_OFFSETS, _TIFF_SAMPLES, _TIFF_STRIP_COUNTS = 273, 277, 279
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH, _TIFF_TILE_OFFSETS, _TIFF_TILE_COUNTS = 322, 323, 324, 325
_TIFF_EXTRA_SAMPLES, _TIFF_SAMPLE_FORMAT = 338, 339
_TIFF_TAGS = frozenset(
    {
        _TIFF_WIDTH,
        _TIFF_LENGTH,
        _TIFF_BITS,
        _TIFF_PHOTOMETRIC,
        _TIFF_STRIP_OFFSETS,
        _TIFF_SAMPLES,
        _TIFF_STRIP_COUNTS,
        _TIFF_TILE_WIDTH,
        _TIFF_TILE_LENGTH,
        _TIFF_TILE_OFFSETS,
        _TIFF_TILE_COUNTS,
        _TIFF_EXTRA_SAMPLES,
        _TIFF_SAMPLE_FORMAT,
    }
)


def _tiff_ifd(data: bytes) -> dict[int, np.ndarray]:
    """The tags of the first IFD that matter here -> their values (all of them, as an array)."""
    order = "<" if data[:2] == b"II" else ">"
    (magic,) = struct.unpack_from(order + "H", data, 2)
    big = magic == 43  # BigTIFF: 8-byte offsets and counts, 20-byte entries
    (offset,) = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)
    if offset > len(data):  # (struct cannot even seek to a 64-bit offset past the end)
        raise struct.error(f"TIFF IFD at byte {offset}, past the end")
    if big:
        (count,) = struct.unpack_from(order + "Q", data, offset)
        entry_at, entry_size, pointer = offset + 8, 20, "Q"
    else:
        (count,) = struct.unpack_from(order + "H", data, offset)
        entry_at, entry_size, pointer = offset + 2, 12, "I"
    field_at, field_size = 4 + struct.calcsize(pointer), struct.calcsize(pointer)
    tags: dict[int, np.ndarray] = {}
    for i in range(min(count, 4096)):
        base = entry_at + i * entry_size
        tag, kind, number = struct.unpack_from(order + "HH" + pointer, data, base)
        if tag not in _TIFF_TAGS or kind not in _TIFF_TYPES:
            continue
        dtype = np.dtype(order + _TIFF_TYPES[kind])
        where = base + field_at
        if number * dtype.itemsize > field_size:  # the values live elsewhere
            (where,) = struct.unpack_from(order + pointer, data, base + field_at)
        if where + number * dtype.itemsize > len(data):
            raise struct.error(f"TIFF tag {tag} values run past the end")
        tags[tag] = np.frombuffer(data, dtype, count=number, offset=where)
    return tags


def _tiff_header(data: bytes) -> ImageHeader:
    tags = _tiff_ifd(data)
    if len(tags.get(_TIFF_WIDTH, ())) == 0 or len(tags.get(_TIFF_LENGTH, ())) == 0:
        raise ImageRejected(CORRUPT, "TIFF IFD without ImageWidth/ImageLength", data)

    def first(tag: int, default: int) -> int:
        values = tags.get(tag)
        return int(values[0]) if values is not None and len(values) else default

    photometric = first(_TIFF_PHOTOMETRIC, 2)
    extra = {int(v) for v in tags.get(_TIFF_EXTRA_SAMPLES, ())}
    has_alpha = photometric in (0, 1, 2) and bool(extra & {1, 2})  # associated / unassociated
    bits = first(_TIFF_BITS, 1)
    # OpenCV reads 8-bit TIFFs through libtiff's RGBA interface, which premultiplies; wider
    # samples come raw, premultiplied only when the alpha is "associated" (1).
    premultiplied = has_alpha and (bits <= 8 or 1 in extra)
    # IMREAD_COLOR cannot convert 32/64-bit or floating-point samples; IMREAD_UNCHANGED reads
    # them and _to_bgr stretches them to 8 bits.
    wide = bits > 16 or first(_TIFF_SAMPLE_FORMAT, 1) == 3
    tile = (first(_TIFF_TILE_WIDTH, 0), first(_TIFF_TILE_LENGTH, 0))
    return ImageHeader(
        "tiff",
        first(_TIFF_WIDTH, 0),
        first(_TIFF_LENGTH, 0),
        first(_TIFF_SAMPLES, 1),
        has_alpha,
        buffers=(tile,) if all(tile) else (),
        unchanged=wide,
        premultiplied=premultiplied,
    )


def _webp_header(data: bytes) -> ImageHeader:
    chunk = data[12:16]
    if len(chunk) < 4:
        raise struct.error("no WebP chunk")
    if chunk == b"VP8 ":
        start_code = data[23:26]
        if len(start_code) < 3:
            raise struct.error("VP8 frame header cut short")
        if start_code != b"\x9d\x01\x2a":
            raise ImageRejected(CORRUPT, "VP8 frame without its start code", data)
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF, 3)
    if chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        alpha = bool((bits >> 28) & 1)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return ImageHeader("webp", width, height, 4 if alpha else 3, alpha)
    if chunk == b"VP8X":
        if len(data) < 30:
            raise struct.error("VP8X chunk cut short")
        flags = data[20]
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
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
    """Refuse as ``truncated`` what a decoder would accept while inventing missing pixels (or
    reject for want of bytes)."""
    if fmt in ("jpeg", "png", "gif"):
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
    elif fmt == "tiff":
        end = _tiff_data_end(_tiff_ifd(data))
        if end > len(data):
            raise ImageRejected(
                TRUNCATED, f"tiff of {len(data)} bytes has image data up to byte {end}", data
            )


def _tiff_data_end(tags: dict[int, np.ndarray]) -> int:
    """Where the first image's strips (or tiles) end; 0 when the IFD does not say."""
    for offsets_tag, counts_tag in (
        (_TIFF_STRIP_OFFSETS, _TIFF_STRIP_COUNTS),
        (_TIFF_TILE_OFFSETS, _TIFF_TILE_COUNTS),
    ):
        offsets, counts = tags.get(offsets_tag), tags.get(counts_tag)
        if offsets is not None and counts is not None and len(offsets) == len(counts) > 0:
            return int((offsets.astype(np.int64) + counts.astype(np.int64)).max())
    return 0


# The IEND chunk is always these 12 bytes: length 0, type, CRC.
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _has_end_marker(data: bytes, fmt: str) -> bool:
    if fmt == "jpeg":
        try:
            return any(marker == _JPEG_EOI for marker, _ in _jpeg_segments(data))
        except (struct.error, IndexError):
            return False
    if fmt == "png":
        return data.find(_PNG_IEND, 33) != -1
    if fmt == "gif":
        return data.rstrip(b"\x00").endswith(b";")
    return True  # bmp, webp: checked by declared size; tiff: by its strips


# -- EXIF orientation --------------------------------------------------------------------------


def _exif_orientation(data: bytes, fmt: str) -> int:
    """The EXIF Orientation (1-8) of a JPEG, PNG or WebP; 1 when there is none or it is
    unreadable (a broken EXIF block does not make the image undecodable)."""
    try:
        block = _EXIF_BLOCKS[fmt](data) if fmt in _EXIF_BLOCKS else None
        return _orientation_tag(block) if block else 1
    except (struct.error, IndexError):
        return 1


def _jpeg_exif(data: bytes) -> bytes | None:
    for marker, pos in _jpeg_segments(data):
        if marker in (_JPEG_SOS, _JPEG_EOI):
            return None
        if marker == _JPEG_APP1:
            (length,) = struct.unpack_from(">H", data, pos)
            if data[pos + 2 : pos + 8] == b"Exif\x00\x00":
                return data[pos + 8 : pos + length]
    return None  # pragma: no cover - _jpeg_segments ends with EOI or raises


def _png_exif(data: bytes) -> bytes | None:
    """The eXIf chunk, if it comes before the image data (where PNG 1.5 puts it)."""
    for kind, pos, length in _png_chunks_before_idat(data):
        if kind == b"eXIf":
            return data[pos : pos + length]
    return None


def _webp_exif(data: bytes) -> bytes | None:
    """The EXIF chunk of an extended (VP8X) WebP whose EXIF flag is set."""
    if data[12:16] != b"VP8X" or not data[20] & 0x08:
        return None
    pos = 12
    for _ in range(_MAX_SEGMENTS):  # an animation has one chunk per frame; EXIF comes after
        if pos + 8 > len(data):
            return None
        kind = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if kind == b"EXIF":
            block = data[pos + 8 : pos + 8 + size]
            return block.removeprefix(b"Exif\x00\x00")  # some writers keep the JPEG prefix
        pos += 8 + size + (size & 1)
    return None


_EXIF_BLOCKS = {"jpeg": _jpeg_exif, "png": _png_exif, "webp": _webp_exif}


def _orientation_tag(exif: bytes) -> int:
    """Tag 0x0112 of IFD0 in an EXIF block (TIFF structure, either byte order)."""
    order = {b"II": "<", b"MM": ">"}.get(exif[:2])
    if order is None:
        return 1
    (offset,) = struct.unpack_from(order + "I", exif, 4)
    (count,) = struct.unpack_from(order + "H", exif, offset)
    for i in range(min(count, 1024)):
        tag, kind = struct.unpack_from(order + "HH", exif, offset + 2 + 12 * i)
        if tag == 0x0112 and kind == 3:  # SHORT
            (value,) = struct.unpack_from(order + "H", exif, offset + 2 + 12 * i + 8)
            return value if 1 <= value <= 8 else 1
    return 1


def _oriented(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` as a viewer shows them with this EXIF orientation."""
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 3:
        return cv2.rotate(pixels, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return cv2.transpose(pixels)
    if orientation == 6:
        return cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return pixels


def _alpha_as_meant(pixels: np.ndarray, data: bytes, fmt: str) -> np.ndarray:
    """The alpha the format means where OpenCV's unchanged output differs: a gray PNG's tRNS
    colour key becomes an alpha channel (OpenCV expands it for palette and RGB images only);
    a BMP whose alpha is 0 everywhere is opaque (Windows writes such files; viewers show
    them opaque)."""
    if fmt == "png" and pixels.ndim == 2:
        key = _png_gray_key(data)
        if key is not None:
            opaque = np.iinfo(pixels.dtype).max
            alpha = np.where(pixels == key, 0, opaque).astype(pixels.dtype)
            return np.dstack([pixels, pixels, pixels, alpha])
    if fmt == "bmp" and pixels.ndim == 3 and pixels.shape[2] == 4 and not pixels[..., 3].any():
        return pixels[..., :3]
    return pixels


def _png_gray_key(data: bytes) -> int | None:
    """The transparent gray of a gray PNG (colour type 0) with tRNS, as OpenCV decodes it
    (samples of 1, 2 or 4 bits are scaled to 0..255)."""
    depth, colour_type = data[24], data[25]
    if colour_type != 0:
        return None
    for kind, pos, length in _png_chunks_before_idat(data):
        if kind == b"tRNS" and length >= 2:
            (key,) = struct.unpack_from(">H", data, pos)
            return key * (255 // (2**depth - 1)) if depth < 8 else key
    return None


def _to_bgr(pixels: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """An image decoded with IMREAD_UNCHANGED (maybe 16-bit, float, gray or with alpha) ->
    8-bit BGR, alpha composited onto white (``premultiplied``: the colours already are
    multiplied by alpha)."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        # float or 32-bit TIFFs: stretch the finite range to 0..255 (NaN and infinities: 0)
        values = pixels.astype(np.float64)
        finite = np.isfinite(values)
        low, high = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 0.0)
        span = float(high - low) or 1.0
        stretched = np.where(finite, (values - low) * (255.0 / span), 0.0)
        pixels = np.clip(stretched, 0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 1:
        return cv2.cvtColor(pixels[..., 0], cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 2:  # gray + alpha (OpenCV usually expands this to 4 channels)
        gray, alpha = pixels[..., 0], pixels[..., 1]
        pixels = np.dstack([gray, gray, gray, alpha])
    if pixels.shape[2] == 4:
        bgr = pixels[..., :3].astype(np.float32)
        alpha = pixels[..., 3:4].astype(np.float32) / 255.0
        over_white = bgr if premultiplied else bgr * alpha
        return np.clip(over_white + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
    return pixels[..., :3]
