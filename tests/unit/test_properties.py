"""Property-based tests (hypothesis): whatever the bytes, decoding and the per-record steps work
or refuse with an ImageRejected that keeps the bytes; tag_batch and tag_kafka_rows give every
input row exactly one output row, keep the bytes of what they dead-letter, and never raise.

Inputs: pictures from 1 x 1 to 300 x 300, 1/3/4 channels, 8/16 bits, through every OpenCV and
Pillow encoder of the supported formats; mutations of those (truncation, bit flips, wrong magic,
inserted or overwritten bytes); random bytes behind a supported magic; the generated corpus.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import cv2
import numpy as np
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from imagetag.avro import AvroDeserializer
from imagetag.errors import RecordError
from imagetag.features import dominant_colors, get_featurizer, phash_hex
from imagetag.formats import identify_unsupported, sniff_format
from imagetag.images import REASONS, DecodedImage, ImageRejected, decode_image, make_thumbnail
from imagetag.records import tag_kafka_rows
from imagetag.settings import ImageLimits
from imagetag.tagging import tag_batch
from imagetag.testing.corpus import corrupt_files, odd_images, unsupported_files
from tests.unit.test_records import SETTINGS, _event, _rows
from tests.unit.test_tagging import _events, _model

LIMITS = ImageLimits()
FEATURIZERS = [get_featurizer(name) for name in ("sift", "orb", "dense-sift")]
MODEL = _model()
ODD = list(odd_images().values())
CORPUS = [
    *ODD,
    *(data for data, _ in unsupported_files().values()),
    *(data for data, _ in corrupt_files().values()),
]
MAGICS = [
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"RIFF\x00\x01\x00\x00WEBPVP8L",
    b"RIFF\x00\x01\x00\x00WEBPVP8X",
]

PROPERTY = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- pictures and their encodings ---------------------------------------------------------------


@st.composite
def pictures(draw: st.DrawFn, max_side: int = 300) -> np.ndarray:
    """``uint8`` or ``uint16`` arrays, ``[h, w]`` or ``[h, w, 3|4]`` (BGR / BGRA), 1 pixel and up."""
    side = st.one_of(st.integers(1, 8), st.integers(1, max_side))
    height, width = draw(side), draw(side)
    channels = draw(st.sampled_from([1, 3, 4]))
    wide = draw(st.booleans())
    kind = draw(st.sampled_from(["noise", "flat", "gradient", "blocks"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = 65535 if wide else 255
    shape = (height, width, channels)
    if kind == "noise":
        values = rng.integers(0, top + 1, shape)
    elif kind == "flat":
        values = np.broadcast_to(rng.integers(0, top + 1, channels), shape)
    elif kind == "gradient":
        ramp = np.linspace(0, top, width)[None, :, None] * rng.random(channels)
        values = np.broadcast_to(ramp, shape)
    else:
        cells = rng.integers(0, top + 1, (-(-height // 4), -(-width // 4), channels))
        values = cells.repeat(4, axis=0).repeat(4, axis=1)[:height, :width]
    pixels = np.ascontiguousarray(values, dtype=np.uint16 if wide else np.uint8)
    return pixels[..., 0] if channels == 1 else pixels


def _eight_bits(pixels: np.ndarray) -> np.ndarray:
    return (pixels >> 8).astype(np.uint8) if pixels.dtype == np.uint16 else pixels


def _bgr(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    return pixels[..., :3]


def _opencv(ext: str, pixels: np.ndarray, *params: int) -> bytes:
    ok, encoded = cv2.imencode(ext, pixels, list(params))
    assert ok, ext
    return encoded.tobytes()


def _opencv_jpeg(pixels: np.ndarray, option: int) -> bytes:
    eight = _eight_bits(pixels)
    return _opencv(
        ".jpg",
        eight if eight.ndim == 2 else eight[..., :3],
        cv2.IMWRITE_JPEG_QUALITY,
        option % 101,
        cv2.IMWRITE_JPEG_PROGRESSIVE,
        option % 2,
    )


def _opencv_webp(pixels: np.ndarray, option: int) -> bytes:
    eight = _eight_bits(pixels)
    colour = eight if eight.ndim == 3 else _bgr(eight)
    return _opencv(".webp", colour, cv2.IMWRITE_WEBP_QUALITY, 1 + option % 101)  # 101: lossless


def _opencv_gif(pixels: np.ndarray, option: int) -> bytes:
    eight = _eight_bits(pixels)  # OpenCV's GIF encoder wants 3 or 4 channels
    return _opencv(".gif", eight if eight.ndim == 3 else _bgr(eight))


def _pillow(fmt: str, modes: tuple[str, ...]) -> Callable[[np.ndarray, int], bytes]:
    """A Pillow encoder for ``fmt``; ``option`` picks the mode (one of ``modes``) and the
    format's parameters."""

    def encode(pixels: np.ndarray, option: int) -> bytes:
        from PIL import Image

        mode = modes[option % len(modes)]
        if mode == "I;16":  # 16-bit gray
            wide = pixels if pixels.dtype == np.uint16 else pixels.astype(np.uint16) * 257
            image = Image.fromarray(
                wide if wide.ndim == 2 else cv2.cvtColor(wide[..., :3], cv2.COLOR_BGR2GRAY)
            )
        else:
            eight = _eight_bits(pixels)
            if eight.ndim == 3:  # BGR(A) -> RGB(A)
                eight = np.ascontiguousarray(eight[..., [2, 1, 0, 3][: eight.shape[2]]])
            image = Image.fromarray(eight)
            if mode == "P":
                image = image.convert("RGB").quantize(1 + option % 256)
            elif mode != image.mode:
                image = image.convert(mode)
        params: dict[str, object] = {}
        if fmt == "JPEG":
            params = {"quality": 1 + option % 100, "progressive": option % 3 == 0}
        elif fmt == "WEBP":
            params = {"lossless": option % 2 == 0, "quality": option % 101}
        elif fmt == "TIFF":
            compressions = ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits")
            params = {"compression": compressions[option % len(compressions)]}
            if mode == "1" and option % 5 == 0:
                params = {"compression": "group4"}
        elif fmt == "PNG":
            params = {"optimize": option % 4 == 0}
        out = io.BytesIO()
        image.save(out, fmt, **params)
        return out.getvalue()

    return encode


