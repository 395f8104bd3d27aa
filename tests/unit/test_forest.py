"""The compiled forest: hard votes on hand-built trees (no Spark)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imagetag.forest import Forest, ForestError
from imagetag.testing.models import leaf, split

CLASSES = ["cat", "dog", "owl"]


def _forest() -> Forest:
    """Five trees over 2 features (node ids in Spark's preorder).

    t0: x0 <= 0.5 ? cat : dog
    t1: x0 <= 0.5 ? cat : (x1 <= 0.5 ? dog : owl)
    t2: x1 <= 0.5 ? cat : owl
    t3: leaf dog (a single-node tree)
    t4: x0 <= 0.25 ? cat(stats mixed 3:1) : owl
    """
    rows = [
        split(0, 0, 1, 2, 0, 0.5),
        leaf(0, 1, 0, [5, 0, 0]),
        leaf(0, 2, 1, [0, 5, 0]),
        split(1, 0, 1, 2, 0, 0.5),
        leaf(1, 1, 0, [4, 0, 0]),
        split(1, 2, 3, 4, 1, 0.5),
        leaf(1, 3, 1, [0, 2, 0]),
        leaf(1, 4, 2, [0, 0, 3]),
        split(2, 0, 1, 2, 1, 0.5),
        leaf(2, 1, 0, [6, 0, 0]),
        leaf(2, 2, 2, [0, 0, 6]),
        leaf(3, 0, 1, [0, 9, 0]),
        split(4, 0, 1, 2, 0, 0.25),
        leaf(4, 1, 0, [3, 1, 0]),
        leaf(4, 2, 2, [0, 0, 2]),
    ]
    shuffled = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter
    return Forest.from_nodes(shuffled, CLASSES, n_features=2)


def test_shape() -> None:
    forest = _forest()
    assert (forest.n_trees, forest.n_nodes, forest.max_depth) == (5, 15, 2)


def test_hard_votes_by_hand() -> None:
    forest = _forest()
    x = np.array(
        [
            [0.0, 0.0],  # cat, cat, cat, dog, cat -> cat 4/5
            [1.0, 0.0],  # dog, dog, cat, dog, owl -> dog 3/5
            [1.0, 1.0],  # dog, owl, owl, dog, owl -> owl 3/5
            [0.4, 1.0],  # cat, cat, owl, dog, owl -> cat 2/5 = owl 2/5: tie -> cat (listed first)
            [0.5, 0.5],  # thresholds are inclusive on the left: cat, cat, cat, dog, owl
        ],
        np.float32,
    )
    labels, confidence, fractions = forest.vote(x)
    assert labels.tolist() == ["cat", "dog", "owl", "cat", "cat"]
    assert confidence.tolist() == pytest.approx([0.8, 0.6, 0.6, 0.4, 0.6])
    assert np.allclose(
        fractions,
        [
            [0.8, 0.2, 0.0],
            [0.2, 0.6, 0.2],
            [0.0, 0.4, 0.6],
            [0.4, 0.2, 0.4],
            [0.6, 0.2, 0.2],
        ],
    )
    assert np.allclose(fractions.sum(axis=1), 1.0)


def test_soft_probability_is_the_mean_of_leaf_distributions() -> None:
    forest = _forest()
    proba = forest.probability(np.array([[0.0, 0.0]], np.float32))[0]
    # leaves: cat(1,0,0) cat(1,0,0) cat(1,0,0) dog(0,1,0) cat-mixed(.75,.25,0)
    assert proba == pytest.approx([3.75 / 5, 1.25 / 5, 0.0])


def test_single_row_and_wrong_width() -> None:
    forest = _forest()
    assert forest.vote(np.array([1.0, 1.0])).labels.tolist() == ["owl"]
    with pytest.raises(ForestError):
        forest.vote(np.zeros((2, 3)))


def test_batch_equals_row_by_row() -> None:
    forest = _forest()
    x = np.random.default_rng(0).random((200, 2)).astype(np.float32)
    batch = forest.vote(x)
    for i in range(0, 200, 37):
        one = forest.vote(x[i])
        assert one.labels[0] == batch.labels[i]
        assert np.array_equal(one.fractions[0], batch.fractions[i])


def test_refuses_categorical_splits_and_bad_ids() -> None:
    rows = [split(0, 0, 1, 2, 0, 0.5), leaf(0, 1, 0, [1, 0, 0]), leaf(0, 2, 1, [0, 1, 0])]
    categorical = pd.DataFrame(rows)
    categorical.loc[0, "categorical"] = True
    with pytest.raises(ForestError, match="categorical"):
        Forest.from_nodes(categorical, CLASSES, 2)
    gap = pd.DataFrame(rows)
    gap.loc[2, "id"] = 5
    with pytest.raises(ForestError, match="ids"):
        Forest.from_nodes(gap, CLASSES, 2)
    with pytest.raises(ForestError, match="n_features"):
        Forest.from_nodes(pd.DataFrame(rows), CLASSES, 0)


def test_save_load_round_trip(tmp_path: Path) -> None:
    forest = _forest()
    forest.save(tmp_path / "forest")
    loaded = Forest.load(tmp_path / "forest")
    assert loaded.classes == CLASSES
    assert (loaded.n_trees, loaded.n_nodes, loaded.max_depth) == (5, 15, 2)
    x = np.random.default_rng(1).random((50, 2))
    assert np.array_equal(loaded.vote(x).fractions, forest.vote(x).fractions)
