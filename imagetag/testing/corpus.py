"""Generated files in real formats, for the tests and the benches.

- :func:`odd_images`: valid images in the odd forms a real folder of user images holds
  (1-pixel sides, 16 bits, alpha, palettes with transparency, CMYK, every EXIF orientation,
  animations, multi-page, tiled and big-endian TIFF, every BMP depth, trailing data, ...).
  The pipeline must decode and tag every one; :func:`odd_image_sizes` gives the size each
  decodes to (EXIF orientation applied).
- :func:`unsupported_files`: image formats we do not accept (HEIC, AVIF, SVG, JPEG 2000, ...)
  and files that are no image at all, each with the reason the decoder must give.
- :func:`corrupt_files`: truncations, bit flips, wrong magic, zero sizes, header bombs, ...
  each with the reason the decoder must give (``None``: any outcome but an exception).
- :func:`mixed_corpus`: all of those plus small generated images, for stream tests and benches.

Everything is deterministic (fixed seeds, no timestamps in the bytes), so a failure repeats.
The expected reasons assume the default :class:`~imagetag.settings.ImageLimits`.

Pillow is a dev dependency: it is imported inside the functions that use it, so importing this
module stays cheap and the pipeline never needs it. What Pillow cannot write (interlaced or
16-bit gray + alpha PNG, big-endian, tiled or planar TIFF, RLE, 16-bit and V5 BMP, HEIC, PSD,
...) is written here by hand from the format's specification.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from imagetag.images import (
    CORRUPT,
    EMPTY,
    NOT_AN_IMAGE,
    SIDE_TOO_LONG,
    TOO_MANY_PIXELS,
    TRUNCATED,
    UNSUPPORTED_FORMAT,
    ZERO_SIZE,
)

if TYPE_CHECKING:
    from PIL import Image

# What mixed_corpus expects of an item: decoded and tagged (or sent to review), or dead-lettered.
ALIVE = "alive"
DEAD = "dead"

Case = tuple[str, bytes, tuple[int, int]]  # name, bytes, (width, height) as decoded


# -- public API ---------------------------------------------------------------------------------


def odd_images() -> dict[str, bytes]:
    """Name -> bytes of valid images in odd forms; each must decode and go through tagging."""
    return {name: data for name, data, _ in _odd_cases()}


def odd_image_sizes() -> dict[str, tuple[int, int]]:
    """Name -> ``(width, height)`` each :func:`odd_images` entry decodes to (orientation applied)."""
    return {name: size for name, _, size in _odd_cases()}


def unsupported_files() -> dict[str, tuple[bytes, str]]:
    """Name -> (bytes, reason) for formats we refuse: ``unsupported_format`` for an image format
    we recognise but do not decode (the detail names it), ``not_an_image`` for the rest."""
    return dict(_unsupported_cases())


def corrupt_files(seed: int = 0) -> dict[str, tuple[bytes, str | None]]:
    """Name -> (bytes, reason) for damaged files of the supported formats; ``seed`` drives the
    random bytes and bit flips. ``None``: the outcome is not stable (a bit flip may leave a
    decodable image), so any dead reason, or being tagged, is right as long as nothing raises.
    """
    return dict(_corrupt_cases(seed))


def mixed_corpus(
    n: int, seed: int = 0, valid: Callable[[int], bytes] | None = None
) -> list[tuple[str, bytes, str]]:
    """At least ``n`` items ``(name, bytes, expected)``, ``expected`` being :data:`ALIVE` (must
    end tagged or in review) or :data:`DEAD` (must end in the dead-letter topic).

    The first items cycle through :func:`odd_images`, :func:`unsupported_files` and the
    :func:`corrupt_files` with a stable reason, all of them (so there are more than ``n`` when
    ``n`` is small); the rest are small valid images from ``valid(i)``, by default generated ones
    (8 to 200 pixels a side, random shapes and colours, PNG, JPEG, WebP, BMP, GIF or TIFF).
    Names are unique, and so are the bytes (the image id is their sha256 and the stream drops
    duplicate ids): a repeated valid image gets a comment or text chunk with its index.
    Raises ValueError when ``valid`` repeats bytes in a format that cannot carry such a tag.
    """
    alive = [(f"odd_{name}", data, ALIVE) for name, data in odd_images().items()]
    refused = [
        (f"unsupported_{name}", data, DEAD) for name, (data, _) in unsupported_files().items()
    ]
    broken = [
        (f"corrupt_{name}", data, DEAD)
        for name, (data, reason) in corrupt_files(seed).items()
        if reason is not None
    ]
    special: list[tuple[str, bytes, str]] = []
    for i in range(max(len(alive), len(refused), len(broken))):
        special += [group[i] for group in (alive, refused, broken) if i < len(group)]

    make = valid or (lambda i: _small_image(i, seed))
    items = [
        (f"{i:05d}_{name}", data, expected) for i, (name, data, expected) in enumerate(special)
    ]
    seen = {hashlib.sha256(data).digest() for _, data, _ in items}
    if len(seen) != len(items):  # pragma: no cover - the generated sets are distinct by design
        raise AssertionError("the generated corpus repeats bytes")
    for i in range(len(items), n):
        data = make(i)
        if hashlib.sha256(data).digest() in seen:
            data = _tagged(data, f"imagetag corpus item {i}".encode())
        seen.add(hashlib.sha256(data).digest())
        items.append((f"{i:05d}_valid", data, ALIVE))
    return items


# -- pictures -----------------------------------------------------------------------------------


def _scene(width: int, height: int, seed: int) -> np.ndarray:
    """``uint8[height, width, 3]`` RGB: a tilted gradient under a few filled shapes and lines
    (corners and edges, so the detectors find keypoints)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    start = rng.uniform(0, 255, 3)
    slope = rng.uniform(-120, 120, (2, 3))
    gradient = start + xs[..., None] / width * slope[0] + ys[..., None] / height * slope[1]
    canvas = np.ascontiguousarray(np.clip(gradient, 0, 255).astype(np.uint8))
    for _ in range(int(rng.integers(2, 9))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(1, max(width, height) // 3 + 2))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            cv2.rectangle(canvas, (x, y), (x + size, y + size * 2 // 3), colour, -1)
        elif kind == 1:
            cv2.circle(canvas, (x, y), size // 2 + 1, colour, -1)
        else:
            end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(canvas, (x, y), end, colour, int(rng.integers(1, 4)))
    return canvas


def _marked(width: int, height: int) -> np.ndarray:
    """The upright picture of the orientation cases: dark, with a white top-left square.

    On a non-square picture the corner and the size tell all 8 EXIF orientations apart.
    """
    picture = _scene(width, height, seed=11) // 4
    side = max(2, min(width, height) // 3)
    picture[:side, :side] = 255
    return picture


# EXIF orientation -> how to store an upright picture so that a viewer applying that
# orientation shows it upright (the inverse of the viewer's transform; numpy rows first).
_STORED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # viewer mirrors left-right
    3: lambda a: a[::-1, ::-1],  # viewer turns 180°
    4: lambda a: a[::-1],  # viewer mirrors top-bottom
    5: lambda a: a.swapaxes(0, 1),  # viewer transposes
    6: lambda a: np.rot90(a, 1),  # viewer turns 90° clockwise
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # viewer transverses
    8: lambda a: np.rot90(a, -1),  # viewer turns 90° counter-clockwise
}


def _stored(upright: np.ndarray, orientation: int) -> np.ndarray:
    return np.ascontiguousarray(_STORED[orientation](upright))


def _alpha_ramp(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` + an alpha channel going from transparent (left) to opaque (right)."""
    height, width = rgb.shape[:2]
    alpha = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    return np.dstack([rgb, alpha])


# -- encoders -----------------------------------------------------------------------------------


def _image(pixels: np.ndarray) -> Image.Image:
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(pixels))


def _pillow(image: Image.Image | np.ndarray, fmt: str, **params: Any) -> bytes:
    """``image`` (a Pillow image, or an RGB/RGBA/gray array) saved by Pillow as ``fmt``."""
    if isinstance(image, np.ndarray):
        image = _image(image)
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _opencv(ext: str, pixels: np.ndarray, *params: int) -> bytes:
    """``pixels`` (BGR or BGRA, 8 or 16 bits) encoded by OpenCV."""
    ok, encoded = cv2.imencode(ext, pixels, list(params))
    if not ok:  # pragma: no cover - OpenCV encodes every array given here
        raise RuntimeError(f"OpenCV could not encode {ext}")
    return encoded.tobytes()


def _exif(orientation: int) -> Any:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@cache
def _srgb_profile() -> bytes:
    """An sRGB ICC profile (LittleCMS's) without its creation time, so the bytes repeat."""
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = bytes(12)  # creation date and time
    profile[84:100] = bytes(16)  # profile ID (an MD5 over the header): 0 = not computed
    return bytes(profile)


def _palette(pixels: np.ndarray, colours: int) -> Image.Image:
    """``pixels`` (RGB) reduced to a ``colours``-entry palette image (mode P)."""
    from PIL import Image

    return _image(pixels).quantize(colours, dither=Image.Dither.NONE)


# The basic encoder of each supported format, for RGB arrays.
_BASIC: dict[str, Callable[[np.ndarray], bytes]] = {
    "png": lambda rgb: _pillow(rgb, "PNG"),
    "jpeg": lambda rgb: _pillow(rgb, "JPEG", quality=90),
    "gif": lambda rgb: _pillow(_palette(rgb, 64), "GIF"),
    "bmp": lambda rgb: _pillow(rgb, "BMP"),
    "tiff": lambda rgb: _pillow(rgb, "TIFF"),
    "webp": lambda rgb: _pillow(rgb, "WEBP", quality=80),
}


# -- PNG by hand --------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Adam7 passes: first column, first row, column step, row step.
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, body) chunks of a well-formed PNG, up to IEND."""
    chunks, pos = [], len(_PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def _png_join(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return _PNG_SIGNATURE + b"".join(_png_chunk(kind, body) for kind, body in chunks)


def _png_by_hand(samples: np.ndarray, colour_type: int, *, interlaced: bool = False) -> bytes:
    """A PNG of ``samples`` (``uint8`` or ``uint16[h, w, c]``, ``c`` as ``colour_type`` wants),
    every row with filter 0, Adam7-interlaced if asked."""
    height, width = samples.shape[:2]
    big_endian = samples.astype(samples.dtype.newbyteorder(">"))
    raw = b""
    for x0, y0, dx, dy in _ADAM7 if interlaced else ((0, 0, 1, 1),):
        part = big_endian[y0::dy, x0::dx]
        if part.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in part)
    depth = 8 * samples.itemsize
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, int(interlaced))
    return _png_join([(b"IHDR", ihdr), (b"IDAT", zlib.compress(raw, 9)), (b"IEND", b"")])


def _png_resized(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its IHDR declaring ``width`` x ``height`` (CRC recomputed, pixels unchanged)."""
    chunks = _png_chunks(data)
    kind, ihdr = chunks[0]
    chunks[0] = (kind, struct.pack(">II", width, height) + ihdr[8:])
    return _png_join(chunks)


def _png_split_idat(data: bytes, size: int) -> bytes:
    """``data`` with its image data spread over IDAT chunks of ``size`` bytes."""
    chunks = _png_chunks(data)
    stream = b"".join(body for kind, body in chunks if kind == b"IDAT")
    first = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    rest = [chunk for chunk in chunks if chunk[0] != b"IDAT"]
    idats = [(b"IDAT", stream[i : i + size]) for i in range(0, len(stream), size)]
    return _png_join(rest[:first] + idats + rest[first:])


# -- JPEG by hand -------------------------------------------------------------------------------


def _jpeg_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """``jpeg`` with one more segment ``(marker, payload)`` right after SOI."""
    return jpeg[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + jpeg[2:]


def _exif_block(orientation: int, order: str = "<", thumbnail: bytes = b"") -> bytes:
    """An EXIF block (TIFF structure, byte order ``order``) whose IFD0 holds the Orientation;
    with ``thumbnail``, an IFD1 pointing at that embedded JPEG, as cameras write it."""
    mark = b"II" if order == "<" else b"MM"
    entry = struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    ifd0 = struct.pack(order + "H", 1) + entry
    ifd1_at = 8 + len(ifd0) + 4
    if not thumbnail:
        return mark + struct.pack(order + "HI", 42, 8) + ifd0 + struct.pack(order + "I", 0)
    thumbnail_at = ifd1_at + 2 + 2 * 12 + 4
    ifd1 = (
        struct.pack(order + "H", 2)
        + struct.pack(order + "HHII", 0x0201, 4, 1, thumbnail_at)  # JPEGInterchangeFormat
        + struct.pack(order + "HHII", 0x0202, 4, 1, len(thumbnail))  # ...Length
        + struct.pack(order + "I", 0)
    )
    head = mark + struct.pack(order + "HI", 42, 8) + ifd0 + struct.pack(order + "I", ifd1_at)
    return head + ifd1 + thumbnail


def _jpeg_with_exif(jpeg: bytes, exif: bytes) -> bytes:
    return _jpeg_segment(jpeg, 0xE1, b"Exif\x00\x00" + exif)


def _jpeg_without_app0(jpeg: bytes) -> bytes:
    """``jpeg`` without its JFIF APP0 segment (many cameras write none)."""
    if jpeg[2:4] != b"\xff\xe0":  # pragma: no cover - Pillow always writes JFIF first
        return jpeg
    (length,) = struct.unpack_from(">H", jpeg, 4)
    return jpeg[:2] + jpeg[4 + length :]


def _jpeg_resized(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its baseline frame header declaring ``width`` x ``height``."""
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


# -- TIFF by hand -------------------------------------------------------------------------------

_SHORT, _LONG = 3, 4
_TIFF_PACK = {_SHORT: "H", _LONG: "I"}


def _tiff_by_hand(
    pixels: np.ndarray,
    *,
    photometric: int,
    order: str = "<",
    tile: int = 0,
    planar: bool = False,
    declared: tuple[int, int] | None = None,
    declared_tile: tuple[int, int] | None = None,
) -> bytes:
    """An uncompressed TIFF of ``pixels`` (``uint8``/``uint16``, ``[h, w]`` or ``[h, w, c]``).

    One strip, or one per plane when ``planar``, or ``tile``-pixel square tiles. ``declared``
    / ``declared_tile`` override the width x height / tile size written in the IFD (bombs).
    """
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width, samples = pixels.shape
    pixels = pixels.astype(pixels.dtype.newbyteorder(order))
    if planar:
        blocks = [pixels[..., c].tobytes() for c in range(samples)]
    elif tile:
        rows, cols = -(-height // tile) * tile, -(-width // tile) * tile
        padded = np.zeros((rows, cols, samples), pixels.dtype)
        padded[:height, :width] = pixels
        blocks = [
            padded[y : y + tile, x : x + tile].tobytes()
            for y in range(0, rows, tile)
            for x in range(0, cols, tile)
        ]
    else:
        blocks = [pixels.tobytes()]
    offsets, at = [], 8
    for block in blocks:
        offsets.append(at)
        at += len(block)
    counts = [len(block) for block in blocks]
    declared_width, declared_height = declared or (width, height)
    entries: dict[int, tuple[int, list[int]]] = {
        256: (_LONG, [declared_width]),
        257: (_LONG, [declared_height]),
        258: (_SHORT, [8 * pixels.itemsize] * samples),  # BitsPerSample
        259: (_SHORT, [1]),  # Compression: none
        262: (_SHORT, [photometric]),
        277: (_SHORT, [samples]),
        284: (_SHORT, [2 if planar else 1]),  # PlanarConfiguration
    }
    if (photometric, samples) in ((1, 2), (2, 4)):
        entries[338] = (_SHORT, [2])  # ExtraSamples: unassociated alpha
    if tile:
        tile_width, tile_height = declared_tile or (tile, tile)
        entries |= {
            322: (_LONG, [tile_width]),
            323: (_LONG, [tile_height]),
            324: (_LONG, offsets),
            325: (_LONG, counts),
        }
    else:
        entries |= {273: (_LONG, offsets), 278: (_LONG, [height]), 279: (_LONG, counts)}
    return _tiff_file(order, b"".join(blocks), entries)


def _tiff_file(order: str, body: bytes, entries: dict[int, tuple[int, list[int]]]) -> bytes:
    """Header, ``body`` (the pixel blocks, at offset 8), then one IFD and its long values."""
    ifd_at = 8 + len(body) + len(body) % 2  # IFDs start on a word boundary
    values_at = ifd_at + 2 + 12 * len(entries) + 4
    ifd, values = struct.pack(order + "H", len(entries)), b""
    for tag in sorted(entries):
        kind, numbers = entries[tag]
        packed = struct.pack(order + _TIFF_PACK[kind] * len(numbers), *numbers)
        if len(packed) <= 4:
            field = packed.ljust(4, b"\x00")
        else:
            field = struct.pack(order + "I", values_at + len(values))
            values += packed + b"\x00" * (len(packed) % 2)
        ifd += struct.pack(order + "HHI", tag, kind, len(numbers)) + field
    ifd += struct.pack(order + "I", 0)
    mark = b"II" if order == "<" else b"MM"
    header = mark + struct.pack(order + "HI", 42, ifd_at)
    return header + body + b"\x00" * (len(body) % 2) + ifd + values


# -- BMP by hand --------------------------------------------------------------------------------


def _bmp_row(row: np.ndarray, bits: int) -> bytes:
    """One row of indices (1, 4, 8 bits) or RGB(A) pixels (16, 24, 32 bits), padded to 4 bytes."""
    if bits == 1:
        packed = np.packbits(row.astype(bool)).tobytes()
    elif bits == 4:
        even = np.append(row, 0) if len(row) % 2 else row
        packed = ((even[0::2] << 4) | even[1::2]).astype(np.uint8).tobytes()
    elif bits == 8:
        packed = row.astype(np.uint8).tobytes()
    elif bits == 16:  # RGB565
        r, g, b = (row[:, c].astype(np.uint16) for c in range(3))
        packed = (((r >> 3) << 11) | ((g >> 2) << 5) | (b >> 3)).astype("<u2").tobytes()
    elif bits == 24:
        packed = row[:, 2::-1].tobytes()
    else:  # 32: BGRA
        packed = row[:, [2, 1, 0, 3]].tobytes()
    return packed + b"\x00" * (-len(packed) % 4)


def _bmp_rle(rows: np.ndarray, bits: int) -> bytes:
    """RLE8 / RLE4 (encoded runs only): (count, index) pairs, end of line, end of bitmap."""
    out = bytearray()
    for row in rows:
        i = 0
        while i < len(row):
            run = 1
            while i + run < len(row) and run < 255 and row[i + run] == row[i]:
                run += 1
            index = int(row[i])
            out += bytes((run, index if bits == 8 else (index << 4) | index))
            i += run
        out += b"\x00\x00"
    return bytes(out + b"\x00\x01")


def _bmp_by_hand(
    pixels: np.ndarray,
    *,
    bits: int,
    palette: list[tuple[int, int, int]] | None = None,
    rle: bool = False,
    top_down: bool = False,
    header: int = 40,
) -> bytes:
    """A BMP of ``pixels``: ``uint8[h, w]`` palette indices (``bits`` 1, 4, 8; ``rle`` for RLE8 /
    RLE4) or ``uint8[h, w, 3|4]`` RGB(A) (16: RGB565 bit fields, 24, 32: BGRA). ``header``: 12
    (OS/2 core), 40 (info) or 124 (V5, with an alpha mask for 32 bits). Rows bottom-up unless
    ``top_down`` (negative height)."""
    height, width = pixels.shape[:2]
    rows = pixels if top_down else pixels[::-1]
    if rle:
        data, compression = _bmp_rle(rows, bits), {8: 1, 4: 2}[bits]
    else:
        data = b"".join(_bmp_row(row, bits) for row in rows)
        compression = 3 if bits == 16 or (bits == 32 and header == 124) else 0  # BI_BITFIELDS
    entry_size = 3 if header == 12 else 4
    colours = b"".join(bytes((b, g, r, 0)[:entry_size]) for r, g, b in palette or ())
    if header == 12:
        dib = struct.pack("<IHHHH", 12, width, height, 1, bits)
    else:
        dib = struct.pack(
            "<IiiHHIIiiII",
            header,
            width,
            -height if top_down else height,
            1,
            bits,
            compression,
            len(data),
            2835,  # 72 dpi
            2835,
            len(palette or ()),
            0,
        )
        if header == 124:
            masks = struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
            # colour space sRGB, no end points / gammas, intent "images", no profile
            dib += masks + b"BGRs" + bytes(36 + 12) + struct.pack("<IIII", 4, 0, 0, 0)
        elif bits == 16:
            dib += struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    offset = 14 + len(dib) + len(colours)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + dib + colours + data


def _indices(width: int, height: int, colours: int, seed: int) -> np.ndarray:
    """Palette indices in blocks of 4 x 3 pixels (runs for RLE, structure for detectors)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, colours, (-(-height // 3), -(-width // 4)), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(blocks, np.ones((3, 4), np.uint8))[:height, :width])


def _colours(count: int, seed: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(r), int(g), int(b)) for r, g, b in rng.integers(0, 256, (count, 3))]


# -- ISO base media file format (HEIF, AVIF, MP4) -----------------------------------------------


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def _iso_bmff_still(major: bytes, *compatible: bytes) -> bytes:
    """The start of an ISO-BMFF still image (HEIC, HEIF, AVIF): ``ftyp`` with these brands, a
    ``meta`` box whose handler is ``pict``, and a small ``mdat``."""
    ftyp = _box(b"ftyp", major + bytes(4) + b"".join(compatible))
    handler = _box(b"hdlr", bytes(8) + b"pict" + bytes(12) + b"\x00")
    return ftyp + _box(b"meta", bytes(4) + handler) + _box(b"mdat", bytes(range(64)))


# -- odd but valid images -----------------------------------------------------------------------


@cache
def _odd_cases() -> tuple[Case, ...]:
    cases = tuple(_generate_odd())
    names = [name for name, _, _ in cases]
    if len(set(names)) != len(names) or len({data for _, data, _ in cases}) != len(cases):
        raise AssertionError("odd image names and bytes must be unique")  # pragma: no cover
    return cases


def _generate_odd() -> Iterator[Case]:
    yield from _odd_sizes()
    yield from _odd_png()
    yield from _odd_jpeg()
    yield from _odd_orientations()
    yield from _odd_gif()
    yield from _odd_webp()
    yield from _odd_tiff()
    yield from _odd_bmp()


def _odd_sizes() -> Iterator[Case]:
    """1 x 1, 1 x N, N x 1, 2 x 2 and single-colour images in every format; extreme strips."""
    for seed, (fmt, encode) in enumerate(_BASIC.items()):
        for width, height in ((1, 1), (1, 57), (57, 1), (2, 2)):
            yield f"{fmt}_{width}x{height}", encode(_scene(width, height, seed)), (width, height)
        flat = np.full((48, 64, 3), (200, 40 + seed, 30), np.uint8)
        yield f"{fmt}_single_colour", encode(flat), (64, 48)
    # Panorama strips: fitted into a detector's max side they are 1 pixel thick.
    yield "png_3000x2", _BASIC["png"](_scene(3000, 2, 1)), (3000, 2)
    yield "png_2x3000", _BASIC["png"](_scene(2, 3000, 2)), (2, 3000)
    yield "jpeg_1500x3", _BASIC["jpeg"](_scene(1500, 3, 3)), (1500, 3)
    yield "png_all_black", _pillow(np.zeros((30, 40), np.uint8), "PNG"), (40, 30)


def _odd_png() -> Iterator[Case]:
    from PIL import PngImagePlugin

    rgb = _scene(40, 30, 20)
    size = (40, 30)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    ramp16 = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    yield "png_gray8", _pillow(gray, "PNG"), size
    yield "png_gray16", _pillow(ramp16, "PNG"), size
    yield "png_rgb16", _opencv(".png", rgb[..., ::-1].astype(np.uint16) * 257), size
    rgba16 = _alpha_ramp(rgb[..., ::-1]).astype(np.uint16) * 257
    yield "png_rgba16", _opencv(".png", rgba16), size
    yield "png_gray_alpha", _pillow(_image(_alpha_ramp(rgb)).convert("LA"), "PNG"), size
    gray_alpha16 = np.dstack([ramp16, ramp16[:, ::-1]])
    yield "png_gray_alpha16", _png_by_hand(gray_alpha16, colour_type=4), size
    yield "png_rgba", _pillow(_alpha_ramp(rgb), "PNG"), size
    opaque = np.dstack([rgb, np.full((30, 40), 255, np.uint8)])
    yield "png_rgba_opaque_screenshot", _pillow(opaque, "PNG"), size
    clear = np.dstack([rgb, np.zeros((30, 40), np.uint8)])
    yield "png_rgba_fully_transparent", _pillow(clear, "PNG"), size
    yield "png_palette", _pillow(_palette(rgb, 256), "PNG"), size
    yield "png_palette_4bit", _pillow(_palette(rgb, 16), "PNG", bits=4), size
    yield "png_palette_2bit", _pillow(_palette(rgb, 4), "PNG", bits=2), size
    alphas = bytes(np.linspace(0, 255, 16).astype(np.uint8))
    yield "png_palette_trns", _pillow(_palette(rgb, 16), "PNG", transparency=alphas), size
    yield "png_palette_trns_one_index", _pillow(_palette(rgb, 32), "PNG", transparency=0), size
    yield "png_gray_trns", _pillow(gray, "PNG", transparency=int(gray[0, 0])), size
    colour = tuple(int(c) for c in rgb[0, 0])
    yield "png_rgb_trns", _pillow(rgb, "PNG", transparency=colour), size
    yield "png_1bit", _pillow(_image(gray).convert("1"), "PNG"), size
    yield "png_interlaced", _png_by_hand(rgb, colour_type=2, interlaced=True), size
    yield "png_interlaced_rgba16", _png_by_hand(rgba16[..., [2, 1, 0, 3]], 6, interlaced=True), size
    frames = [_image(_scene(40, 30, seed)) for seed in (21, 22, 23)]
    apng = _pillow(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)
    yield "png_apng", apng, size
    acropalypse = _BASIC["png"](rgb) + _BASIC["png"](_scene(80, 60, 24))[200:]
    yield "png_trailing_data", acropalypse, size
    yield "png_many_idat", _png_split_idat(_BASIC["png"](_scene(40, 30, 25)), 64), size
    text = PngImagePlugin.PngInfo()
    text.add_text("Title", "odd")
    text.add_text("Comment", "compressed " * 20, zip=True)
    text.add_itxt("Description", "ünïcödé", lang="de")
    yield "png_text_chunks", _pillow(_scene(40, 30, 26), "PNG", pnginfo=text), size
    yield "png_icc_profile", _pillow(_scene(40, 30, 27), "PNG", icc_profile=_srgb_profile()), size


def _odd_jpeg() -> Iterator[Case]:
    rgb = _scene(40, 30, 30)
    size = (40, 30)
    image = _image(rgb)
    yield "jpeg_gray", _pillow(image.convert("L"), "JPEG"), size
    yield "jpeg_cmyk", _pillow(image.convert("CMYK"), "JPEG"), size
    yield "jpeg_progressive", _pillow(image, "JPEG", progressive=True), size
    yield "jpeg_progressive_gray", _pillow(image.convert("L"), "JPEG", progressive=True), size
    for subsampling, name in ((0, "444"), (1, "422"), (2, "420")):
        yield (
            f"jpeg_{name}",
            _pillow(_scene(40, 30, 31 + subsampling), "JPEG", subsampling=subsampling),
            size,
        )
    yield "jpeg_quality_5", _pillow(_scene(40, 30, 34), "JPEG", quality=5), size
    restart = _opencv(".jpg", _scene(40, 30, 35), cv2.IMWRITE_JPEG_RST_INTERVAL, 1)
    yield "jpeg_restart_markers", restart, size
    yield "jpeg_icc_profile", _pillow(_scene(40, 30, 36), "JPEG", icc_profile=_srgb_profile()), size
    yield "jpeg_comment", _pillow(_scene(40, 30, 37), "JPEG", comment=b"odd corpus"), size
    plain = _pillow(_scene(40, 30, 38), "JPEG")
    yield "jpeg_without_jfif", _jpeg_without_app0(plain), size
    dqt = plain.find(b"\xff\xdb")
    yield "jpeg_fill_bytes", plain[:dqt] + b"\xff\xff\xff" + plain[dqt:], size
    yield "jpeg_extraneous_bytes", plain[:dqt] + b"\x00\x00" + plain[dqt:], size
    # A motion photo: a video (here bytes that hold SOS but no EOI markers) after the EOI.
    video = (
        _box(b"ftyp", b"mp42" + bytes(4) + b"isommp42") + b"\xff\xda\x00\x08" + bytes(range(256))
    )
    yield "jpeg_motion_photo_trailer", _pillow(_scene(40, 30, 39), "JPEG") + video, size
    right = _image(_scene(40, 30, 40))
    yield "jpeg_mpo_stereo", _pillow(image, "MPO", save_all=True, append_images=[right]), size


def _odd_orientations() -> Iterator[Case]:
    """Every EXIF orientation in JPEG; the ones that matter in PNG, WebP, TIFF, with alpha and in
    big-endian EXIF. The upright picture is 40 x 24 with a white top-left square."""
    upright = _marked(40, 24)
    for orientation in range(1, 9):
        size = (40, 24)
        stored = _stored(upright, orientation)
        data = _pillow(stored, "JPEG", quality=95, exif=_exif(orientation))
        yield f"jpeg_exif_orientation_{orientation}", data, size
    turned = _stored(upright, 6)
    big_endian = _jpeg_with_exif(_pillow(turned, "JPEG", quality=95), _exif_block(6, ">"))
    yield "jpeg_exif_big_endian_orientation_6", big_endian, (40, 24)
    thumbnail = _pillow(cv2.resize(turned, (6, 10), interpolation=cv2.INTER_AREA), "JPEG")
    camera = _jpeg_with_exif(_pillow(turned, "JPEG", quality=95), _exif_block(6, "<", thumbnail))
    yield "jpeg_exif_thumbnail_orientation_6", camera, (40, 24)
    yield "png_exif_orientation_6", _pillow(turned, "PNG", exif=_exif(6)), (40, 24)
    alpha = np.full((24, 40), 255, np.uint8)
    alpha[8:16, 16:24] = 0  # a transparent hole in the middle: decoded on the alpha path
    with_alpha = _stored(np.dstack([upright, alpha]), 8)
    yield "png_rgba_exif_orientation_8", _pillow(with_alpha, "PNG", exif=_exif(8)), (40, 24)
    yield "webp_exif_orientation_6", _pillow(turned, "WEBP", quality=95, exif=_exif(6)), (40, 24)
    lossless = _pillow(with_alpha, "WEBP", lossless=True, exif=_exif(8))
    yield "webp_alpha_exif_orientation_8", lossless, (40, 24)
    yield "tiff_orientation_6", _pillow(turned, "TIFF", exif=_exif(6)), (40, 24)
    yield "tiff_orientation_3", _pillow(_stored(upright, 3), "TIFF", exif=_exif(3)), (40, 24)


def _odd_gif() -> Iterator[Case]:
    size = (40, 30)
    frames = [_palette(_scene(40, 30, seed), 64) for seed in (50, 51, 52, 53)]
    animated = _pillow(
        frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0
    )
    yield "gif_animated", animated, size
    # A sprite moving over a transparent background: later frames are small sub-rectangles.
    sprites = []
    for step in range(4):
        canvas = np.zeros((30, 40, 3), np.uint8)
        cv2.circle(canvas, (8 + 8 * step, 15), 6, (255, 200, 0), -1)
        sprites.append(_palette(canvas, 4))
    moving = _pillow(
        sprites[0], "GIF", save_all=True, append_images=sprites[1:], transparency=0, disposal=2
    )
    yield "gif_animated_transparent", moving, size
    yield "gif_transparent", _pillow(_palette(_scene(40, 30, 54), 16), "GIF", transparency=0), size
    yield "gif_interlaced", _pillow(_palette(_scene(40, 30, 55), 64), "GIF", interlace=True), size
    yield (
        "gif_not_interlaced",
        _pillow(_palette(_scene(40, 30, 56), 64), "GIF", interlace=False),
        size,
    )
    gray = _image(_scene(40, 30, 57)).convert("L")
    yield "gif_gray", _pillow(gray, "GIF"), size
    local = [_palette(_scene(40, 30, seed), 8) for seed in (58, 59)]
    yield (
        "gif_local_palettes",
        _pillow(local[0], "GIF", save_all=True, append_images=local[1:]),
        size,
    )
    yield (
        "gif_comment",
        _pillow(_palette(_scene(40, 30, 60), 32), "GIF", comment=b"odd corpus"),
        size,
    )


def _odd_webp() -> Iterator[Case]:
    size = (40, 30)
    rgb = _scene(40, 30, 70)
    yield "webp_lossy", _pillow(rgb, "WEBP", quality=60), size
    yield "webp_lossless", _pillow(_scene(40, 30, 71), "WEBP", lossless=True), size
    yield "webp_lossless_alpha", _pillow(_alpha_ramp(rgb), "WEBP", lossless=True), size
    yield "webp_lossy_alpha", _pillow(_alpha_ramp(_scene(40, 30, 72)), "WEBP", quality=70), size
    frames = [_image(_scene(40, 30, seed)) for seed in (73, 74, 75)]
    animated = _pillow(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)
    yield "webp_animated", animated, size
    clear = [_image(_alpha_ramp(_scene(40, 30, seed))) for seed in (76, 77)]
    animated_alpha = _pillow(
        clear[0], "WEBP", save_all=True, append_images=clear[1:], lossless=True
    )
    yield "webp_animated_alpha", animated_alpha, size
    yield "webp_icc_profile", _pillow(_scene(40, 30, 78), "WEBP", icc_profile=_srgb_profile()), size


def _odd_tiff() -> Iterator[Case]:
    size = (40, 30)
    rgb = _scene(40, 30, 80)
    image = _image(rgb)
    pages = [_image(_scene(w, h, seed)) for seed, (w, h) in enumerate(((64, 64), (20, 10)), 81)]
    yield "tiff_multipage", _pillow(image, "TIFF", save_all=True, append_images=pages), size
    for compression in ("tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg"):
        name = compression.removeprefix("tiff_").removeprefix("adobe_")
        yield f"tiff_{name}", _pillow(_scene(40, 30, 83), "TIFF", compression=compression), size
    ramp16 = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    yield "tiff_gray16", _pillow(ramp16, "TIFF"), size
    yield "tiff_rgb16", _opencv(".tiff", rgb[..., ::-1].astype(np.uint16) * 257), size
    yield "tiff_cmyk", _pillow(image.convert("CMYK"), "TIFF"), size
    yield "tiff_1bit", _pillow(image.convert("1"), "TIFF"), size
    yield "tiff_group4_fax", _pillow(image.convert("1"), "TIFF", compression="group4"), size
    yield "tiff_rgba", _pillow(_alpha_ramp(rgb), "TIFF"), size
    yield "tiff_float32", _pillow(_image(ramp16.astype(np.float32) / 65535), "TIFF"), size
    yield "tiff_palette", _pillow(_palette(rgb, 32), "TIFF"), size
    yield "tiff_bigtiff", _pillow(_scene(40, 30, 84), "TIFF", big_tiff=True), size
    yield "tiff_big_endian", _tiff_by_hand(_scene(40, 30, 85), photometric=2, order=">"), size
    # 32-pixel tiles, 3 x 2 of them, cut at the right and bottom edges (OpenCV's TIFF reader
    # fails on 16-pixel tiles, which are legal but rare).
    yield "tiff_tiled", _tiff_by_hand(_scene(70, 40, 86), photometric=2, tile=32), (70, 40)
    yield "tiff_planar", _tiff_by_hand(_scene(40, 30, 87), photometric=2, planar=True), size


def _odd_bmp() -> Iterator[Case]:
    size = (40, 30)
    rgb = _scene(40, 30, 90)
    image = _image(rgb)
    yield "bmp_1bit", _pillow(image.convert("1"), "BMP"), size
    yield "bmp_4bit", _bmp_by_hand(_indices(40, 30, 16, 91), bits=4, palette=_colours(16, 91)), size
    yield "bmp_8bit_palette", _pillow(_palette(rgb, 200), "BMP"), size
    yield "bmp_8bit_gray", _pillow(image.convert("L"), "BMP"), size
    yield "bmp_16bit_565", _bmp_by_hand(_scene(40, 30, 92), bits=16), size
    yield "bmp_24bit", _pillow(_scene(40, 30, 93), "BMP"), size
    yield "bmp_32bit", _pillow(_alpha_ramp(_scene(40, 30, 94)), "BMP"), size
    rgba = _alpha_ramp(_scene(40, 30, 95))
    yield "bmp_32bit_v5_alpha", _bmp_by_hand(rgba, bits=32, header=124), size
    yield "bmp_top_down", _bmp_by_hand(_scene(40, 30, 96), bits=24, top_down=True), size
    indices, colours = _indices(40, 30, 200, 97), _colours(200, 97)
    yield "bmp_rle8", _bmp_by_hand(indices, bits=8, palette=colours, rle=True), size
    yield (
        "bmp_rle4",
        _bmp_by_hand(_indices(40, 30, 16, 98), bits=4, palette=_colours(16, 98), rle=True),
        size,
    )
    yield "bmp_os2_core_header", _bmp_by_hand(_scene(40, 30, 99), bits=24, header=12), size


# -- formats we refuse --------------------------------------------------------------------------


@cache
def _unsupported_cases() -> tuple[tuple[str, tuple[bytes, str]], ...]:
    return tuple(_generate_unsupported())


def _generate_unsupported() -> Iterator[tuple[str, tuple[bytes, str]]]:
    rgb = _scene(16, 12, 100)
    image, square = _image(rgb), _image(_scene(16, 16, 101))
    svg_body = b'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="12"><rect width="8" height="6"/></svg>\n'
    images = {
        "heic": _iso_bmff_still(b"heic", b"mif1", b"heic"),
        "heic_sequence": _iso_bmff_still(b"hevc", b"msf1", b"hevc"),
        "heif_mif1": _iso_bmff_still(b"mif1", b"mif1", b"miaf"),
        "avif_by_hand": _iso_bmff_still(b"avif", b"avif", b"mif1", b"miaf"),
        "avif_mif1_brand": _iso_bmff_still(b"mif1", b"avif", b"mif1"),
        "avif_pillow": _pillow(image, "AVIF"),
        "svg": svg_body,
        "svg_xml_declaration": b'<?xml version="1.0" encoding="UTF-8"?>\n' + svg_body,
        "svg_doctype_comment_bom": (
            b"\xef\xbb\xbf\n  <?xml version='1.0'?>\n<!-- drawn by hand -->\n"
            b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
            b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n' + svg_body
        ),
        "svg_namespace_prefix": b'<svg:svg xmlns:svg="http://www.w3.org/2000/svg"/>',
        "ico": _pillow(square, "ICO", sizes=[(16, 16)]),
        "cur": b"\x00\x00\x02\x00" + _pillow(square, "ICO", sizes=[(16, 16)])[4:],
        "icns": _pillow(image, "ICNS"),
        "jpeg2000_jp2": _pillow(image, "JPEG2000"),
        "jpeg2000_codestream": _pillow(image, "JPEG2000", no_jp2=True),
        "jpeg_xl_codestream": b"\xff\x0a\xfa\x7f\x01\x90\x08\x06\x01\x00\x48\x01\x00\x12"
        + bytes(32),
        "jpeg_xl_container": (
            b"\x00\x00\x00\x0cJXL \r\n\x87\n" + _box(b"ftyp", b"jxl " + bytes(4) + b"jxl ")
        ),
        "jpeg_xr": b"II\xbc\x01" + struct.pack("<I", 32) + bytes(40),
        "psd": _psd(rgb),
        "qoi": _pillow(image, "QOI"),
        "netpbm_ppm": _pillow(image, "PPM"),
        "netpbm_pgm": _pillow(image.convert("L"), "PPM"),
        "netpbm_pbm": _pillow(image.convert("1"), "PPM"),
        "tga": _pillow(image, "TGA"),
        "dds": _pillow(image, "DDS"),
        "openexr": b"v/1\x01\x02\x00\x00\x00channels\x00chlist\x00" + bytes(32),
        "radiance_hdr": b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 12 +X 16\n" + bytes(64),
        "gimp_xcf": b"gimp xcf v011\x00" + struct.pack(">III", 16, 12, 0) + bytes(32),
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 12\nnewpath 0 0 moveto\n",
        "eps_dos_binary": b"\xc5\xd0\xd3\xc6" + struct.pack("<IIIIIIH", 30, 20, 0, 0, 0, 0, 0xFFFF),
        "wmf_placeable": b"\xd7\xcd\xc6\x9a" + bytes(18),
        "mng": b"\x8aMNG\r\n\x1a\n"
        + _png_chunk(b"MHDR", struct.pack(">IIIIIII", 16, 12, 1, 0, 0, 0, 1)),
        "jng": b"\x8bJNG\r\n\x1a\n"
        + _png_chunk(b"JHDR", struct.pack(">IIBBBBBBBB", 16, 12, 10, 8, 8, 0, 8, 0, 0, 0)),
        "bpg": b"BPG\xfb" + bytes(16),
    }
    for name, data in images.items():
        yield name, (data, UNSUPPORTED_FORMAT)

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(
            zipfile.ZipInfo("photo.jpg", date_time=(2020, 1, 1, 0, 0, 0)), _BASIC["jpeg"](rgb)
        )
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w") as tar:
        member = tarfile.TarInfo("photo.png")
        png = _BASIC["png"](rgb)
        member.size, member.mtime = len(png), 0
        tar.addfile(member, io.BytesIO(png))
    riff = b"RIFF" + struct.pack("<I", 36)
    others = {
        "text": b"hello world, this is not an image\n",
        "text_utf16": "a note, not an image".encode("utf-16"),
        "html": b"<!DOCTYPE html>\n<html><body><p>hello</p></body></html>\n",
        "html_with_inline_svg": b'<html><body><svg width="10" height="10"></svg></body></html>',
        "xml_not_svg": b'<?xml version="1.0"?>\n<rss version="2.0"><channel/></rss>\n',
        "json": b'{"image": "photo.jpg", "width": 16}\n',
        "csv": b"path,label\nphoto.jpg,cat\n",
        "pdf": (
            b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
            b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
        ),
        "postscript": b"%!PS-Adobe-3.0\n%%Pages: 1\nshowpage\n",
        "zip": archive.getvalue(),
        "gzip": gzip.compress(b"not an image" * 10, mtime=0),
        "bzip2": bz2.compress(b"not an image" * 10),
        "tar": tarred.getvalue(),
        "seven_zip": b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(24),
        "mp4_video": _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2avc1mp41")
        + _box(b"moov", bytes(16)),
        "quicktime_video": _box(b"ftyp", b"qt  " + bytes(4) + b"qt  ") + _box(b"mdat", bytes(16)),
        "wav_audio": riff
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 8000, 1, 8)
        + b"data"
        + bytes(4),
        "avi_video": riff + b"AVI LIST" + bytes(24),
        "mp3_audio": b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" + bytes(32),
        "ogg_audio": b"OggS\x00\x02" + bytes(26),
        "elf_binary": b"\x7fELF\x02\x01\x01\x00" + bytes(56),
        "windows_exe": b"MZ\x90\x00\x03\x00\x00\x00" + bytes(56),
        "sqlite": b"SQLite format 3\x00" + bytes(84),
        "avro_container": b"Obj\x01" + bytes(16),
        "avro_single_object": b"\xc3\x01" + bytes(8) + b"\x02id",
        "zeros": bytes(64),
        "whitespace": b" \n\t\r\n  ",
        "one_byte": b"\x89",
    }
    for name, data in others.items():
        yield name, (data, NOT_AN_IMAGE)


def _psd(rgb: np.ndarray) -> bytes:
    """A raw (uncompressed) 8-bit RGB Photoshop document: header, three empty sections, planes."""
    height, width = rgb.shape[:2]
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers
    planes = b"".join(rgb[..., c].tobytes() for c in range(3))
    return header + sections + struct.pack(">H", 0) + planes


# -- corrupt files ------------------------------------------------------------------------------


def _corrupt_cases(seed: int) -> Iterator[tuple[str, tuple[bytes, str | None]]]:
    rng = np.random.default_rng(seed)
    bases = _corrupt_bases()
    yield "empty", (b"", EMPTY)
    for length in (1, 2, 15, 16, 17, 100, 4096):
        yield f"random_{length}_bytes", (b"\x01" + rng.bytes(length - 1), NOT_AN_IMAGE)
    for fmt, data in bases.items():
        magic = {"png": 8, "jpeg": 3, "gif": 6, "bmp": 16, "tiff": 4}.get(fmt, 12)
        yield f"{fmt}_magic_only", (data[:magic], TRUNCATED)
        yield f"{fmt}_cut_in_header", (data[: magic + 6], TRUNCATED)
        for fraction in (4, 2):
            yield f"{fmt}_cut_at_1_{fraction}", (data[: len(data) // fraction], TRUNCATED)
        yield f"{fmt}_cut_at_3_4", (data[: len(data) * 3 // 4], TRUNCATED)
        yield f"{fmt}_last_byte_missing", (data[:-1], TRUNCATED)
        yield f"{fmt}_wrong_magic", (_wrong_magic(fmt, data), NOT_AN_IMAGE)
        for flips in (1, 8, 64):
            yield f"{fmt}_{flips}_bit_flips", (_flip_bits(data, flips, rng), None)
        yield f"{fmt}_random_body", (data[:magic] + rng.bytes(len(data) - magic), None)
    yield from _zero_sizes(bases)
    yield from _bombs(bases)
    yield from _broken_structure(bases, rng)


@cache
def _corrupt_bases() -> dict[str, bytes]:
    """One valid 64 x 48 file per format the corrupt cases damage."""
    rgb = _scene(64, 48, 200)
    bases = {fmt: encode(rgb) for fmt, encode in _BASIC.items()}
    bases["webp_lossless"] = _pillow(rgb, "WEBP", lossless=True)
    bases["webp_extended"] = _pillow(_alpha_ramp(rgb), "WEBP", quality=80)  # VP8X + ALPH
    return bases


def _wrong_magic(fmt: str, data: bytes) -> bytes:
    first = {"png": b"\x88", "jpeg": b"\xfe", "gif": b"J", "bmp": b"C", "tiff": b"J"}
    if fmt in first:
        return first[fmt] + data[1:]
    return data[:8] + b"WEBQ" + data[12:]


def _flip_bits(data: bytes, count: int, rng: np.random.Generator) -> bytes:
    """``data`` with ``count`` random bits flipped after the signature (so it still sniffs)."""
    flipped = bytearray(data)
    for position in rng.integers(16, len(data) * 8 - 1, count):
        flipped[position // 8] ^= 1 << (position % 8)
    return bytes(flipped)


def _zero_sizes(bases: dict[str, bytes]) -> Iterator[tuple[str, tuple[bytes, str]]]:
    yield "png_zero_width", (_png_resized(bases["png"], 0, 48), ZERO_SIZE)
    yield "png_zero_height", (_png_resized(bases["png"], 64, 0), ZERO_SIZE)
    yield "jpeg_zero_height", (_jpeg_resized(bases["jpeg"], 64, 0), ZERO_SIZE)
    yield "jpeg_zero_width", (_jpeg_resized(bases["jpeg"], 0, 48), ZERO_SIZE)
    gif = bytearray(bases["gif"])
    struct.pack_into("<HH", gif, 6, 0, 0)
    yield "gif_zero_size", (bytes(gif), ZERO_SIZE)
    bmp = bytearray(bases["bmp"])
    struct.pack_into("<i", bmp, 18, 0)
    yield "bmp_zero_width", (bytes(bmp), ZERO_SIZE)
    tiff = _tiff_by_hand(_scene(8, 6, 201), photometric=2, declared=(8, 0))
    yield "tiff_zero_height", (tiff, ZERO_SIZE)
    webp = bytearray(bases["webp"])  # VP8 (lossy): 14-bit sizes after the start code
    struct.pack_into("<H", webp, 26, 0)
    yield "webp_zero_width", (bytes(webp), ZERO_SIZE)


def _bombs(bases: dict[str, bytes]) -> Iterator[tuple[str, tuple[bytes, str]]]:
    """Tiny files declaring huge images: a side over 20,000 or over 40 million pixels."""
    for name, (width, height), reason in (
        ("side", (100_000, 100_000), SIDE_TOO_LONG),
        ("pixels", (19_000, 19_000), TOO_MANY_PIXELS),
    ):
        yield f"png_bomb_{name}", (_png_resized(bases["png"], width, height), reason)
        small = _scene(8, 6, 202)
        yield (
            f"tiff_bomb_{name}",
            (_tiff_by_hand(small, photometric=2, declared=(width, height)), reason),
        )
        bmp = bytearray(bases["bmp"])
        struct.pack_into("<ii", bmp, 18, width, height)
        yield f"bmp_bomb_{name}", (bytes(bmp), reason)
        webp = bytearray(bases["webp_extended"])  # VP8X canvas: 24-bit sizes minus one
        webp[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        yield f"webp_extended_bomb_{name}", (bytes(webp), reason)
    # 16-bit sizes (JPEG, GIF) and 14-bit ones (WebP VP8 / VP8L) cannot reach 100,000.
    for name, side, reason in (
        ("side", 65_535, SIDE_TOO_LONG),
        ("pixels", 19_000, TOO_MANY_PIXELS),
    ):
        yield f"jpeg_bomb_{name}", (_jpeg_resized(bases["jpeg"], side, side), reason)
        progressive = _pillow(_scene(16, 16, 203), "JPEG", progressive=True)
        sof2 = bytearray(progressive)
        struct.pack_into(">HH", sof2, sof2.find(b"\xff\xc2") + 5, side, side)
        yield f"jpeg_progressive_bomb_{name}", (bytes(sof2), reason)
        gif = bytearray(bases["gif"])
        struct.pack_into("<HH", gif, 6, side, side)
        yield f"gif_bomb_{name}", (bytes(gif), reason)
    vp8 = bytearray(bases["webp"])
    struct.pack_into("<HH", vp8, 26, 16_383, 16_383)
    yield "webp_lossy_bomb_pixels", (bytes(vp8), TOO_MANY_PIXELS)
    vp8l = bytearray(bases["webp_lossless"])
    (bits,) = struct.unpack_from("<I", vp8l, 21)
    struct.pack_into("<I", vp8l, 21, (bits & ~0x0FFFFFFF) | 16_383 | (16_383 << 14))
    yield "webp_lossless_bomb_pixels", (bytes(vp8l), TOO_MANY_PIXELS)
    # A small canvas whose first frame (GIF) or tile (TIFF) is what the decoder allocates.
    gif = bytearray(bases["gif"])
    descriptor = _gif_first_descriptor(bytes(gif))
    struct.pack_into("<HH", gif, descriptor + 5, 60_000, 60_000)
    yield "gif_frame_bomb", (bytes(gif), SIDE_TOO_LONG)
    small = _scene(8, 6, 204)
    for name, tile, reason in (
        ("side", 65_536, SIDE_TOO_LONG),
        ("pixels", 16_384, TOO_MANY_PIXELS),
    ):
        tiled = _tiff_by_hand(small, photometric=2, tile=16, declared_tile=(tile, tile))
        yield f"tiff_tile_bomb_{name}", (tiled, reason)


def _gif_first_descriptor(data: bytes) -> int:
    """Offset of the first image descriptor (0x2C) of a GIF written by Pillow."""
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[pos] == 0x21:  # extensions: introducer, label, sub-blocks
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    return pos


def _broken_structure(
    bases: dict[str, bytes], rng: np.random.Generator
) -> Iterator[tuple[str, tuple[bytes, str | None]]]:
    png = bases["png"]
    chunks = _png_chunks(png)
    yield "png_first_chunk_not_ihdr", (_png_join([(b"tEXt", b"a\x00b"), *chunks]), CORRUPT)
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # IHDR's CRC
    yield "png_bad_ihdr_crc", (bytes(bad_crc), CORRUPT)
    garbage = [(kind, rng.bytes(len(body)) if kind == b"IDAT" else body) for kind, body in chunks]
    yield "png_idat_garbage", (_png_join(garbage), CORRUPT)
    yield "jpeg_without_frame", (b"\xff\xd8\xff\xfe\x00\x04hi\xff\xd9", CORRUPT)
    yield "jpeg_scan_before_frame", (b"\xff\xd8\xff\xda\x00\x02" + bytes(8) + b"\xff\xd9", CORRUPT)
    jpeg = bases["jpeg"]
    sos = jpeg.find(b"\xff\xda")
    scan = sos + 2 + struct.unpack_from(">H", jpeg, sos + 2)[0]
    noise = rng.bytes(len(jpeg) - scan - 2).replace(b"\xff", b"\x00")
    yield "jpeg_scan_garbage", (jpeg[:scan] + noise + b"\xff\xd9", None)
    yield "jpeg_magic_then_text", (b"\xff\xd8\xff" + b"hello, not a jpeg at all" * 4, None)
    no_colour_table = bases["gif"][:10] + b"\x00\x00\x00"
    yield "gif_without_image", (no_colour_table + b";", CORRUPT)
    webp = bases["webp"]
    yield "webp_unknown_chunk", (webp[:12] + b"XXXX" + webp[16:], CORRUPT)
    yield "webp_vp8_without_start_code", (webp[:23] + b"\x00\x00\x00" + webp[26:], CORRUPT)
    bmp = bytearray(bases["bmp"])
    struct.pack_into("<H", bmp, 28, 7)  # 7 bits per pixel
    yield "bmp_bad_bit_count", (bytes(bmp), CORRUPT)
    tiff = _tiff_by_hand(_scene(8, 6, 205), photometric=2)
    yield "tiff_ifd_outside_file", (tiff[:4] + struct.pack("<I", 1 << 30) + tiff[8:], TRUNCATED)
    # Decoding-time bombs: a scan repeated past the decoder's limit; 70,000 empty comments.
    progressive = _pillow(_scene(16, 16, 206), "JPEG", progressive=True)
    last_scan = progressive.rfind(b"\xff\xda")
    scan = progressive[last_scan:-2]
    yield "jpeg_too_many_scans", (progressive[:-2] + scan * 1001 + b"\xff\xd9", CORRUPT)
    comments = b"\xff\xfe\x00\x02" * 70_000
    yield "jpeg_too_many_segments", (progressive[:2] + comments + progressive[2:], CORRUPT)


# -- mixed corpus -------------------------------------------------------------------------------

_SMALL_FORMATS = ("png", "jpeg", "webp", "bmp", "gif", "tiff")


def _small_image(index: int, seed: int) -> bytes:
    """A valid generated image, 8 to 200 pixels a side, in one of the supported formats."""
    rng = np.random.default_rng([seed, index])
    width, height = (int(side) for side in rng.integers(8, 201, 2))
    fmt = _SMALL_FORMATS[int(rng.integers(0, len(_SMALL_FORMATS)))]
    return _BASIC[fmt](_scene(width, height, int(rng.integers(0, 2**31))))


def _tagged(data: bytes, text: bytes) -> bytes:
    """``data`` (a valid image) made distinct by ``text`` in metadata the decoders ignore."""
    if data.startswith(_PNG_SIGNATURE):
        chunks = _png_chunks(data)
        return _png_join([*chunks[:-1], (b"tEXt", b"Comment\x00" + text), chunks[-1]])
    if data.startswith(b"\xff\xd8"):
        return _jpeg_segment(data, 0xFE, text)  # COM
    if data.startswith((b"GIF87a", b"GIF89a")):
        flags = data[10]
        end = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        comment = b"\x21\xfe" + bytes([len(text[:255])]) + text[:255] + b"\x00"
        return b"GIF89a" + data[6:end] + comment + data[end:]
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        chunk = b"ZZZZ" + struct.pack("<I", len(text)) + text + b"\x00" * (len(text) % 2)
        body = data[8:] + chunk
        return b"RIFF" + struct.pack("<I", len(body)) + body
    if data.startswith((b"BM", b"II", b"MM")):  # BMP and TIFF read by offsets: trailing bytes
        return data + text
    raise ValueError(f"cannot make a repeated image distinct (starts with {data[:8]!r})")
