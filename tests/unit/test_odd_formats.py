"""The generated corpus (imagetag.testing.corpus): odd but valid images decode at the right size
and orientation and go through every per-record step; unsupported and corrupt files are refused
with their reason and keep their bytes; header bombs are refused before OpenCV decodes."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys

import cv2
import numpy as np
import pytest

from imagetag.features import dominant_colors, get_featurizer, phash_hex
from imagetag.formats import identify_unsupported
from imagetag.images import (
    CORRUPT,
    REASONS,
    UNSUPPORTED_FORMAT,
    DecodedImage,
    ImageRejected,
    decode_image,
    make_thumbnail,
    read_header,
)
from imagetag.settings import ImageLimits
from imagetag.tagging import tag_batch
from imagetag.testing.corpus import (
    ALIVE,
    DEAD,
    corrupt_files,
    mixed_corpus,
    odd_image_sizes,
    odd_images,
    unsupported_files,
)
from tests.unit.test_tagging import _events, _model

LIMITS = ImageLimits()
ODD = odd_images()
SIZES = odd_image_sizes()
UNSUPPORTED = unsupported_files()
BROKEN = corrupt_files()
FEATURIZERS = [get_featurizer(name) for name in ("sift", "orb", "dense-sift")]
ORIENTED = sorted(name for name in ODD if "orientation" in name)
BOMBS = sorted(name for name in BROKEN if "bomb" in name)


def _rejected(data: bytes) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, LIMITS)
    err = info.value
    assert err.stage == "decode" and err.reason in REASONS
    assert err.original == data  # the dead-letter topic gets the bytes as they came
    return err


def _per_record_steps(image: DecodedImage) -> None:
    """What tag_batch does with each decoded image, with every featurizer."""
    for featurizer in FEATURIZERS:
        features = featurizer.extract(image)
        assert features.descriptors.shape == (len(features), featurizer.dim)
        assert features.descriptors.dtype == np.float32
    colours = dominant_colors(image, k=4)
    assert 1 <= len(colours) <= 4
    assert sum(fraction for _, fraction in colours) == pytest.approx(1.0)
    assert len(phash_hex(image)) == 16
    thumbnail = decode_image(make_thumbnail(image, 64), LIMITS)
    assert thumbnail.format == "jpeg" and max(thumbnail.width, thumbnail.height) <= 64


# -- odd but valid images -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_image_decodes_at_its_size(name: str) -> None:
    image = decode_image(ODD[name], LIMITS)
    width, height = SIZES[name]
    assert (image.width, image.height) == (width, height)
    assert image.pixels.shape == (height, width, 3)
    assert image.pixels.dtype == np.uint8 and image.pixels.flags.c_contiguous


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_image_goes_through_every_per_record_step(name: str) -> None:
    _per_record_steps(decode_image(ODD[name], LIMITS))


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_image_decodes_as_pillow_does(name: str) -> None:
    """A second decoder as reference: colours, channel order, palette transparency, alpha on
    white, first frame, orientation and 16-bit scaling all agree with Pillow's."""
    from PIL import Image, ImageOps

    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(ODD[name])))
    if reference.mode in ("I;16", "I;16B", "F"):  # Pillow would clip these to 8 bits
        values = np.asarray(reference, np.float64)
        if reference.mode == "F":  # floats: the decoder stretches their range to 0..255
            values = (values - values.min()) * 255 / max(float(np.ptp(values)), 1e-12)
        else:
            values = values / 257
        expected = np.repeat(values[..., None], 3, axis=2)
    else:
        rgba = reference.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        expected = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), np.float64)
    ours = decode_image(ODD[name], LIMITS).pixels[..., ::-1].astype(np.float64)
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).mean() < 2.0


def test_tag_batch_tags_every_odd_image() -> None:
    images: list[bytes | None] = list(ODD.values())
    tagged, review, dead = tag_batch(_events(images), _model())
    assert dead.empty, dead[["reason", "detail"]].to_dict("records")
    assert sorted([*tagged["id"], *review["id"]]) == sorted(_events(images)["id"])


@pytest.mark.parametrize("name", ORIENTED)
def test_exif_orientation_is_applied(name: str) -> None:
    """The upright picture is 40 x 24, dark, with a white square in its top-left corner."""
    pixels = decode_image(ODD[name], LIMITS).pixels
    assert pixels.shape[:2] == (24, 40)
    corners = [pixels[:3, :3], pixels[:3, -3:], pixels[-3:, :3], pixels[-3:, -3:]]
    top_left, *others = (float(corner.mean()) for corner in corners)
    assert top_left > 200
    assert max(others) < 120


@pytest.mark.parametrize("name", [name for name in ORIENTED if name[-1] in "5678"])
def test_exif_rotation_swaps_width_and_height(name: str) -> None:
    header = read_header(ODD[name], LIMITS)
    image = decode_image(ODD[name], LIMITS)
    assert (header.width, header.height) == (image.height, image.width) == (24, 40)


def test_orientation_of_alpha_images_is_applied_by_us() -> None:
    """OpenCV leaves images read with IMREAD_UNCHANGED (alpha) unrotated: the decoder turns them."""
    data = ODD["png_rgba_exif_orientation_8"]
    unrotated = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert unrotated is not None and unrotated.shape[:2] == (40, 24)
    assert decode_image(data, LIMITS).pixels.shape[:2] == (24, 40)


