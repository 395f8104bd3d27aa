"""Featurizers (local descriptors for the visual dictionary) and the global fields of the index.

A featurizer is chosen by name (``get_featurizer("dense-sift", step=4)``); its name and
parameters are stored in the model bundle so tagging extracts exactly what training did.
All of them return :class:`Features`: descriptors as ``float32[n, d]`` plus each descriptor's
position as a fraction of the image width/height (for the spatial pyramid).

- ``sift``: OpenCV's SIFT detector + descriptor (128-d). Images are first brought within
  ``[min_side, max_side]`` so tiny images still yield keypoints and huge ones stay cheap.
- ``orb``: ORB (binary, 256 bits). Binary descriptors are compared by Hamming distance; we
  unpack them to 0/1 floats (``float32[n, 256]``) because the squared Euclidean distance
  between 0/1 vectors *is* the Hamming distance, so Spark's Euclidean KMeans and our
  nearest-centre assignment are exact for them (centres become per-bit frequencies, the
  usual "k-majority" relaxation). Averaging packed bytes as numbers would be meaningless.
  An image whose fitted side is within twice ORB's edge threshold (a thin strip, a panorama
  brought within ``max_side``) has no keypoints and is not handed to ORB at all.
- ``dense-sift``: SIFT descriptors on a fixed grid, for small images (28×28, 32×32) where
  detectors find almost nothing. The image is resized to ``size``×``size`` (upscaling small
  images first: SIFT's Gaussian smoothing would erase a 28-pixel image), then a descriptor is
  computed every ``step`` pixels for each keypoint size in ``scales``.

SIFT descriptors are "RootSIFT"-normalised by default (L1-normalise, then square root), which
turns Euclidean distance into the Hellinger kernel and usually helps bags of words.

OpenCV objects are created once per featurizer object, never per image. Call
:func:`single_threaded_opencv` once in each Spark Python worker: OpenCV's own thread pool
fights Spark's one-worker-per-core scheduling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np

from imagetag.errors import ImagetagError


class FeaturizerError(ImagetagError, ValueError):
    """Unknown featurizer name or invalid parameters."""


@dataclass(frozen=True)
class Features:
    """Local descriptors of one image.

    ``descriptors``: ``float32[n, dim]``; ``positions``: ``float32[n, 2]`` (x, y) as fractions of
    the image width and height, in ``[0, 1)``. ``n`` may be 0.
    """

    descriptors: np.ndarray = field(repr=False)
    positions: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.descriptors.shape[0])


def single_threaded_opencv() -> None:
    """One OpenCV thread per process: Spark already runs one Python worker per core."""
    cv2.setNumThreads(1)


def to_gray(image: Any) -> np.ndarray:
    """``uint8[h, w]`` from a :class:`~imagetag.images.DecodedImage` or a BGR/gray array."""
    pixels = getattr(image, "pixels", image)
    if pixels.ndim == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    return np.asarray(pixels)


class Featurizer(ABC):
    """Extracts local descriptors. Subclasses set ``name``, ``param_names`` and ``dim``."""

    name: ClassVar[str]
    # The constructor's keyword arguments, each kept as the attribute of the same name: one
    # list serves ``params`` (and so the bundle) for every featurizer, and cannot drift from
    # what the constructor takes.
    param_names: ClassVar[tuple[str, ...]]
    dim: int

    @abstractmethod
    def extract(self, image: Any) -> Features:
        """Descriptors of ``image`` (a DecodedImage or a BGR/gray ``uint8`` array)."""

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that rebuild this featurizer with :func:`get_featurizer`, as JSON
        values (a tuple attribute is given as a list)."""
        values = {name: getattr(self, name) for name in self.param_names}
        return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}

    def _no_features(self) -> Features:
        """What an image without a single descriptor yields: zero rows of the right width."""
        return Features(np.zeros((0, self.dim), np.float32), np.zeros((0, 2), np.float32))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"

    def __reduce__(self) -> tuple[Any, tuple[str, dict[str, Any]]]:
        # OpenCV detectors do not pickle: ship the name and parameters, rebuild on arrival
        # (Spark sends featurizers to its Python workers this way).
        return (_rebuild, (self.name, self.params))