ENCODERS: dict[str, Callable[[np.ndarray, int], bytes]] = {
    "cv2-png": lambda p, o: _opencv(".png", p, cv2.IMWRITE_PNG_COMPRESSION, o % 10),
    "cv2-jpeg": _opencv_jpeg,
    "cv2-webp": _opencv_webp,
    "cv2-bmp": lambda p, o: _opencv(".bmp", _eight_bits(p)),
    "cv2-tiff": lambda p, o: _opencv(".tiff", p),
    "cv2-gif": _opencv_gif,
    "pil-png": _pillow("PNG", ("L", "LA", "RGB", "RGBA", "P", "1", "I;16")),
    "pil-jpeg": _pillow("JPEG", ("L", "RGB", "CMYK")),
    "pil-gif": _pillow("GIF", ("P", "L", "RGB")),
    "pil-bmp": _pillow("BMP", ("1", "L", "P", "RGB", "RGBA")),
    "pil-tiff": _pillow("TIFF", ("1", "L", "LA", "RGB", "RGBA", "CMYK", "P", "I;16")),
    "pil-webp": _pillow("WEBP", ("RGB", "RGBA")),
}


@st.composite
def encoded(draw: st.DrawFn, max_side: int = 300) -> tuple[bytes, tuple[int, int]]:
    """A valid file of a supported format and the (width, height) it holds."""
    pixels = draw(pictures(max_side))
    name = draw(st.sampled_from(sorted(ENCODERS)))
    data = ENCODERS[name](pixels, draw(st.integers(0, 10_000)))
    return data, (pixels.shape[1], pixels.shape[0])


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` damaged in one of the ways files get damaged, or replaced by garbage."""
    kind = draw(st.sampled_from(["truncate", "flip", "magic", "insert", "overwrite", "garbage"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        flipped = bytearray(data)
        for bit in draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=16)):
            flipped[bit // 8] ^= 1 << (bit % 8)
        return bytes(flipped)
    if kind == "magic":
        size = draw(st.integers(1, min(16, len(data))))
        return draw(st.binary(min_size=size, max_size=size)) + data[size:]
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    if kind == "overwrite":
        at = draw(st.integers(0, len(data) - 1))
        patch = draw(st.binary(min_size=1, max_size=64))
        return data[:at] + patch + data[at + len(patch) :]
    return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=512))


def valid_files(max_side: int = 300) -> st.SearchStrategy[bytes]:
    """Encoder outputs and the corpus's odd images (animations, RLE, tiles, EXIF, ...)."""
    return st.one_of(encoded(max_side).map(lambda case: case[0]), st.sampled_from(ODD))


@st.composite
def anything(draw: st.DrawFn, max_side: int = 300) -> bytes:
    """Valid files, damaged files, corpus files and plain random bytes."""
    source = draw(st.sampled_from(["valid", "mutated", "corpus", "random"]))
    if source == "random":
        return draw(st.binary(max_size=256))
    if source == "corpus":
        return draw(st.sampled_from(CORPUS))
    data = draw(valid_files(max_side))
    return data if source == "valid" else draw(mutated(data))


# -- decode_image and the per-record steps ------------------------------------------------------


def _per_record_steps(image: DecodedImage) -> None:
    assert image.pixels.dtype == np.uint8
    assert image.pixels.shape == (image.height, image.width, 3)
    for featurizer in FEATURIZERS:
        features = featurizer.extract(image)
        assert features.descriptors.shape == (len(features), featurizer.dim)
    colours = dominant_colors(image, k=4)
    assert 1 <= len(colours) <= 4
    assert len(phash_hex(image)) == 16
    assert make_thumbnail(image, 64)[:2] == b"\xff\xd8"


def _decode_or_refuse(data: bytes) -> DecodedImage | None:
    """Decode and run the steps; a refusal must be an ImageRejected keeping the bytes."""
    try:
        image = decode_image(data, LIMITS)
    except ImageRejected as err:
        assert isinstance(err, RecordError)
        assert err.stage == "decode" and err.reason in REASONS
        assert err.original == data
        return None
    _per_record_steps(image)
    return image


@PROPERTY
@given(encoded())
def test_every_encoder_output_decodes_at_its_size(case: tuple[bytes, tuple[int, int]]) -> None:
    data, (width, height) = case
    image = decode_image(data, LIMITS)
    assert (image.width, image.height) == (width, height)
    _per_record_steps(image)


@PROPERTY
@given(valid_files().flatmap(mutated))
def test_damaged_files_decode_or_are_refused_with_their_bytes(data: bytes) -> None:
    _decode_or_refuse(data)


@settings(PROPERTY, max_examples=150)
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.sampled_from(MAGICS).flatmap(
            lambda magic: st.binary(max_size=1024).map(lambda body: magic + body)
        ),
    )
)
@example(b"II+\x00" + bytes(11) + b"\x80")  # a BigTIFF IFD offset of 2**63 (OverflowError)
def test_random_bytes_are_refused_with_their_bytes(data: bytes) -> None:
    assert sniff_format(data) in (None, "jpeg", "png", "gif", "bmp", "tiff", "webp")
    assert identify_unsupported(data) is None or isinstance(identify_unsupported(data), str)
    _decode_or_refuse(data)


# -- tag_batch and tag_kafka_rows ---------------------------------------------------------------


@settings(PROPERTY, max_examples=60)
@given(st.lists(anything(max_side=80), min_size=1, max_size=8))
def test_tag_batch_gives_every_row_one_output(images: list[bytes]) -> None:
    batch = _events(list(images))
    tagged, review, dead = tag_batch(batch, MODEL)
    assert len(tagged) + len(review) + len(dead) == len(batch)
    assert sorted([*tagged["id"], *review["id"], *dead["id"]]) == sorted(batch["id"])
    # A dead row carries the input bytes (the id is their sha256, so pair them up by id).
    by_id = dict(zip(batch["id"], batch["image"], strict=True))
    for image_id, image in zip(dead["id"], dead["image"], strict=True):
        assert image == by_id[image_id]
    assert all(isinstance(reason, str) and reason for reason in dead["reason"])
    # tag_batch turns an exception into an internal_error dead row; none of these inputs may
    # need that (the decoder and the per-record steps handle them all).
    assert "internal_error" not in set(dead["reason"]), dead[["reason", "detail"]].to_dict(
        "records"
    )


@st.composite
def kafka_values(draw: st.DrawFn) -> bytes | None:
    """What can arrive in the images topic: ImageEvents (honest or not, intact or damaged),
    random bytes, nothing."""
    kind = draw(st.sampled_from(["event", "event", "wrong_id", "damaged_event", "random", "none"]))
    if kind == "none":
        return None
    if kind == "random":
        return draw(
            st.one_of(
                st.binary(max_size=128), st.binary(max_size=16).map(lambda b: b"\xc3\x01" + b)
            )
        )
    image = draw(anything(max_side=64))
    if kind == "wrong_id":
        return _event(image, image_id=hashlib.sha256(image + b"x").hexdigest())
    value = _event(image)
    return value if kind == "event" else draw(mutated(value))


READ_EVENT = AvroDeserializer("ImageEvent")
READ_LETTER = AvroDeserializer("DeadLetter")


def _honest_id(value: bytes | None) -> str | None:
    """The id of ``value`` when it is an ImageEvent whose id is the sha256 of its image."""
    try:
        event = READ_EVENT(value) if value is not None else None
    except RecordError:
        return None
    if event is None or hashlib.sha256(event["image"]).hexdigest() != event["id"]:
        return None
    return str(event["id"])


@settings(PROPERTY, max_examples=60)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.binary(max_size=8)), kafka_values()),
        min_size=1,
        max_size=8,
    )
)
def test_tag_kafka_rows_gives_every_record_one_output(
    records: list[tuple[bytes | None, bytes | None]],
) -> None:
    """The stream drops duplicate ids before tagging, so a batch holds each id once (for
    duplicates see test_dead_letters_of_duplicate_ids_keep_their_own_coordinates)."""
    ids = [_honest_id(value) for _, value in records]
    honest = [image_id for image_id in ids if image_id is not None]
    assume(len(set(honest)) == len(honest))
    out = tag_kafka_rows(_rows(records), MODEL, SETTINGS)
    assert len(out) == len(records)
    assert set(out["kind"]) <= {"tagged", "review", "dead"}
    dead_offsets = set()
    for value in out[out["kind"] == "dead"]["value"]:
        letter = READ_LETTER(value)
        key, original = records[letter["offset"]]
        assert letter["value"] == (original or b"")  # the record, byte for byte
        assert letter["key"] == key
        assert letter["offset"] not in dead_offsets
        assert letter["reason"] != "internal_error", letter["detail"]
        dead_offsets.add(letter["offset"])
    # Every other record was an honest ImageEvent, and came out under its id.
    alive = [ids[offset] for offset in range(len(records)) if offset not in dead_offsets]
    assert all(image_id is not None for image_id in alive)
    assert sorted(out[out["kind"] != "dead"]["id"]) == sorted(str(image_id) for image_id in alive)


def test_dead_letters_of_duplicate_ids_keep_their_own_coordinates() -> None:
    value = _event(b"not an image")
    out = tag_kafka_rows(_rows([(b"first", value), (b"second", value)]), MODEL, SETTINGS)
    letters = [READ_LETTER(v) for v in out["value"]]
    assert sorted((letter["offset"], letter["key"]) for letter in letters) == [
        (0, b"first"),
        (1, b"second"),
    ]
