"""The compiled forest against Spark's own RandomForestClassificationModel (local Spark only).

Spark averages leaf class distributions (soft votes); the compiled forest counts each tree's
own vote (hard votes). With trees grown until their leaves are pure the two coincide, so the
majority label must equal Spark's prediction wherever Spark's probability margin is not a tie.
With depth-limited trees (impure leaves) the soft probabilities must still match exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagetag.forest import Forest

pytestmark = pytest.mark.integration

CLASSES = ["a", "b", "c", "d"]


def _data(spark: object, rows: int = 800, seed: int = 0) -> tuple[object, np.ndarray]:
    """Overlapping Gaussian blobs in 12 dimensions, one in three values zeroed (sparse-ish)."""
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), rows)
    centres = rng.normal(size=(len(CLASSES), 12)) * 1.2
    x = centres[labels] + rng.normal(size=(rows, 12))
    x[rng.random(x.shape) < 0.33] = 0.0
    x = x.astype(np.float32).astype(np.float64)  # what our encoder produces
    frame = spark.createDataFrame(  # type: ignore[attr-defined]
        [(float(y), Vectors.dense(v)) for y, v in zip(labels, x, strict=True)],
        ["label", "features"],
    )
    return frame, x


def _fit(frame: Any, **params: Any) -> Any:
    from pyspark.ml.classification import RandomForestClassifier

    params.setdefault("featureSubsetStrategy", "sqrt")
    classifier = RandomForestClassifier(numTrees=25, seed=7, **params)
    return classifier.fit(frame)


def _spark_outputs(model: object, frame: object) -> tuple[np.ndarray, np.ndarray]:
    rows = model.transform(frame).select("probability", "prediction").toPandas()  # type: ignore[attr-defined]
    probability = np.stack([np.asarray(p.toArray()) for p in rows["probability"]])
    return probability, rows["prediction"].to_numpy(np.int64)


def test_pure_trees_majority_equals_spark_prediction(local_spark: object, tmp_path: Path) -> None:
    frame, x = _data(local_spark)
    # Every feature at every node and exact thresholds: Spark grows each tree until its
    # leaves are pure (with a feature subset a node may find no useful split and stop early).
    model = _fit(frame, maxDepth=30, maxBins=1024, featureSubsetStrategy="all")
    forest = Forest.from_spark_model(model, CLASSES, local_spark, str(tmp_path / "rf"))  # type: ignore[arg-type]
    leaves = forest.leaf_class >= 0
    assert np.allclose(forest.leaf_proba[leaves].max(axis=1), 1.0)  # grown until pure

    probability, prediction = _spark_outputs(model, frame)
    votes = forest.vote(x)
    assert np.allclose(forest.probability(x), probability, atol=1e-9)
    top2 = np.sort(probability, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 1e-9
    assert decided.mean() > 0.9
    winners = votes.fractions.argmax(axis=1)
    assert np.array_equal(winners[decided], prediction[decided])
    assert np.array_equal(votes.labels[decided], np.asarray(CLASSES, object)[prediction[decided]])
    # hard-vote fractions are multiples of 1/trees and sum to 1
    assert np.allclose(votes.fractions.sum(axis=1), 1.0)
    assert np.allclose(votes.fractions * 25, np.round(votes.fractions * 25), atol=1e-5)


def test_depth_limited_trees_soft_probabilities_match_exactly(
    local_spark: object, tmp_path: Path
) -> None:
    frame, x = _data(local_spark, seed=3)
    model = _fit(frame, maxDepth=4)
    forest = Forest.from_spark_model(model, CLASSES, local_spark, str(tmp_path / "rf"))  # type: ignore[arg-type]
    assert forest.max_depth <= 4
    probability, _ = _spark_outputs(model, frame)
    assert np.allclose(forest.probability(x), probability, atol=1e-9)
    # Without Spark (pyarrow on the local folder) the compilation is identical.
    local = Forest.from_saved_model(str(tmp_path / "rf"), CLASSES, forest.n_features)
    for name in ("roots", "feature", "threshold", "left", "right", "leaf_class"):
        assert np.array_equal(getattr(local, name), getattr(forest, name)), name
    assert np.array_equal(local.vote(x).fractions, forest.vote(x).fractions)


def test_compiled_forest_of_a_temporary_save(local_spark: object) -> None:
    frame, x = _data(local_spark, rows=300, seed=5)
    model = _fit(frame, maxDepth=6)
    forest = Forest.from_spark_model(model, CLASSES, local_spark)  # type: ignore[arg-type]
    probability, _ = _spark_outputs(model, frame)
    assert np.allclose(forest.probability(x), probability, atol=1e-9)
    assert forest.n_trees == 25