def _fit_side(gray: np.ndarray, min_side: int, max_side: int) -> np.ndarray:
    height, width = gray.shape[:2]
    scale = 1.0
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
    elif min(height, width) < min_side:
        scale = min(min_side / min(height, width), max_side / max(height, width))
    if scale == 1.0:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(gray, size, interpolation=interpolation)


def _positions(keypoints: Any, width: int, height: int) -> np.ndarray:
    if not keypoints:
        return np.zeros((0, 2), np.float32)
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32)
    points /= np.array([width, height], dtype=np.float32)
    return np.clip(points, 0.0, np.nextafter(np.float32(1), np.float32(0)))


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalise each row, then take the element-wise square root."""
    sums = descriptors.sum(axis=1, keepdims=True)
    return np.sqrt(descriptors / np.maximum(sums, 1e-12)).astype(np.float32)


class _DetectorFeaturizer(Featurizer):
    """A keypoint detector's featurizer: at most ``max_features`` keypoints of the image brought
    within ``[min_side, max_side]``, so tiny images still yield keypoints and huge ones stay
    cheap. SIFT and ORB differ only in the detector and what they make of its descriptors."""

    param_names: ClassVar[tuple[str, ...]] = ("max_features", "min_side", "max_side")

    def __init__(self, max_features: int, min_side: int, max_side: int) -> None:
        self.max_features = int(max_features)
        self.min_side = int(min_side)
        self.max_side = int(max_side)

    def _fitted_gray(self, image: Any) -> np.ndarray:
        """``image`` in gray, brought within ``[min_side, max_side]`` for the detector."""
        return _fit_side(to_gray(image), self.min_side, self.max_side)


class SiftFeaturizer(_DetectorFeaturizer):
    """OpenCV SIFT keypoints and descriptors (128-d)."""

    name = "sift"
    param_names = (*_DetectorFeaturizer.param_names, "rootsift")

    def __init__(
        self,
        max_features: int = 500,
        min_side: int = 64,
        max_side: int = 640,
        rootsift: bool = True,
    ) -> None:
        super().__init__(max_features, min_side, max_side)
        self.rootsift = bool(rootsift)
        self.dim = 128
        self._sift = cv2.SIFT.create(nfeatures=self.max_features)

    def extract(self, image: Any) -> Features:
        gray = self._fitted_gray(image)
        keypoints, descriptors = self._sift.detectAndCompute(gray, None)  # type: ignore[call-overload]
        if descriptors is None or len(keypoints) == 0:
            return self._no_features()
        descriptors = descriptors.astype(np.float32)
        if self.rootsift:
            descriptors = root_sift(descriptors)
        return Features(descriptors, _positions(keypoints, gray.shape[1], gray.shape[0]))


class OrbFeaturizer(_DetectorFeaturizer):
    """OpenCV ORB keypoints; binary descriptors unpacked to 256 floats in {0, 1}."""

    name = "orb"

    def __init__(self, max_features: int = 500, min_side: int = 128, max_side: int = 640) -> None:
        super().__init__(max_features, min_side, max_side)
        self.dim = 256
        self._orb = cv2.ORB.create(nfeatures=self.max_features)

    def extract(self, image: Any) -> Features:
        gray = self._fitted_gray(image)
        if min(gray.shape[:2]) <= 2 * self._orb.getEdgeThreshold():
            # ORB keeps no keypoint closer than edgeThreshold to a border, so such an image
            # has none; and its pyramid would shrink a thin strip (a panorama brought within
            # max_side) to 0 rows, which OpenCV's resize refuses with an assertion.
            return self._no_features()
        keypoints, packed = self._orb.detectAndCompute(gray, None)  # type: ignore[call-overload]
        if packed is None or len(keypoints) == 0:
            return self._no_features()
        bits = np.unpackbits(packed, axis=1).astype(np.float32)
        return Features(bits, _positions(keypoints, gray.shape[1], gray.shape[0]))


class DenseSiftFeaturizer(Featurizer):
    """SIFT descriptors on a regular grid of a ``size``×``size`` resized image.

    ``step``: grid spacing in pixels of the resized image; ``scales``: keypoint sizes (OpenCV's
    SIFT window is about 6 × size pixels wide, so 4 covers ~24 px of a 56-px image); the grid
    starts ``margin`` pixels from the border. Every image yields the same number of descriptors
    at the same positions.
    """

    name = "dense-sift"
    param_names = ("size", "step", "scales", "margin", "rootsift")

    def __init__(
        self,
        size: int = 56,
        step: int = 4,
        scales: tuple[float, ...] | list[float] = (4.0,),
        margin: int = 4,
        rootsift: bool = True,
    ) -> None:
        if size < 8 or step < 1 or not scales or margin < 0 or 2 * margin >= size:
            raise FeaturizerError(
                f"dense-sift: bad grid size={size} step={step} scales={scales} margin={margin}"
            )
        self.size = int(size)
        self.step = int(step)
        self.scales = tuple(float(s) for s in scales)
        self.margin = int(margin)
        self.rootsift = bool(rootsift)
        self.dim = 128
        self._sift = cv2.SIFT.create()
        grid = np.arange(self.margin, self.size - self.margin + 1e-9, self.step, dtype=np.float32)
        self._keypoints = tuple(
            cv2.KeyPoint(float(x), float(y), scale)
            for scale in self.scales
            for y in grid
            for x in grid
        )
        self._positions = _positions(self._keypoints, self.size, self.size)

    @property
    def points_per_image(self) -> int:
        return len(self._keypoints)

    def extract(self, image: Any) -> Features:
        gray = to_gray(image)
        if gray.shape != (self.size, self.size):
            shrinking = gray.shape[0] * gray.shape[1] > self.size * self.size
            interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
            gray = cv2.resize(gray, (self.size, self.size), interpolation=interpolation)
        keypoints, descriptors = self._sift.compute(gray, self._keypoints)
        if len(keypoints) != len(self._keypoints):  # pragma: no cover - OpenCV keeps grid points
            raise FeaturizerError("dense-sift: OpenCV dropped grid keypoints")
        descriptors = descriptors.astype(np.float32)
        if self.rootsift:
            descriptors = root_sift(descriptors)
        return Features(descriptors, self._positions)


FEATURIZERS: dict[str, type[Featurizer]] = {
    SiftFeaturizer.name: SiftFeaturizer,
    OrbFeaturizer.name: OrbFeaturizer,
    DenseSiftFeaturizer.name: DenseSiftFeaturizer,
}


def _rebuild(name: str, params: dict[str, Any]) -> Featurizer:
    return get_featurizer(name, **params)


def get_featurizer(name: str, **params: Any) -> Featurizer:
    """The featurizer called ``name`` (``sift``, ``orb``, ``dense-sift``) built with ``params``.

    Raises FeaturizerError for an unknown name or parameter.
    """
    try:
        cls = FEATURIZERS[name]
    except KeyError:
        raise FeaturizerError(
            f"unknown featurizer {name!r}; choose one of {', '.join(sorted(FEATURIZERS))}"
        ) from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise FeaturizerError(f"{name}: {exc}") from exc


# -- global fields of the index ------------------------------------------------------------------


def perceptual_hash(image: Any) -> int:
    """64-bit DCT perceptual hash (pHash): 32×32 gray, DCT, the 8×8 lowest frequencies
    compared with their median (DC term excluded from the median). Bit 63 is frequency (0, 0).
    """
    gray = to_gray(image)
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    median = float(np.median(np.asarray(low[1:], np.float64)))
    bits = (low > median).astype(np.uint8)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash_hex(image: Any) -> str:
    """:func:`perceptual_hash` as 16 hex digits."""
    return f"{perceptual_hash(image):016x}"


def hamming(a: int, b: int) -> int:
    """Bits that differ between two hashes."""
    return (a ^ b).bit_count()


def _color_sample(image: Any, max_pixels: int, seed: int) -> np.ndarray:
    pixels = getattr(image, "pixels", image)
    if pixels.ndim == 2:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    flat = pixels.reshape(-1, 3)
    if len(flat) > max_pixels:
        # A fixed-seed subset keeps the result deterministic for the same bytes.
        idx = np.random.default_rng(seed).choice(len(flat), max_pixels, replace=False)
        flat = flat[idx]
    return flat.astype(np.float32)


def _packed_colors(sample: np.ndarray) -> np.ndarray:
    """Each BGR triple of a ``float32[n, 3]`` sample packed into one integer."""
    return sample.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)


def _distinct_colors(sample: np.ndarray) -> int:
    """Distinct BGR triples of a ``float32[n, 3]`` sample."""
    return len(np.unique(_packed_colors(sample)))


def _hex(bgr: Any) -> str:
    b, g, r = (round(float(c)) for c in np.clip(bgr, 0, 255))
    return f"#{r:02x}{g:02x}{b:02x}"


def _kmeans(sample: np.ndarray, k: int) -> tuple[float, np.ndarray, np.ndarray]:
    """OpenCV KMeans (k-means++ init, one attempt) of ``float32[n, 3]`` pixels."""
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
    initial: np.ndarray = np.zeros((len(sample), 1), np.int32)
    compactness, labels, centers = cv2.kmeans(
        sample, k, initial, criteria, 1, cv2.KMEANS_PP_CENTERS
    )
    return float(compactness), np.asarray(labels), np.asarray(centers)


def dominant_colors(
    image: Any, k: int = 4, max_pixels: int = 4096, seed: int = 0
) -> list[tuple[str, float]]:
    """The ``k`` dominant colours of ``image`` by KMeans colour quantisation.

    Returns ``[("#rrggbb", fraction), ...]`` sorted by decreasing fraction. An image with at
    most ``k`` distinct colours (a single pixel, a flat image) gets exactly those colours,
    without KMeans. Works on a fixed-seed sample of at most ``max_pixels`` pixels.
    """
    sample = _color_sample(image, max_pixels, seed)
    colours, first, counts = np.unique(
        _packed_colors(sample), return_index=True, return_counts=True
    )
    k = max(1, k)
    if len(colours) <= k:
        # Nothing to cluster: the colours are the answer (and OpenCV's KMeans returns centres
        # of the wrong shape for a single pixel).
        centers, sizes = sample[first], counts
    else:
        cv2.setRNGSeed(seed)
        _, labels, centers = _kmeans(sample, k)
        sizes = np.bincount(labels.ravel(), minlength=k)
    order = np.argsort(-sizes, kind="stable")
    return [(_hex(centers[i]), float(sizes[i] / len(sample))) for i in order if sizes[i] > 0]


def silhouette_score(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient of a clustering (Euclidean), vectorised over all pairs.

    Points in singleton clusters score 0 (as in scikit-learn). Returns 0 for fewer than 2
    clusters. Memory is O(n²): keep ``n`` to a few thousand.
    """
    labels = np.asarray(labels).ravel()
    clusters, labels = np.unique(labels, return_inverse=True)
    if len(clusters) < 2:
        return 0.0
    x = np.asarray(points, dtype=np.float64)
    sq = (x * x).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
    onehot = np.eye(len(clusters))[labels]  # n × c
    sizes = onehot.sum(axis=0)
    mean_to = dist @ onehot  # n × c: sum of distances to each cluster
    own = sizes[labels]
    a = mean_to[np.arange(len(x)), labels] / np.maximum(own - 1, 1)
    mean_to = mean_to / sizes
    mean_to[np.arange(len(x)), labels] = np.inf
    b = mean_to.min(axis=1)
    s = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
    s[own <= 1] = 0.0
    return float(s.mean())


def best_color_k(
    image: Any, candidates: tuple[int, ...] = (2, 3, 4, 5, 6), max_pixels: int = 400, seed: int = 0
) -> int:
    """The ``k`` in ``candidates`` whose KMeans colour quantisation of ``image`` has the best
    silhouette score (ties: the smaller k). Images with fewer distinct colours than a
    candidate skip it.
    """
    sample = _color_sample(image, max_pixels, seed)
    distinct = _distinct_colors(sample)
    best_k, best_score = min(candidates), -2.0
    cv2.setRNGSeed(seed)
    for k in candidates:
        if k > distinct:
            continue
        _, labels, _ = _kmeans(sample, k)
        score = silhouette_score(sample, labels)
        if score > best_score + 1e-9:
            best_k, best_score = k, score
    return best_k


def choose_color_k(images: list[Any], candidates: tuple[int, ...] = (2, 3, 4, 5, 6)) -> int:
    """The fixed per-image ``k`` for tag time: the most frequent silhouette-best ``k`` over a
    sample of training ``images`` (ties: the smaller k). Used by the dictionary-building job.
    """
    if not images:
        return min(candidates)
    votes = np.bincount([best_color_k(image, candidates) for image in images])
    return int(np.argmax(votes))
