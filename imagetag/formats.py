"""Image formats we accept, recognised by their magic bytes (never by a file name).

Pure functions, no I/O: the producer checks bytes before sending, the decoder checks them
before handing them to OpenCV.
"""

from __future__ import annotations

# format -> MIME type (the ``content_type`` of an ImageEvent)
CONTENT_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "webp": "image/webp",
}

SUPPORTED_FORMATS: frozenset[str] = frozenset(CONTENT_TYPES)

# Shortest prefix that sniff_format needs to decide (RIFF....WEBP is the longest).
SNIFF_BYTES = 16

_PNG = b"\x89PNG\r\n\x1a\n"
_BMP_INFO_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


def sniff_format(data: bytes | bytearray | memoryview) -> str | None:
    """The image format of ``data`` from its leading magic bytes, or None if not one we accept.

    Returns one of ``"jpeg"``, ``"png"``, ``"gif"``, ``"bmp"``, ``"tiff"``, ``"webp"``. Only the
    first :data:`SNIFF_BYTES` bytes are looked at; a truncated body still sniffs as its format
    (the decoder finds out later). Never raises.
    """
    head = bytes(data[:SNIFF_BYTES])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_PNG):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
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
