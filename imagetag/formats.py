"""Image formats, recognised by their magic bytes (never by a file name).

:func:`sniff_format` names the formats we accept; :func:`identify_unsupported` names image
formats we recognise but do not accept (HEIC, AVIF, SVG, JPEG 2000, ...), so a refusal can
say which format came instead of just "not an image". Pure functions, no I/O: the producer
checks bytes before sending, the decoder checks them before handing them to OpenCV.
"""

from __future__ import annotations

import re

# The one table of the image formats we accept: format -> (MIME type, file suffixes; the
# first is the one we write). Everything else derives from it.
_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "jpeg": ("image/jpeg", (".jpg", ".jpeg")),
    "png": ("image/png", (".png",)),
    "gif": ("image/gif", (".gif",)),
    "bmp": ("image/bmp", (".bmp",)),
    "tiff": ("image/tiff", (".tif", ".tiff")),
    "webp": ("image/webp", (".webp",)),
}

# format -> MIME type (the ``content_type`` of an ImageEvent)
CONTENT_TYPES: dict[str, str] = {fmt: mime for fmt, (mime, _) in _FORMATS.items()}
SUPPORTED_FORMATS: frozenset[str] = frozenset(CONTENT_TYPES)
# MIME type -> the suffix a file of it is written with
SUFFIXES: dict[str, str] = {mime: suffixes[0] for mime, suffixes in _FORMATS.values()}
# every suffix (lower case) an image file of a supported format may have
IMAGE_SUFFIXES: frozenset[str] = frozenset(x for _, suffixes in _FORMATS.values() for x in suffixes)

# Shortest prefix that sniff_format needs to decide (RIFF....WEBP is the longest).
SNIFF_BYTES = 16
# What identify_unsupported looks at: an SVG's root element may follow an XML declaration,
# comments and a DOCTYPE; an ISO-BMFF ``ftyp`` box lists its brands. (A TGA's footer is at the
# end of the file, and is looked at there.)
IDENTIFY_BYTES = 4096

_PNG = b"\x89PNG\r\n\x1a\n"
_BMP_INFO_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


def sniff_format(data: bytes | bytearray | memoryview) -> str | None:
    """The image format of ``data`` from its leading magic bytes, or None if not one we accept.

    Returns one of ``"jpeg"``, ``"png"``, ``"gif"``, ``"bmp"``, ``"tiff"`` (BigTIFF included),
    ``"webp"``. Only the first :data:`SNIFF_BYTES` bytes are looked at; a truncated body still
    sniffs as its format (the decoder finds out later). Never raises.
    """
    head = bytes(data[:SNIFF_BYTES])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_PNG):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    # "BM" alone is too weak (any text starting with BM would pass): also require the
    # reserved fields to be zero and a known DIB header size.
    if head.startswith(b"BM") and len(head) >= 16:
        reserved = head[6:10]
        dib_size = int.from_bytes(head[14:16], "little")
        if reserved == b"\x00\x00\x00\x00" and dib_size in _BMP_INFO_HEADER_SIZES:
            return "bmp"
    return None


def content_type(fmt: str) -> str:
    """MIME type for a format name from :func:`sniff_format`; KeyError for an unknown one."""
    return CONTENT_TYPES[fmt]


# -- formats we recognise but do not accept ------------------------------------------------------

# Leading magic bytes -> the format's usual name (checked in order; none is a prefix of a
# supported format's magic).
_UNSUPPORTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),  # JP2 signature box
    (b"\xff\x4f\xff\x51", "JPEG 2000"),  # raw codestream: SOC then SIZ
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),  # container
    (b"\xff\x0a", "JPEG XL"),  # raw codestream
    (b"II\xbc", "JPEG XR"),
    (b"8BPS", "PSD"),
    (b"qoif", "QOI"),
    (b"icns", "ICNS"),
    (b"DDS ", "DDS"),
    (b"v/1\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"#?RGBE", "Radiance HDR"),
    (b"gimp xcf ", "XCF"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),  # DOS EPS binary header
    (b"\xd7\xcd\xc6\x9a", "WMF"),  # placeable metafile
    (b"\x8aMNG\r\n\x1a\n", "MNG"),
    (b"\x8bJNG\r\n\x1a\n", "JNG"),
    (b"BPG\xfb", "BPG"),
    (b"FLIF", "FLIF"),
)
# ISO-BMFF brands (ftyp major or compatible) of still-image formats, most specific first.
_BMFF_BRANDS: tuple[tuple[frozenset[bytes], str], ...] = (
    (frozenset({b"avif", b"avis"}), "AVIF"),
    (frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}), "HEIC"),
    (frozenset({b"mif1", b"mif2", b"msf1", b"miaf"}), "HEIF"),
)
# SVG: the root element, after an optional BOM, XML declaration, comments, DOCTYPE, PIs.
_XML_PROLOG_ITEM = re.compile(rb"\s*(<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^\[>]*(\[.*?\])?\s*>)", re.S)
_SVG_ROOT = re.compile(rb"\s*<([A-Za-z_][\w.-]*:)?svg[\s/>]")
_NETPBM = re.compile(rb"P[1-7]\s")
_TGA_FOOTER = b"TRUEVISION-XFILE.\x00"


def identify_unsupported(data: bytes | bytearray | memoryview) -> str | None:
    """The name of the image format of ``data`` when it is one we recognise but do not accept
    (``"HEIC"``, ``"HEIF"``, ``"AVIF"``, ``"SVG"``, ``"JPEG 2000"``, ``"JPEG XL"``, ``"PSD"``,
    ``"ICO"``, ``"TGA"``, ...), else None (a supported format, or not an image at all).

    Looks at the first :data:`IDENTIFY_BYTES` bytes (and a TGA's 18-byte footer). Never raises.
    """
    if sniff_format(data) is not None:
        return None
    head = bytes(data[:IDENTIFY_BYTES])
    for magic, name in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return _iso_bmff_image(head)
    # ICONDIR: reserved 0, type 1 (icon) or 2 (cursor), at least one image, whose entry's
    # reserved byte is 0.
    icon = head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00") and len(head) >= 22
    if icon and head[4:6] != b"\x00\x00" and head[9] == 0:
        return "ICO" if head[2] == 1 else "CUR"
    if head.startswith(b"%!PS-Adobe-") and b"EPSF" in head.split(b"\n", 1)[0]:
        return "EPS"
    if _NETPBM.match(head):
        return "Netpbm"
    if _is_svg(head):
        return "SVG"
    if bytes(data[-len(_TGA_FOOTER) :]) == _TGA_FOOTER:
        return "TGA"
    return None


def _iso_bmff_image(head: bytes) -> str | None:
    """HEIC / HEIF / AVIF from the brands of a leading ``ftyp`` box; None for video (MP4, MOV)."""
    size = int.from_bytes(head[:4], "big")
    end = min(size if size >= 16 else 16, len(head))
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    for family, name in _BMFF_BRANDS:
        if brands & family:
            return name
    return None


def _is_svg(head: bytes) -> bool:
    text = head.removeprefix(b"\xef\xbb\xbf")
    pos = 0
    while item := _XML_PROLOG_ITEM.match(text, pos):
        pos = item.end()
    return _SVG_ROOT.match(text, pos) is not None
