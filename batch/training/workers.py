"""The worker-side stages of training: ``mapInPandas`` functions (shards or vectors in, pandas
batches out) and the schemas of what they yield. OpenCV runs single-threaded in each worker."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from batch.training.corpus import read_shard
from imagetag.bundle import ModelBundle
from imagetag.dictionary import VisualDictionary
from imagetag.errors import RecordError
from imagetag.features import Featurizer, single_threaded_opencv
from imagetag.forest import Forest
from imagetag.settings import ImageLimits

# What mapInPandas is given: batches of input rows in, batches of output rows out.
MapFunction = Callable[[Iterable[pd.DataFrame]], Iterator[pd.DataFrame]]


def _extract(
    featurizer: Featurizer, limits: ImageLimits, data: bytes
) -> tuple[np.ndarray, np.ndarray] | None:
    from imagetag.images import decode_image

    try:
        image = decode_image(data, limits)
        features = featurizer.extract(image)
    except RecordError:
        return None
    return features.descriptors, features.positions


def _shards(frames: Iterable[pd.DataFrame]) -> Iterator[dict[str, Any]]:
    """Each shard row of the batches mapInPandas hands over, as the dict read_shard takes."""
    for frame in frames:
        yield from frame.to_dict("records")


class _EncodedShard(NamedTuple):
    """The decodable records of one shard and their encoded vectors, in the same order."""

    names: list[str]
    labels: list[str | None]
    vectors: np.ndarray


def _encode_shard(
    shard: dict[str, Any], featurizer: Featurizer, limits: ImageLimits, dictionary: VisualDictionary
) -> _EncodedShard | None:
    """Every decodable record of ``shard`` encoded by ``dictionary`` in one batch (one matrix
    product for the whole shard); None when none decodes. Training and the scoring of CURRENT
    both encode through here, so a bundle is scored on vectors made exactly as it was trained."""
    names: list[str] = []
    labels: list[str | None] = []
    descriptors: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    for name, data, label in read_shard(shard):
        extracted = _extract(featurizer, limits, data)
        if extracted is None:
            continue
        names.append(name)
        labels.append(label)
        descriptors.append(extracted[0])
        positions.append(extracted[1])
    if not names:
        return None
    counts = np.array([len(d) for d in descriptors])
    vectors = dictionary.encode_batch(
        np.concatenate(descriptors),
        np.repeat(np.arange(len(names)), counts),
        len(names),
        np.concatenate(positions),
    )
    return _EncodedShard(names, labels, vectors)


def sample_descriptors(
    featurizer: Featurizer, limits: ImageLimits, image_rate: float, per_image: int, seed: int
) -> MapFunction:
    """mapInPandas function: shards -> rows of ``descriptor`` (array<float>)."""

    def run(shards: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        single_threaded_opencv()
        for shard in _shards(shards):
            rng = np.random.default_rng([seed, int(shard["shard"])])
            picked: list[np.ndarray] = []
            for _, data, _ in read_shard(shard):
                if rng.random() >= image_rate:
                    continue
                extracted = _extract(featurizer, limits, data)
                if extracted is None or len(extracted[0]) == 0:
                    continue
                descriptors = extracted[0]
                take = min(per_image, len(descriptors))
                rows = rng.choice(len(descriptors), take, replace=False)
                picked.append(descriptors[rows])
            if picked:
                stacked = np.concatenate(picked).astype(np.float32)
                yield pd.DataFrame({"descriptor": list(stacked)})

    return run


def encoded_schema() -> Any:
    """split, label, name and the encoded ``features`` as an ML vector (not expressible in DDL)."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import StringType, StructField, StructType

    return StructType(
        [
            StructField("split", StringType()),
            StructField("label", StringType()),
            StructField("name", StringType()),
            StructField("features", VectorUDT()),
        ]
    )


def encode_shards(featurizer: Featurizer, limits: ImageLimits, dictionary: Any) -> MapFunction:
    """mapInPandas function: shards -> one sparse encoded vector per decodable record.

    ``dictionary`` is a Spark broadcast of the VisualDictionary.
    """

    def run(shards: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        single_threaded_opencv()
        vd: VisualDictionary = dictionary.value
        for shard in _shards(shards):
            encoded = _encode_shard(shard, featurizer, limits, vd)
            if encoded is None:
                continue
            yield pd.DataFrame(
                {
                    "split": shard["split"],
                    "label": encoded.labels,
                    "name": encoded.names,
                    "features": [_sparse(v) for v in encoded.vectors],
                }
            )

    return run


def _sparse(vector: np.ndarray) -> Any:
    """An ML SparseVector: pyspark (4.2+) serialises the VectorUDT column of a mapInPandas
    result through ``VectorUDT.serialize``, which takes Vector objects (no longer their struct
    form)."""
    from pyspark.ml.linalg import SparseVector

    nonzero = np.flatnonzero(vector)
    return SparseVector(len(vector), nonzero.astype(np.int32), vector[nonzero].astype(np.float64))


def _dense(vectors: pd.Series, size: int) -> np.ndarray:
    """ML vectors (SparseVector/DenseVector objects or their struct dicts) -> float32[n, size]."""
    dense = np.zeros((len(vectors), size), np.float32)
    for row, vec in enumerate(vectors):
        if isinstance(vec, dict):
            if vec.get("type") == 1:  # dense
                dense[row] = vec["values"]
            else:
                dense[row, np.asarray(vec["indices"], np.int64)] = vec["values"]
        elif hasattr(vec, "indices"):
            dense[row, vec.indices] = vec.values
        else:
            dense[row] = vec.toArray()
    return dense


PREDICTION_SCHEMA = "label double, predicted int, confidence float, fractions array<float>"


def predict_vectors(
    forest: Any,
) -> MapFunction:
    """mapInPandas function: (label_index, features) -> hard votes of the compiled forest.

    ``forest`` is a Spark broadcast of the compiled Forest.
    """

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        compiled: Forest = forest.value
        for frame in frames:
            for start in range(0, len(frame), 512):
                part = frame.iloc[start : start + 512]
                dense = _dense(part["features"], compiled.n_features)
                votes = compiled.vote(dense)
                yield pd.DataFrame(
                    {
                        "label": part["label_index"].to_numpy(np.float64),
                        "predicted": votes.fractions.argmax(axis=1).astype(np.int32),
                        "confidence": votes.confidence,
                        "fractions": list(votes.fractions),
                    }
                )

    return run


EVAL_SCHEMA = "label string, predicted string, confidence float, fractions array<float>"


def evaluate_bundle_on_shards(bundle: Any, limits: ImageLimits) -> MapFunction:
    """mapInPandas function: test shards -> the votes of a whole bundle (decode to vote).

    Used to score the CURRENT bundle on this run's held-out split. ``bundle`` is a broadcast.
    """

    def run(shards: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        single_threaded_opencv()
        model: ModelBundle = bundle.value
        for shard in _shards(shards):
            encoded = _encode_shard(shard, model.featurizer, limits, model.dictionary)
            if encoded is None:
                continue
            votes = model.forest.vote(encoded.vectors)
            yield pd.DataFrame(
                {
                    "label": encoded.labels,
                    "predicted": [str(x) for x in votes.labels],
                    "confidence": votes.confidence,
                    "fractions": list(votes.fractions),
                }
            )

    return run
