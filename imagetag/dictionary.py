"""The visual dictionary: KMeans centres of local descriptors, and the bag-of-words encoding.

Training (:meth:`VisualDictionary.fit`) runs Spark MLlib's KMeans (``k-means||`` init) on a
sample of descriptors; it is the only place that imports Spark, lazily. Encoding is pure
numpy and needs no Spark: :meth:`VisualDictionary.encode` turns one image's descriptors into
one vector, :meth:`VisualDictionary.encode_batch` does many images in the same few array
operations (one matrix product for the distances of every descriptor of the batch to every
centre, one ``bincount`` for the histograms). There is no per-descriptor Python loop.

Encoding, in order:

1. **Assignment**: each descriptor goes to its nearest centre (squared Euclidean distance,
   computed as ``|x|² - 2 x·c + |c|²``): a one-hot code. With ``neighbors > 1`` the code is
   *soft* ("kernel codebook"): weights on the ``neighbors`` nearest centres proportional to
   ``exp(-d² / (2 sigma²))``, summing to 1 (``sigma`` is set at training from the KMeans
   cost: the RMS distance of a descriptor to its centre).
2. **Spatial pyramid** (``levels``): level ``l`` splits the image into ``2^l × 2^l`` cells;
   each descriptor also counts in the cell holding its position. ``levels=1`` is the plain
   bag of words (k values); ``levels=2`` adds the 2×2 quadrants (5k values); the layout is
   ``[whole image | cell (0,0) | cell (0,1) | cell (1,0) | cell (1,1)]``, cells row-major.
3. **Pooling** per cell: ``count`` (how many descriptors have each word as nearest centre,
   whatever the codes), ``sum`` (sum of the codes: equal to count for one-hot codes) or
   ``max`` (largest code: for one-hot codes, 1 when any descriptor chose the word).
4. **Normalisation** of the whole vector: ``none``, ``l1`` (sums to 1), ``l2`` (unit length)
   or ``sqrt`` (Hellinger: L1-normalise then element-wise square root, which has unit L2 norm).

An image with no descriptors encodes as the zero vector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from imagetag.errors import ImagetagError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

Pooling = Literal["count", "sum", "max"]
Normalization = Literal["none", "l1", "l2", "sqrt"]
POOLINGS: tuple[str, ...] = ("count", "sum", "max")
NORMALIZATIONS: tuple[str, ...] = ("none", "l1", "l2", "sqrt")

# Solr's dense vector field accepts at most this many dimensions by default.
MAX_SEARCH_DIM = 1024

CENTERS_FILE = "centers.npy"
PARAMS_FILE = "dictionary.json"


class DictionaryError(ImagetagError, ValueError):
    """Bad dictionary parameters, or descriptors that do not fit the dictionary."""


@dataclass(frozen=True, eq=False)
class VisualDictionary:
    """``centers``: ``float32[k, d]``; encoding options as described in the module docstring."""

    centers: np.ndarray = field(repr=False)
    pooling: Pooling = "count"
    normalization: Normalization = "sqrt"
    levels: int = 1
    neighbors: int = 1
    sigma: float = 0.0
    _center_sq: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        centers = np.ascontiguousarray(self.centers, dtype=np.float32)
        if centers.ndim != 2 or centers.shape[0] < 1:
            raise DictionaryError(f"centers must be a non-empty [k, d] array, got {centers.shape}")
        if self.pooling not in POOLINGS:
            raise DictionaryError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.normalization not in NORMALIZATIONS:
            raise DictionaryError(
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if not 1 <= self.levels <= 4:
            raise DictionaryError(f"levels must be 1..4, got {self.levels}")
        if not 1 <= self.neighbors <= centers.shape[0]:
            raise DictionaryError(f"neighbors must be 1..k, got {self.neighbors}")
        if self.neighbors > 1 and not self.sigma > 0:
            raise DictionaryError("soft assignment (neighbors > 1) needs sigma > 0")
        object.__setattr__(self, "centers", centers)
        object.__setattr__(self, "_center_sq", (centers.astype(np.float64) ** 2).sum(axis=1))

    # -- shape ---------------------------------------------------------------------------------

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    @property
    def descriptor_dim(self) -> int:
        return int(self.centers.shape[1])

    @property
    def cells(self) -> int:
        """Pyramid cells in total: 1 + 4 + 16 + ... for ``levels`` levels."""
        return sum(4**level for level in range(self.levels))

    @property
    def dim(self) -> int:
        """Length of an encoded vector."""
        return self.k * self.cells

    @property
    def params(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "pooling": self.pooling,
            "normalization": self.normalization,
            "levels": self.levels,
            "neighbors": self.neighbors,
            "sigma": self.sigma,
        }

    # -- encoding ------------------------------------------------------------------------------

    def _check(self, descriptors: np.ndarray) -> np.ndarray:
        x = np.asarray(descriptors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.descriptor_dim:
            raise DictionaryError(
                f"descriptors must be [n, {self.descriptor_dim}], got {list(x.shape)}"
            )
        return x

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """Index of the nearest centre of each row of ``descriptors`` (``int64[n]``)."""
        x = self._check(descriptors)
        if len(x) == 0:
            return np.zeros(0, np.int64)
        # |x|² is the same for every centre of a row: the argmin only needs |c|² - 2 x·c.
        scores = self._center_sq[None, :].astype(np.float32) - 2.0 * (x @ self.centers.T)
        return np.argmin(scores, axis=1)

    def codes(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sparse codes: ``(words int64[n, m], weights float64[n, m])``, nearest word first.

        ``m = 1`` (weight 1) for hard assignment, ``m = neighbors`` for soft assignment.
        """
        x = self._check(descriptors)
        m = self.neighbors
        if len(x) == 0:
            return np.zeros((0, m), np.int64), np.zeros((0, m), np.float64)
        scores = self._center_sq[None, :].astype(np.float32) - 2.0 * (x @ self.centers.T)
        if m == 1:
            return np.argmin(scores, axis=1)[:, None], np.ones((len(x), 1))
        words = np.argpartition(scores, m - 1, axis=1)[:, :m]
        near = np.take_along_axis(scores, words, axis=1).astype(np.float64)
        order = np.argsort(near, axis=1, kind="stable")
        words = np.take_along_axis(words, order, axis=1)
        near = np.take_along_axis(near, order, axis=1)
        # d² = |x|² + score; the |x|² term cancels in the normalised weights.
        weights = np.exp(-(near - near[:, :1]) / (2.0 * self.sigma**2))
        weights /= weights.sum(axis=1, keepdims=True)
        return words.astype(np.int64), weights

    def encode(self, descriptors: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Encode one image's ``descriptors`` (``[n, d]``) into ``float32[dim]``.

        ``positions`` (``[n, 2]`` fractions of width/height) are required when ``levels > 1``.
        """
        n = len(descriptors)
        return self.encode_batch(
            descriptors,
            np.zeros(n, np.int64),
            1,
            positions,
        )[0]

    def encode_batch(
        self,
        descriptors: np.ndarray,
        image_index: np.ndarray,
        n_images: int,
        positions: np.ndarray | None = None,
    ) -> np.ndarray:
        """Encode the descriptors of ``n_images`` images at once -> ``float32[n_images, dim]``.

        ``descriptors`` stacks every image's rows; ``image_index[i]`` says which image row ``i``
        belongs to (``0 <= image_index < n_images``); images without rows get zero vectors.
        """
        image_index = np.asarray(image_index, dtype=np.int64)
        if len(image_index) != len(descriptors):
            raise DictionaryError("image_index must have one entry per descriptor")
        if self.levels > 1 and (positions is None or len(positions) != len(descriptors)):
            raise DictionaryError("a spatial pyramid needs one position per descriptor")
        words, weights = self.codes(descriptors)
        if self.pooling == "count":
            words, weights = words[:, :1], np.ones((len(words), 1))
        k, cells = self.k, self.cells
        # Flat bin of each (descriptor, level, code): ((image * cells) + cell) * k + word.
        base = [image_index * cells]
        offset = 1
        if self.levels > 1:
            pos = np.clip(np.asarray(positions, dtype=np.float64), 0.0, 1.0 - 1e-9)
            for level in range(1, self.levels):
                side = 2**level
                row = (pos[:, 1] * side).astype(np.int64)
                column = (pos[:, 0] * side).astype(np.int64)
                base.append(image_index * cells + offset + row * side + column)
                offset += side * side
        flat = np.concatenate([(b[:, None] * k + words).ravel() for b in base])
        flat_weights = np.tile(weights.ravel(), len(base))
        size = n_images * cells * k
        pooled: np.ndarray = np.zeros(size, np.float64)
        if self.pooling == "max":
            np.maximum.at(pooled, flat, flat_weights)
        else:
            pooled = np.bincount(flat, weights=flat_weights, minlength=size)
        vectors = pooled.reshape(n_images, cells * k)
        return _normalize(vectors, self.normalization).astype(np.float32)

    def search_vector(self, vectors: np.ndarray) -> np.ndarray:
        """A vector of at most :data:`MAX_SEARCH_DIM` values for Solr's kNN search.

        The encoded vector itself when it fits; otherwise its first pyramid level (the plain
        bag of words over the whole image, ``k`` values) re-normalised to unit length, which
        fits whenever ``k <= 1024``; otherwise a fixed random Gaussian projection (seed 0) to
        1024 values, unit length. Input ``[n, dim]`` or ``[dim]``.
        """
        x = np.asarray(vectors, dtype=np.float32)
        single = x.ndim == 1
        x = np.atleast_2d(x)
        if x.shape[1] <= MAX_SEARCH_DIM:
            out = x
        elif self.k <= MAX_SEARCH_DIM:
            out = _normalize(x[:, : self.k].astype(np.float64), "l2").astype(np.float32)
        else:
            rng = np.random.default_rng(0)
            projection = rng.standard_normal((x.shape[1], MAX_SEARCH_DIM)).astype(np.float32)
            out = _normalize((x @ projection).astype(np.float64), "l2").astype(np.float32)
        return out[0] if single else out

    # -- persistence ---------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write ``centers.npy`` and ``dictionary.json`` into ``folder`` (created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / CENTERS_FILE, self.centers, allow_pickle=False)
        (folder / PARAMS_FILE).write_text(json.dumps(self.params, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> VisualDictionary:
        """Read what :meth:`save` wrote."""
        folder = Path(folder)
        params = json.loads((folder / PARAMS_FILE).read_text())
        centers = np.load(folder / CENTERS_FILE, allow_pickle=False)
        if centers.shape[0] != params["k"]:
            raise DictionaryError(f"{folder}: {centers.shape[0]} centres but k={params['k']}")
        return cls(
            centers,
            pooling=params["pooling"],
            normalization=params["normalization"],
            levels=params["levels"],
            neighbors=params.get("neighbors", 1),
            sigma=params.get("sigma", 0.0),
        )

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        descriptors: DataFrame,
        k: int,
        *,
        column: str = "descriptor",
        seed: int = 1,
        max_iter: int = 20,
        init_steps: int = 2,
        tol: float = 1e-4,
        pooling: Pooling = "count",
        normalization: Normalization = "sqrt",
        levels: int = 1,
        neighbors: int = 1,
    ) -> tuple[VisualDictionary, Any]:
        """Train the dictionary with Spark MLlib KMeans (``k-means||`` init).

        ``descriptors`` is a Spark DataFrame with one descriptor per row in ``column`` (an
        ``array<float>`` or an ML vector). Returns the dictionary and the fitted Spark
        ``KMeansModel`` (for the bundle). Raises DictionaryError when there are fewer
        descriptors than ``k``.
        """
        from pyspark.ml.clustering import KMeans
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql.types import ArrayType

        frame = descriptors
        if isinstance(frame.schema[column].dataType, ArrayType):
            frame = frame.select(array_to_vector(frame[column]).alias(column))
        kmeans = KMeans(
            k=k,
            featuresCol=column,
            initMode="k-means||",
            initSteps=init_steps,
            maxIter=max_iter,
            tol=tol,
            seed=seed,
            solver="block",  # distances as matrix products (GEMM): descriptors are dense
        )
        # Spark's block solver fails with an index error when there are fewer rows than k;
        # looking at the first k rows is cheap and gives a clear error instead.
        rows_seen = frame.limit(k).count()
        if rows_seen < k:
            raise DictionaryError(
                f"only {rows_seen} descriptors for k={k}: too few rows for KMeans"
            )
        model = kmeans.fit(frame)
        centers = np.array([np.asarray(c) for c in model.clusterCenters()], dtype=np.float32)
        if len(centers) < k:
            raise DictionaryError(f"KMeans found {len(centers)} centres for k={k}: too few rows")
        # Kernel width of soft codes: the RMS distance of a sample descriptor to its centre.
        rows = model.summary.trainingCost / max(1, sum(model.summary.clusterSizes))
        # A soft code cannot spread over more words than the dictionary has (tiny test
        # dictionaries use k < the default five neighbours).
        neighbors = min(neighbors, len(centers))
        sigma = float(np.sqrt(rows)) if neighbors > 1 else 0.0
        dictionary = cls(
            centers,
            pooling=pooling,
            normalization=normalization,
            levels=levels,
            neighbors=neighbors,
            sigma=sigma,
        )
        return dictionary, model


def _normalize(vectors: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return vectors
    if how == "l2":
        norms = np.sqrt((vectors * vectors).sum(axis=1, keepdims=True))
        return vectors / np.maximum(norms, 1e-12)
    sums = np.abs(vectors).sum(axis=1, keepdims=True)
    l1 = vectors / np.maximum(sums, 1e-12)
    if how == "l1":
        return l1
    return np.sqrt(l1)  # "sqrt": Hellinger (pooled values are non-negative)
