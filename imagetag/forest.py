"""The random forest compiled into numpy arrays, so that every tree's own (hard) vote is known.

Spark's ``RandomForestClassificationModel`` averages each tree's *leaf class distribution*
(soft votes). Tagging needs hard votes instead: the confidence of a tag is the fraction of
trees whose own prediction is that class (the TinyTags design). So the trained model is
compiled into flat arrays (one row per node of every tree) and evaluated with numpy, a batch
at a time: all rows × all trees descend one level per step, ``max_depth`` vectorised steps.

Compilation reads the nodes from the model as Spark saves it (``<model>/data``: one row per
node with ``treeID``, ``nodeData.id``, children, split feature and threshold, leaf
prediction and class statistics). That is the model's own persisted form, exact to the last
bit of every threshold, and it is read in one pass; walking the JVM node objects through
py4j instead costs several round trips per node (minutes for a million nodes).

Split semantics are Spark's: a continuous split sends a row left when
``value <= threshold``. Categorical splits are not produced by our training (all features
are continuous) and are refused.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from imagetag.errors import ImagetagError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ARRAYS_FILE = "forest.npz"
CLASSES_FILE = "forest.json"
# The node arrays, by constructor argument (and attribute) name: what ARRAYS_FILE holds, so
# that save and load name them in one place.
ARRAY_NAMES = ("roots", "feature", "threshold", "left", "right", "leaf_class", "leaf_proba")


class ForestError(ImagetagError, ValueError):
    """A Spark model that cannot be compiled, or input that does not fit the forest."""


class Votes(NamedTuple):
    """Hard votes of every tree for a batch of ``n`` rows over ``C`` classes."""

    labels: np.ndarray  # object[n]: the winning class name (ties: the first class in order)
    confidence: np.ndarray  # float32[n]: fraction of trees voting for the winning class
    fractions: np.ndarray  # float32[n, C]: fraction of trees voting for each class


class Forest:
    """A compiled forest. Arrays are indexed by global node number (all trees concatenated).

    ``feature``/``threshold``: the split of an internal node; ``left``/``right``: global child
    numbers; a leaf points to itself on both sides (with feature 0 and threshold +inf), so
    descending past a leaf is a no-op. ``leaf_class``: the leaf's predicted class index (its
    own hard vote; -1 for internal nodes). ``leaf_proba``: the leaf's normalised class
    statistics (what Spark averages), kept to check the compilation against Spark.
    """

    def __init__(
        self,
        classes: list[str],
        n_features: int,
        roots: np.ndarray,
        feature: np.ndarray,
        threshold: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        leaf_class: np.ndarray,
        leaf_proba: np.ndarray,
        max_depth: int,
    ) -> None:
        self.classes = list(classes)
        self.n_features = int(n_features)
        self.roots = np.asarray(roots, np.int32)
        self.feature = np.asarray(feature, np.int32)
        self.threshold = np.asarray(threshold, np.float64)
        self.left = np.asarray(left, np.int32)
        self.right = np.asarray(right, np.int32)
        self.leaf_class = np.asarray(leaf_class, np.int16)
        self.leaf_proba = np.asarray(leaf_proba, np.float32)
        self.max_depth = int(max_depth)

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    @property
    def n_nodes(self) -> int:
        return len(self.feature)

    def __repr__(self) -> str:
        return (
            f"Forest(trees={self.n_trees}, nodes={self.n_nodes}, depth={self.max_depth}, "
            f"features={self.n_features}, classes={len(self.classes)})"
        )

    # -- evaluation ----------------------------------------------------------------------------

    def leaves(self, vectors: np.ndarray) -> np.ndarray:
        """Global node number of the leaf each row reaches in each tree: ``int32[n, trees]``."""
        x = np.asarray(vectors)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ForestError(f"vectors must be [n, {self.n_features}], got {list(x.shape)}")
        rows = np.arange(len(x))[:, None]
        node = np.broadcast_to(self.roots, (len(x), self.n_trees)).copy()
        for _ in range(self.max_depth):
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return node

    def vote(self, vectors: np.ndarray) -> Votes:
        """Every tree's hard vote for each row of ``vectors`` (``[n, n_features]``).

        Returns :class:`Votes` ``(labels, confidence, fractions)``; the winner is the class with
        most votes (ties broken towards the class listed first), confidence its vote fraction.
        """
        leaf = self.leaves(vectors)
        n, n_classes = len(leaf), len(self.classes)
        tree_votes = self.leaf_class[leaf].astype(np.int64)  # n × trees
        flat = (np.arange(n)[:, None] * n_classes + tree_votes).ravel()
        counts = np.bincount(flat, minlength=n * n_classes).reshape(n, n_classes)
        fractions = (counts / self.n_trees).astype(np.float32)
        winners = counts.argmax(axis=1)
        labels = np.asarray(self.classes, dtype=object)[winners]
        confidence = fractions[np.arange(n), winners]
        return Votes(labels, confidence, fractions)

    def probability(self, vectors: np.ndarray) -> np.ndarray:
        """Spark's soft-vote probability (mean of leaf class distributions): ``float64[n, C]``."""
        leaf = self.leaves(vectors)
        proba = self.leaf_proba[leaf].astype(np.float64).sum(axis=1)
        totals = proba.sum(axis=1, keepdims=True)
        return proba / np.where(totals > 0, totals, 1.0)

    # -- persistence ---------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write ``forest.npz`` (arrays) and ``forest.json`` (classes, sizes) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            folder / ARRAYS_FILE, **{name: getattr(self, name) for name in ARRAY_NAMES}
        )
        meta = {
            "classes": self.classes,
            "n_features": self.n_features,
            "max_depth": self.max_depth,
            "n_trees": self.n_trees,
            "n_nodes": self.n_nodes,
        }
        (folder / CLASSES_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Forest:
        """Read what :meth:`save` wrote."""
        folder = Path(folder)
        meta = json.loads((folder / CLASSES_FILE).read_text())
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as arrays:
            return cls(
                meta["classes"],
                meta["n_features"],
                max_depth=meta["max_depth"],
                **{name: arrays[name] for name in ARRAY_NAMES},
            )

    # -- compilation ---------------------------------------------------------------------------

    @classmethod
    def from_nodes(cls, nodes: pd.DataFrame, classes: list[str], n_features: int) -> Forest:
        """Compile from a table of nodes, one row per node of every tree.

        Columns: ``tree`` (tree number), ``id`` (node number within its tree), ``left``,
        ``right`` (child ids, -1 for a leaf), ``feature``, ``threshold`` (continuous split),
        ``categorical`` (bool), ``prediction`` (class index), ``stats`` (class statistics).
        Raises ForestError for categorical splits or inconsistent trees.
        """
        if nodes.empty:
            raise ForestError("a forest needs at least one node")
        if nodes["categorical"].any():
            raise ForestError("categorical splits are not supported (features are continuous)")
        nodes = nodes.sort_values(["tree", "id"], kind="stable").reset_index(drop=True)
        tree = nodes["tree"].to_numpy(np.int64)
        node_id = nodes["id"].to_numpy(np.int64)
        _, starts, sizes = np.unique(tree, return_index=True, return_counts=True)
        base = np.repeat(starts, sizes)  # global number of each row's tree root
        if not np.array_equal(node_id, np.arange(len(nodes)) - base):
            raise ForestError("node ids of a tree must be 0..n-1")
        is_leaf = nodes["left"].to_numpy(np.int64) < 0
        own = np.arange(len(nodes))
        left = np.where(is_leaf, own, nodes["left"].to_numpy(np.int64) + base)
        right = np.where(is_leaf, own, nodes["right"].to_numpy(np.int64) + base)
        feature = np.where(is_leaf, 0, nodes["feature"].to_numpy(np.int64))
        threshold = np.where(is_leaf, np.inf, nodes["threshold"].to_numpy(np.float64))
        leaf_class = np.where(is_leaf, nodes["prediction"].to_numpy(np.float64), -1).astype(
            np.int16
        )
        stats = np.zeros((len(nodes), len(classes)), np.float32)
        leaf_rows = np.flatnonzero(is_leaf)
        if len(leaf_rows):
            leaf_stats = np.stack([np.asarray(nodes["stats"].iat[i]) for i in leaf_rows])
            if leaf_stats.shape[1] != len(classes):
                raise ForestError(
                    f"leaves hold {leaf_stats.shape[1]} class statistics for {len(classes)} classes"
                )
            totals = leaf_stats.sum(axis=1, keepdims=True)
            stats[leaf_rows] = leaf_stats / np.where(totals > 0, totals, 1.0)
        if (leaf_class[is_leaf] < 0).any() or (leaf_class >= len(classes)).any():
            raise ForestError("leaf predictions outside the class list")
        if (feature >= n_features).any():
            raise ForestError(f"split on a feature >= n_features={n_features}")
        depth = _max_depth(left, right, starts)
        return cls(
            classes,
            n_features,
            roots=starts,
            feature=feature,
            threshold=threshold,
            left=left,
            right=right,
            leaf_class=leaf_class,
            leaf_proba=stats,
            max_depth=depth,
        )

    @classmethod
    def from_saved_model(
        cls,
        path: str,
        classes: list[str],
        n_features: int,
        spark: SparkSession | None = None,
    ) -> Forest:
        """Compile the ``RandomForestClassificationModel`` saved by Spark at ``path``.

        With ``spark`` the node data is read through Spark (any Hadoop filesystem URI);
        without it ``path`` must be a local folder, read with pyarrow.
        """
        if spark is not None:
            frame = spark.read.parquet(f"{path.rstrip('/')}/data").selectExpr(
                "treeID AS tree",
                "nodeData.id AS id",
                "nodeData.leftChild AS left",
                "nodeData.rightChild AS right",
                "nodeData.split.featureIndex AS feature",
                "nodeData.split.leftCategoriesOrThreshold AS cut",
                "nodeData.split.numCategories AS num_categories",
                "nodeData.prediction AS prediction",
                "nodeData.impurityStats AS stats",
            )
            nodes = pd.DataFrame(frame.toPandas())
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(Path(path) / "data")
            node = table.column("nodeData").combine_chunks().flatten()
            names = table.column("nodeData").type
            fields = {names.field(i).name: node[i] for i in range(names.num_fields)}
            split = fields["split"].flatten()
            split_names = fields["split"].type
            split_fields = {split_names.field(i).name: split[i] for i in range(len(split))}
            nodes = pd.DataFrame(
                {
                    "tree": table.column("treeID").to_numpy(),
                    "id": fields["id"].to_numpy(),
                    "left": fields["leftChild"].to_numpy(),
                    "right": fields["rightChild"].to_numpy(),
                    "feature": split_fields["featureIndex"].to_numpy(),
                    "cut": split_fields["leftCategoriesOrThreshold"].to_pylist(),
                    "num_categories": split_fields["numCategories"].to_numpy(),
                    "prediction": fields["prediction"].to_numpy(),
                    "stats": fields["impurityStats"].to_pylist(),
                }
            )
        is_leaf = nodes["left"].to_numpy() < 0
        nodes["categorical"] = (nodes["num_categories"].to_numpy() >= 0) & ~is_leaf
        nodes["threshold"] = [
            float(cut[0]) if len(cut) else np.inf for cut in nodes["cut"].tolist()
        ]
        return cls.from_nodes(nodes, classes, n_features)

    @classmethod
    def from_spark_model(
        cls, model: Any, classes: list[str], spark: SparkSession, path: str | None = None
    ) -> Forest:
        """Compile a fitted ``RandomForestClassificationModel``.

        ``path``: where the model is (or is to be) saved; a temporary local folder when None.
        """
        if model.numFeatures <= 0:
            raise ForestError("the Spark model does not know its number of features")
        if model.numClasses != len(classes):
            raise ForestError(f"model has {model.numClasses} classes, {len(classes)} names given")
        if path is not None:
            if not _exists(spark, path):
                model.write().save(path)
            return cls.from_saved_model(path, classes, model.numFeatures, spark)
        with tempfile.TemporaryDirectory(prefix="imagetag-forest-") as tmp:
            target = str(Path(tmp) / "model")
            model.write().save(target)
            return cls.from_saved_model(target, classes, model.numFeatures, spark)


def _max_depth(left: np.ndarray, right: np.ndarray, roots: np.ndarray) -> int:
    """Edges on the longest root-to-leaf path of any tree (breadth-first, vectorised)."""
    frontier = np.asarray(roots, np.int64)
    depth = 0
    while True:
        internal = frontier[left[frontier] != frontier]
        if len(internal) == 0:
            return depth
        frontier = np.concatenate([left[internal], right[internal]])
        depth += 1


def _exists(spark: SparkSession, path: str) -> bool:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return bool(fs.exists(hadoop_path))
