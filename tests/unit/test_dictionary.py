"""VisualDictionary encoding checked against hand-computed vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagetag.dictionary import MAX_SEARCH_DIM, DictionaryError, VisualDictionary

# Three 2-d centres; descriptors placed next to them by hand.
CENTERS = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
# nearest centres: 0, 1, 1, 2, 1
DESCRIPTORS = np.array([[1, 1], [9, 1], [11, -1], [0, 8], [10, 2]], np.float32)
# positions (x, y): quadrants top-left, top-right, top-right, bottom-left, bottom-right
POSITIONS = np.array([[0.1, 0.1], [0.9, 0.2], [0.6, 0.4], [0.2, 0.7], [0.8, 0.9]], np.float32)


def _dictionary(**options: object) -> VisualDictionary:
    return VisualDictionary(CENTERS, **options)  # type: ignore[arg-type]


def test_assign_nearest_centre() -> None:
    assert _dictionary().assign(DESCRIPTORS).tolist() == [0, 1, 1, 2, 1]


def test_count_pooling_without_normalisation() -> None:
    vector = _dictionary(pooling="count", normalization="none").encode(DESCRIPTORS)
    assert vector.tolist() == [1, 3, 1]


def test_sum_equals_count_for_hard_codes() -> None:
    counted = _dictionary(pooling="count", normalization="none").encode(DESCRIPTORS)
    summed = _dictionary(pooling="sum", normalization="none").encode(DESCRIPTORS)
    assert np.array_equal(counted, summed)


def test_max_pooling_is_presence() -> None:
    vector = _dictionary(pooling="max", normalization="none").encode(DESCRIPTORS[:3])
    assert vector.tolist() == [1, 1, 0]


@pytest.mark.parametrize(
    ("normalization", "expected"),
    [
        ("l1", [0.2, 0.6, 0.2]),
        ("l2", [1 / np.sqrt(11), 3 / np.sqrt(11), 1 / np.sqrt(11)]),
        ("sqrt", [np.sqrt(0.2), np.sqrt(0.6), np.sqrt(0.2)]),
    ],
)
def test_normalisations(normalization: str, expected: list[float]) -> None:
    vector = _dictionary(normalization=normalization).encode(DESCRIPTORS)
    assert vector == pytest.approx(expected, rel=1e-6)


def test_spatial_pyramid_two_levels() -> None:
    dictionary = _dictionary(levels=2, normalization="none")
    assert dictionary.cells == 5
    assert dictionary.dim == 15
    vector = dictionary.encode(DESCRIPTORS, POSITIONS)
    expected = [
        *[1, 3, 1],  # whole image
        *[1, 0, 0],  # top-left: descriptor 0 (word 0)
        *[0, 2, 0],  # top-right: descriptors 1, 2 (word 1)
        *[0, 0, 1],  # bottom-left: descriptor 3 (word 2)
        *[0, 1, 0],  # bottom-right: descriptor 4 (word 1)
    ]
    assert vector.tolist() == expected


def test_pyramid_needs_positions() -> None:
    with pytest.raises(DictionaryError, match="position"):
        _dictionary(levels=2).encode(DESCRIPTORS)


def test_batch_equals_one_by_one_and_empty_images_are_zero() -> None:
    dictionary = _dictionary(levels=2, normalization="sqrt")
    image_index = np.array([0, 0, 2, 2, 2])  # image 1 has no descriptors
    batch = dictionary.encode_batch(DESCRIPTORS, image_index, 3, POSITIONS)
    assert batch.shape == (3, 15)
    assert np.allclose(batch[0], dictionary.encode(DESCRIPTORS[:2], POSITIONS[:2]))
    assert not batch[1].any()
    assert np.allclose(batch[2], dictionary.encode(DESCRIPTORS[2:], POSITIONS[2:]))
    empty = dictionary.encode(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
    assert not empty.any()


def test_bad_descriptor_width() -> None:
    with pytest.raises(DictionaryError):
        _dictionary().encode(np.zeros((3, 5), np.float32))


def test_bad_options() -> None:
    with pytest.raises(DictionaryError):
        _dictionary(pooling="mean")
    with pytest.raises(DictionaryError):
        _dictionary(normalization="l3")
    with pytest.raises(DictionaryError):
        _dictionary(levels=0)


def test_matches_brute_force_on_random_data() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(64, 16)).astype(np.float32)
    descriptors = rng.normal(size=(500, 16)).astype(np.float32)
    dictionary = VisualDictionary(centers, normalization="none")
    nearest = np.array(
        [np.argmin(((centers - d) ** 2).sum(axis=1)) for d in descriptors]  # reference only
    )
    assert np.array_equal(dictionary.assign(descriptors), nearest)
    assert np.array_equal(dictionary.encode(descriptors), np.bincount(nearest, minlength=64))


def test_search_vector_fits_solr() -> None:
    rng = np.random.default_rng(0)
    small = VisualDictionary(rng.normal(size=(200, 4)).astype(np.float32), levels=2)
    vectors = small.encode_batch(
        rng.normal(size=(30, 4)).astype(np.float32),
        np.zeros(30, np.int64),
        1,
        rng.random((30, 2)).astype(np.float32),
    )
    assert small.search_vector(vectors).shape == (1, 1000)  # 5 × 200 fits as it is
    big = VisualDictionary(rng.normal(size=(512, 4)).astype(np.float32), levels=2)
    vector = big.encode(rng.normal(size=(30, 4)).astype(np.float32), rng.random((30, 2)))
    search = big.search_vector(vector)
    assert search.shape == (512,)  # the whole-image level
    assert np.linalg.norm(search) == pytest.approx(1.0)
    huge = VisualDictionary(rng.normal(size=(2048, 4)).astype(np.float32))
    projected = huge.search_vector(huge.encode(rng.normal(size=(30, 4)).astype(np.float32)))
    assert projected.shape == (MAX_SEARCH_DIM,)
    assert np.linalg.norm(projected) == pytest.approx(1.0, rel=1e-5)


def test_save_load_round_trip(tmp_path: Path) -> None:
    dictionary = _dictionary(pooling="max", normalization="l2", levels=2)
    dictionary.save(tmp_path / "dictionary")
    loaded = VisualDictionary.load(tmp_path / "dictionary")
    assert loaded.params == dictionary.params
    assert np.array_equal(loaded.centers, dictionary.centers)
    assert np.array_equal(
        loaded.encode(DESCRIPTORS, POSITIONS), dictionary.encode(DESCRIPTORS, POSITIONS)
    )


def test_soft_codes_by_hand() -> None:
    # x = (4, 0): d² = 16 to centre 0, 36 to centre 1, 116 to centre 2 (not among 2 nearest).
    # sigma² = 10 -> weights ∝ exp(-16/20), exp(-36/20) -> 1/(1+e^-1), e^-1/(1+e^-1).
    dictionary = _dictionary(neighbors=2, sigma=float(np.sqrt(10.0)), normalization="none")
    words, weights = dictionary.codes(np.array([[4.0, 0.0]], np.float32))
    w0 = 1.0 / (1.0 + np.exp(-1.0))
    assert words.tolist() == [[0, 1]]
    assert weights[0] == pytest.approx([w0, 1.0 - w0])
    summed = _dictionary(neighbors=2, sigma=np.sqrt(10.0), pooling="sum", normalization="none")
    two = np.array([[4.0, 0.0], [4.0, 0.0]], np.float32)
    assert summed.encode(two) == pytest.approx([2 * w0, 2 * (1 - w0), 0.0])
    maxed = _dictionary(neighbors=2, sigma=np.sqrt(10.0), pooling="max", normalization="none")
    assert maxed.encode(two) == pytest.approx([w0, 1 - w0, 0.0])
    counted = _dictionary(neighbors=2, sigma=np.sqrt(10.0), pooling="count", normalization="none")
    assert counted.encode(two).tolist() == [2.0, 0.0, 0.0]  # count ignores soft codes


def test_soft_codes_need_sigma() -> None:
    with pytest.raises(DictionaryError, match="sigma"):
        _dictionary(neighbors=2)
    with pytest.raises(DictionaryError, match="neighbors"):
        _dictionary(neighbors=4, sigma=1.0)
