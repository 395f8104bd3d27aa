"""Featurizers and global fields on generated images."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from imagetag.features import (
    FEATURIZERS,
    DenseSiftFeaturizer,
    Features,
    FeaturizerError,
    OrbFeaturizer,
    best_color_k,
    choose_color_k,
    dominant_colors,
    get_featurizer,
    hamming,
    perceptual_hash,
    phash_hex,
    root_sift,
    silhouette_score,
)


def _scene(height: int = 240, width: int = 320, seed: int = 3) -> np.ndarray:
    """Shapes with corners and texture: something every detector finds keypoints in."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 255, np.uint8)
    for _ in range(25):
        x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + 35, y + 25), colour, -1)
        else:
            cv2.circle(image, (x + 20, y + 20), 15, colour, -1)
    return image


def test_registry_names() -> None:
    assert set(FEATURIZERS) == {"sift", "orb", "dense-sift"}


def test_unknown_name_and_bad_params() -> None:
    with pytest.raises(FeaturizerError, match="unknown featurizer"):
        get_featurizer("surf")
    with pytest.raises(FeaturizerError):
        get_featurizer("sift", colour=True)
    with pytest.raises(FeaturizerError):
        get_featurizer("dense-sift", size=20, margin=10)


@pytest.mark.parametrize("name", ["sift", "orb", "dense-sift"])
def test_params_rebuild_the_same_featurizer(name: str) -> None:
    featurizer = get_featurizer(name)
    again = get_featurizer(name, **featurizer.params)
    assert again.params == featurizer.params
    image = _scene()
    first, second = featurizer.extract(image), again.extract(image)
    assert np.array_equal(first.descriptors, second.descriptors)


@pytest.mark.parametrize("name", ["sift", "orb", "dense-sift"])
def test_featurizers_pickle(name: str) -> None:
    featurizer = get_featurizer(name)
    again = pickle.loads(pickle.dumps(featurizer))
    assert type(again) is type(featurizer)
    assert again.params == featurizer.params
    image = _scene()
    assert np.array_equal(featurizer.extract(image).descriptors, again.extract(image).descriptors)


def _check(features: Features, dim: int) -> None:
    assert features.descriptors.dtype == np.float32
    assert features.descriptors.shape[1] == dim
    assert features.positions.shape == (len(features), 2)
    assert (features.positions >= 0).all() and (features.positions < 1).all()


def test_sift() -> None:
    featurizer = get_featurizer("sift", max_features=200)
    features = featurizer.extract(_scene())
    _check(features, 128)
    assert 20 <= len(features) <= 200
    # RootSIFT rows have unit L2 norm (sqrt of an L1-normalised non-negative vector).
    norms = np.linalg.norm(features.descriptors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)


def test_sift_on_a_blank_image_returns_no_descriptors() -> None:
    features = get_featurizer("sift").extract(np.full((50, 50), 128, np.uint8))
    assert len(features) == 0
    _check(features, 128)


def test_orb_descriptors_are_unpacked_bits() -> None:
    featurizer = get_featurizer("orb", max_features=300)
    assert isinstance(featurizer, OrbFeaturizer)
    gray = cv2.cvtColor(_scene(), cv2.COLOR_BGR2GRAY)
    features = featurizer.extract(gray)
    _check(features, 256)
    assert len(features) > 20
    assert set(np.unique(features.descriptors)) <= {0.0, 1.0}
    # Same keypoints through OpenCV directly: unpacking is bit-exact and Euclidean² = Hamming.
    _, packed = cv2.ORB.create(nfeatures=300).detectAndCompute(gray, None)  # type: ignore[call-overload]
    assert np.array_equal(np.packbits(features.descriptors.astype(np.uint8), axis=1), packed)
    a, b = features.descriptors[0], features.descriptors[1]
    assert float(((a - b) ** 2).sum()) == cv2.norm(packed[0], packed[1], cv2.NORM_HAMMING)


def test_small_images_are_upscaled_for_detectors() -> None:
    small = cv2.resize(_scene(), (40, 30), interpolation=cv2.INTER_AREA)
    assert len(get_featurizer("orb").extract(small)) > 0
    assert len(get_featurizer("sift").extract(small)) > 0


def test_dense_sift_grid() -> None:
    featurizer = get_featurizer("dense-sift", size=56, step=4, scales=[4.0], margin=4)
    assert isinstance(featurizer, DenseSiftFeaturizer)
    assert featurizer.points_per_image == 13 * 13
    rng = np.random.default_rng(1)
    tiny = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    features = featurizer.extract(tiny)
    _check(features, 128)
    assert len(features) == 169
    # Positions are the same grid for every image, whatever its size.
    other = featurizer.extract(_scene())
    assert np.array_equal(features.positions, other.positions)
    assert features.positions[0] == pytest.approx([4 / 56, 4 / 56])
    assert features.positions[-1] == pytest.approx([52 / 56, 52 / 56])