# -- refused files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_file_is_refused_with_its_reason(name: str) -> None:
    data, reason = UNSUPPORTED[name]
    err = _rejected(data)
    assert err.reason == reason
    if reason == UNSUPPORTED_FORMAT:
        assert err.detail == f"{identify_unsupported(data)} is not supported"
    else:
        assert identify_unsupported(data) is None


def test_unsupported_details_name_the_format() -> None:
    details = {name: _rejected(UNSUPPORTED[name][0]).detail for name in ("heic", "avif_pillow")}
    assert details == {"heic": "HEIC is not supported", "avif_pillow": "AVIF is not supported"}
    assert _rejected(UNSUPPORTED["svg_xml_declaration"][0]).detail == "SVG is not supported"


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_corrupt_file_is_refused_with_its_reason(name: str) -> None:
    data, reason = BROKEN[name]
    if reason is not None:
        assert _rejected(data).reason == reason
        return
    try:  # no stable reason (a bit flip may leave a decodable image): anything but a crash
        image = decode_image(data, LIMITS)
    except ImageRejected as err:
        assert err.reason in REASONS and err.original == data
    else:
        _per_record_steps(image)


@pytest.mark.parametrize("name", BOMBS)
def test_header_bomb_is_refused_before_decoding(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object) -> None:
        raise AssertionError("OpenCV was asked to decode a bomb")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    data, reason = BROKEN[name]
    assert len(data) < 16_384  # declaring gigabytes of pixels
    assert _rejected(data).reason == reason


def test_corrupt_files_depend_on_the_seed_only_where_random() -> None:
    other = corrupt_files(seed=1)
    assert other.keys() == BROKEN.keys()
    changed = {name for name in BROKEN if other[name][0] != BROKEN[name][0]}
    assert changed and all(BROKEN[name][1] in (None, "not_an_image", CORRUPT) for name in changed)
    assert corrupt_files() == BROKEN


# -- the corpus itself --------------------------------------------------------------------------


def test_corpus_is_deterministic_and_does_not_import_pillow() -> None:
    """A fresh process produces the same bytes, and importing the module leaves Pillow out."""
    script = (
        "import hashlib, sys\n"
        "from imagetag.testing import corpus\n"
        "assert 'PIL' not in sys.modules\n"
        "digest = hashlib.sha256()\n"
        "for name, data in sorted(corpus.odd_images().items()): digest.update(name.encode() + data)\n"
        "for name, (data, _) in sorted(corpus.unsupported_files().items()): digest.update(data)\n"
        "for name, (data, _) in sorted(corpus.corrupt_files(3).items()): digest.update(data)\n"
        "print(digest.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    digest = hashlib.sha256()
    for name, data in sorted(ODD.items()):
        digest.update(name.encode() + data)
    for _, (data, _) in sorted(UNSUPPORTED.items()):
        digest.update(data)
    for _, (data, _) in sorted(corrupt_files(3).items()):
        digest.update(data)
    assert out.stdout.strip() == digest.hexdigest()


def test_mixed_corpus_holds_every_case_then_fills_up() -> None:
    definite = [name for name, (_, reason) in BROKEN.items() if reason is not None]
    special = len(ODD) + len(UNSUPPORTED) + len(definite)
    items = mixed_corpus(special + 40, seed=5)
    assert len(items) == special + 40
    assert len(mixed_corpus(10)) == special  # every case, even when fewer are asked for
    names = [name for name, _, _ in items]
    assert len(set(names)) == len(names)
    assert len({hashlib.sha256(data).digest() for _, data, _ in items}) == len(items)
    assert {expected for _, _, expected in items} == {ALIVE, DEAD}
    assert sum(expected == ALIVE for _, _, expected in items) == len(ODD) + 40
    # The first items cycle through the three kinds.
    assert [name.split("_")[1] for name, _, _ in items[:3]] == ["odd", "unsupported", "corrupt"]
    for name, data, expected in items[special:]:
        image = decode_image(data, LIMITS)
        assert min(image.width, image.height) >= 8 and max(image.width, image.height) <= 200
        assert expected == ALIVE and name.endswith("_valid")
    assert mixed_corpus(special + 5, seed=5) == items[: special + 5]


def test_mixed_corpus_makes_repeated_valid_images_distinct() -> None:
    """The stream drops duplicate ids: repeated bytes from ``valid`` get a tag of their index."""
    base = {
        "png": ODD["png_rgba"],
        "jpeg": ODD["jpeg_gray"],
        "gif": ODD["gif_animated"],
        "webp": ODD["webp_lossy"],
        "bmp": ODD["bmp_24bit"],
        "tiff": ODD["tiff_lzw"],
    }
    formats = list(base)
    special = len(mixed_corpus(0))
    items = mixed_corpus(special + 18, valid=lambda i: base[formats[i % len(formats)]])
    filled = items[special:]
    assert len({data for _, data, _ in items}) == len(items)
    for _, data, _ in filled:
        image = decode_image(data, LIMITS)
        assert image.format in base and (image.width, image.height) == (40, 30)
    with pytest.raises(ValueError, match="distinct"):
        mixed_corpus(special + 2, valid=lambda i: b"P6\n1 1\n255\n\x00\x00\x00")
