"""VisualDictionary.fit on Spark MLlib KMeans (local Spark only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from imagetag.dictionary import DictionaryError, VisualDictionary

pytestmark = pytest.mark.integration


def _descriptors(spark: Any, rows: int, centres: int, dim: int = 8) -> Any:
    rng = np.random.default_rng(7)
    means = rng.normal(size=(centres, dim)) * 10
    x = means[rng.integers(0, centres, rows)] + rng.normal(size=(rows, dim))
    return spark.createDataFrame([([float(v) for v in row],) for row in x], ["descriptor"])


def test_fit_finds_k_centres_and_encodes(local_spark: Any) -> None:
    frame = _descriptors(local_spark, rows=600, centres=6)
    dictionary, model = VisualDictionary.fit(frame, 6, pooling="sum", neighbors=3)
    assert dictionary.k == 6
    assert dictionary.neighbors == 3
    assert dictionary.sigma > 0
    assert len(model.clusterCenters()) == 6
    vector = dictionary.encode(np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32))
    assert vector.shape == (dictionary.dim,)
    assert np.isfinite(vector).all()


def test_soft_codes_never_spread_over_more_words_than_k(local_spark: Any) -> None:
    # The default of five neighbours with a tiny dictionary (k=4) used to fail in retraining.
    dictionary, _ = VisualDictionary.fit(_descriptors(local_spark, 200, 4), 4, neighbors=5)
    assert dictionary.neighbors == 4


def test_fewer_rows_than_k_is_a_clear_error(local_spark: Any) -> None:
    with pytest.raises(DictionaryError, match="descriptors for k=8"):
        VisualDictionary.fit(_descriptors(local_spark, 5, 2), 8)