def test_dense_sift_two_scales_doubles_the_descriptors() -> None:
    featurizer = get_featurizer("dense-sift", size=32, step=4, scales=[2.0, 3.0], margin=4)
    assert len(featurizer.extract(np.zeros((32, 32), np.uint8))) == 2 * 7 * 7


def test_root_sift_by_hand() -> None:
    d = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    assert np.allclose(root_sift(d), [[0.5, np.sqrt(0.75), 0.0], [0.0, 0.0, 0.0]])


# -- global fields -----------------------------------------------------------------------------


def test_phash_is_stable_under_resize_and_differs_between_images() -> None:
    image = _scene()
    resized = cv2.resize(image, (160, 120), interpolation=cv2.INTER_AREA)
    other = _scene(seed=99)
    h = perceptual_hash(image)
    assert 0 <= h < 2**64
    assert hamming(h, perceptual_hash(resized)) <= 6
    assert hamming(h, perceptual_hash(other)) > 12
    assert len(phash_hex(image)) == 16
    assert int(phash_hex(image), 16) == h


def test_dominant_colors() -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :30] = (0, 0, 255)  # red (BGR), 3/4 of the pixels
    image[:, 30:] = (255, 0, 0)  # blue, 1/4
    colours = dominant_colors(image, k=3)
    assert [c for c, _ in colours] == ["#ff0000", "#0000ff"]  # only 2 distinct colours
    assert [f for _, f in colours] == pytest.approx([0.75, 0.25])


def test_silhouette_by_hand() -> None:
    # Two points per cluster, clusters 10 apart: a = 1, b = mean distance to the other = 10.
    points = np.array([[0.0], [1.0], [10.0], [11.0]])
    labels = np.array([0, 0, 1, 1])
    # point 0: a=1, b=(10+11)/2=10.5 -> 9.5/10.5; point 1: a=1, b=9.5 -> 8.5/9.5
    expected = np.mean([9.5 / 10.5, 8.5 / 9.5, 8.5 / 9.5, 9.5 / 10.5])
    assert silhouette_score(points, labels) == pytest.approx(expected)
    assert silhouette_score(points, np.zeros(4)) == 0.0


def test_color_k_by_silhouette() -> None:
    three: np.ndarray = np.zeros((30, 30, 3), np.uint8)
    three[:10] = (0, 0, 255)
    three[10:20] = (0, 255, 0)
    three[20:] = (255, 0, 0)
    noise = np.random.default_rng(0).integers(-8, 9, three.shape)
    three = np.asarray(np.clip(three.astype(int) + noise, 0, 255), np.uint8)
    assert best_color_k(three) == 3
    two = three.copy()
    two[10:] = three[25, 0]
    assert best_color_k(two) == 2
    assert choose_color_k([three, three, two]) == 3


# -- tiny and thin images (every valid image goes through every step) ---------------------------


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 2, 3), (2, 1, 3), (1, 1)])
def test_dominant_colors_of_a_pixel_or_two(shape: tuple[int, ...]) -> None:
    # OpenCV's KMeans of a single pixel returned centres of the wrong shape: ValueError.
    image = np.zeros(shape, np.uint8)
    image[0, 0] = 200
    colours = dominant_colors(image, k=4)
    assert [fraction for _, fraction in colours] == pytest.approx(
        [1.0] if image.size in (1, 3) else [0.5, 0.5]
    )


def test_dominant_colors_with_as_many_colours_as_k_are_exact() -> None:
    image = np.array([[(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 0, 255)]], np.uint8)
    assert dominant_colors(image, k=3) == [
        ("#ff0000", 0.5),
        ("#00ff00", 0.25),
        ("#0000ff", 0.25),
    ]


@pytest.mark.parametrize("name", ["sift", "orb", "dense-sift"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 57), (57, 1), (2, 3000), (3000, 2), (3, 5000)])
def test_featurizers_take_tiny_and_thin_images(name: str, shape: tuple[int, int]) -> None:
    # ORB's pyramid shrank a strip fitted into max_side (3 x 5000 -> 1 x 640) to 0 rows, and
    # OpenCV's resize raised an assertion.
    noise = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    featurizer = get_featurizer(name)
    features = featurizer.extract(noise)
    _check(features, featurizer.dim)
