"""Hand-built models, for the tests and the benches: no training, fast and deterministic.

- :func:`leaf`, :func:`split`, :func:`stump`: node rows of the table
  :meth:`Forest.from_nodes <imagetag.forest.Forest.from_nodes>` compiles (Spark's layout:
  node ids in preorder, ``-1`` for a leaf's children);
- :func:`random_trees`: random trees shaped like trained ones;
- :func:`small_featurizer`: dense SIFT on a 32-pixel grid, cheap enough for unit tests;
- :func:`hand_built_bundle`: a featurizer, a dictionary and node rows made into a
  :class:`~imagetag.bundle.ModelBundle`; :func:`synthetic_bundle`: one of a trained model's shape;
- :func:`save_bundle`: write a bundle into a :class:`~imagetag.bundle.ModelStore` under a new
  version, and promote it.

Only a tree's leaves vote: ``Forest.from_nodes`` ignores the ``prediction`` and ``stats`` of a
split, so :func:`split` leaves them empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from imagetag.bundle import ModelBundle, ModelStore
from imagetag.dictionary import VisualDictionary
from imagetag.features import Featurizer, get_featurizer
from imagetag.forest import Forest

Node = dict[str, Any]


def leaf(
    tree: int,
    node: int,
    prediction: int,
    stats: Sequence[float] | None = None,
    *,
    n_classes: int | None = None,
) -> Node:
    """A leaf of ``tree`` voting class index ``prediction``.

    Its class statistics are ``stats``, or, with ``n_classes`` instead, one-hot over that many
    classes. Raises ValueError when neither is given.
    """
    if stats is None:
        if n_classes is None:
            raise ValueError("a leaf needs its stats or the number of classes")
        stats = [0.0] * n_classes
        stats[prediction] = 1.0
    return {
        "tree": tree,
        "id": node,
        "left": -1,
        "right": -1,
        "feature": -1,
        "threshold": np.inf,
        "categorical": False,
        "prediction": float(prediction),
        "stats": list(stats),
    }


def split(tree: int, node: int, left: int, right: int, feature: int, threshold: float) -> Node:
    """An inner node of ``tree``: ``feature <= threshold`` goes to ``left``, else to ``right``
    (node ids within the tree)."""
    return {
        "tree": tree,
        "id": node,
        "left": left,
        "right": right,
        "feature": feature,
        "threshold": threshold,
        "categorical": False,
        "prediction": 0.0,
        "stats": [],
    }


def stump(
    tree: int, feature: int, threshold: float, below: int, above: int, n_classes: int
) -> list[Node]:
    """The three nodes of a one-split tree: class ``below`` when ``feature <= threshold``,
    else class ``above`` (one-hot leaves over ``n_classes`` classes)."""
    return [
        split(tree, 0, 1, 2, feature, threshold),
        leaf(tree, 1, below, n_classes=n_classes),
        leaf(tree, 2, above, n_classes=n_classes),
    ]


def random_trees(
    rng: np.random.Generator, trees: int, depth: int, n_features: int, n_classes: int
) -> list[Node]:
    """Random trees (preorder ids) whose branches stop with probability 0.35 per level below
    depth 6, and at ``depth`` at the latest; splits on a random feature at a random threshold
    in [0, 0.05), leaves vote a random class. With depth 20 that is about 5,000 nodes per tree,
    like a forest trained on Fashion-MNIST."""
    rows: list[Node] = []

    def grow(tree: int, start: int, level: int) -> int:
        node = len(rows) - start
        if level == depth or (level >= 6 and rng.random() < 0.35):
            prediction = int(rng.integers(0, n_classes))
            rows.append(leaf(tree, node, prediction, n_classes=n_classes))
            return node
        feature = int(rng.integers(0, n_features))
        row = split(tree, node, -1, -1, feature, float(rng.random() * 0.05))
        rows.append(row)
        row["left"] = grow(tree, start, level + 1)
        row["right"] = grow(tree, start, level + 1)
        return node

    for tree in range(trees):
        grow(tree, len(rows), 0)
    return rows


def small_featurizer() -> Featurizer:
    """Dense SIFT on a 32×32 resize, a 4×4 grid at one scale: 16 descriptors an image, cheap
    enough for tests that tag real images."""
    return get_featurizer("dense-sift", size=32, step=8, scales=[3.0], margin=4)


def hand_built_bundle(
    featurizer: Featurizer,
    dictionary: VisualDictionary,
    nodes: Sequence[Node],
    classes: list[str],
    *,
    version: str = "v0007",
    vote_threshold: float = 0.4,
    color_k: int = 2,
) -> ModelBundle:
    """A bundle of the given parts, its forest compiled from ``nodes`` (over the dictionary's
    vector), its manifest holding only the version, ``vote_threshold`` and ``color_k``.
    Raises ForestError for nodes that do not make a forest."""
    forest = Forest.from_nodes(pd.DataFrame(list(nodes)), classes, n_features=dictionary.dim)
    manifest = {"version": version, "vote_threshold": vote_threshold, "color_k": color_k}
    return ModelBundle(version, manifest, featurizer, dictionary, forest)


def synthetic_bundle(trees: int = 100, depth: int = 20, k: int = 256) -> ModelBundle:
    """A bundle shaped like a trained one (version ``synthetic``): default dense SIFT, ``k``
    random sqrt-normalised centres, a 2-level pyramid, and :func:`random_trees` over 10
    classes. Deterministic (seed 0)."""
    rng = np.random.default_rng(0)
    centers = rng.random((k, 128)).astype(np.float32)
    centers = np.sqrt(centers / centers.sum(axis=1, keepdims=True))
    dictionary = VisualDictionary(centers, levels=2, normalization="sqrt")
    classes = [f"class{i}" for i in range(10)]
    nodes = random_trees(rng, trees, depth, dictionary.dim, len(classes))
    return hand_built_bundle(
        get_featurizer("dense-sift"), dictionary, nodes, classes, version="synthetic", color_k=3
    )


def save_bundle(store: str | ModelStore, bundle: ModelBundle, promote: bool = True) -> str:
    """Write ``bundle`` into ``store`` under a newly allocated version (its manifest gets that
    version, the featurizer's name and parameters, and an accuracy of 0), promote it unless
    ``promote`` is false, and return the version. Raises BundleError when the store cannot be
    written."""
    model_store = store if isinstance(store, ModelStore) else ModelStore(store)
    version = model_store.allocate_version()
    manifest = {
        **bundle.manifest,
        "version": version,
        "featurizer": {"name": bundle.featurizer.name, "params": bundle.featurizer.params},
        "metrics": {"accuracy": 0.0},
    }
    model_store.write(
        ModelBundle(version, manifest, bundle.featurizer, bundle.dictionary, bundle.forest)
    )
    if promote:
        model_store.promote(version)
    return version
