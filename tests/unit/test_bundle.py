"""Model bundle store: save/load round trip, versions, the CURRENT pointer (local, no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imagetag.bundle import (
    BundleError,
    ModelBundle,
    ModelStore,
    build_manifest,
    list_versions,
    load_current,
    show,
)
from imagetag.dictionary import VisualDictionary
from imagetag.errors import NoModelError
from imagetag.features import get_featurizer
from imagetag.forest import Forest
from imagetag.pipeline import CurrentModel
from imagetag.settings import Settings

CLASSES = ["bag", "shoe"]


def make_bundle(store: ModelStore, accuracy: float = 0.9, k: int = 8) -> ModelBundle:
    """A tiny but complete bundle: dense SIFT, k words, one stump on word 0 of the vector."""
    featurizer = get_featurizer("dense-sift", size=32, step=8, scales=[3.0], margin=4)
    rng = np.random.default_rng(k)
    dictionary = VisualDictionary(rng.random((k, 128)).astype(np.float32), levels=2)
    nodes = pd.DataFrame(
        {
            "tree": [0, 0, 0],
            "id": [0, 1, 2],
            "left": [1, -1, -1],
            "right": [2, -1, -1],
            "feature": [0, -1, -1],
            "threshold": [0.1, np.inf, np.inf],
            "categorical": [False] * 3,
            "prediction": [0.0, 0.0, 1.0],
            "stats": [[1.0, 1.0], [3.0, 0.0], [0.0, 2.0]],
        }
    )
    forest = Forest.from_nodes(nodes, CLASSES, n_features=dictionary.dim)
    version = store.allocate_version()
    manifest = build_manifest(
        version,
        featurizer,
        dictionary,
        forest,
        trees=1,
        depth=1,
        data={"source": "generated", "fingerprint": "sha256:00", "train": 2, "test": 1},
        metrics={"accuracy": accuracy},
        vote_threshold=0.4,
        color_k=3,
    )
    return ModelBundle(version, manifest, featurizer, dictionary, forest)


def test_save_load_round_trip(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "models"))
    bundle = make_bundle(store)
    store.write(bundle)
    loaded = store.load(bundle.version)
    assert loaded.version == "v0001"
    assert loaded.manifest == json.loads(json.dumps(bundle.manifest))
    assert loaded.featurizer.params == bundle.featurizer.params
    assert loaded.dictionary.params == bundle.dictionary.params
    assert np.array_equal(loaded.dictionary.centers, bundle.dictionary.centers)
    assert loaded.classes == CLASSES
    assert (loaded.color_k, loaded.vote_threshold) == (3, 0.4)
    image = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    features = loaded.featurizer.extract(image)
    vector = loaded.dictionary.encode(features.descriptors, features.positions)
    expected = bundle.dictionary.encode(features.descriptors, features.positions)
    assert np.array_equal(vector, expected)
    assert np.array_equal(
        loaded.forest.vote(vector).fractions, bundle.forest.vote(vector).fractions
    )


def test_manifest_fields(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path))
    bundle = make_bundle(store)
    store.write(bundle)
    manifest = show(str(tmp_path), bundle.version)
    for key in (
        "version",
        "created",
        "featurizer",
        "k",
        "pooling",
        "trees",
        "depth",
        "data",
        "metrics",
    ):
        assert key in manifest
    assert manifest["featurizer"]["name"] == "dense-sift"
    assert manifest["data"]["fingerprint"] == "sha256:00"


def test_versions_current_and_promotion(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/store"
    store = ModelStore(uri)
    assert store.list_versions() == []
    assert store.current_version() is None
    with pytest.raises(BundleError, match="no CURRENT"):
        load_current(uri)
    first = make_bundle(store)
    store.write(first)
    second = make_bundle(store, k=4)
    store.write(second)
    incomplete = store.allocate_version()  # allocated, never written: not listed
    assert incomplete == "v0003"
    assert list_versions(uri) == ["v0001", "v0002"]
    with pytest.raises(BundleError, match="incomplete"):
        store.promote(incomplete)
    store.promote("v0001")
    assert load_current(uri).version == "v0001"
    store.promote("v0002")
    assert store.current_version() == "v0002"
    assert load_current(uri).dictionary.k == 4
    assert show(uri)["version"] == "v0002"
    # The pointer was replaced, not appended to, and no temporary file is left behind.
    root = tmp_path / "store"
    assert (root / "CURRENT").read_text() == "v0002\n"
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["CURRENT"]
    assert store.allocate_version() == "v0004"


class _Broadcast:
    def __init__(self, value: object) -> None:
        self.value = value
        self.unpersisted = False

    def unpersist(self) -> None:
        self.unpersisted = True


class _FakeSpark:
    """Stands in for a SparkSession: ``sparkContext.broadcast`` is all CurrentModel uses."""

    def __init__(self) -> None:
        self.sparkContext = self
        self.broadcasts: list[_Broadcast] = []

    def broadcast(self, value: object) -> _Broadcast:
        self.broadcasts.append(_Broadcast(value))
        return self.broadcasts[-1]


def test_current_model_reloads_when_current_moves(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path))
    for k in (4, 6):
        store.write(make_bundle(store, k=k))
    spark = _FakeSpark()
    models = CurrentModel(spark, Settings.model_validate({"model_store": str(tmp_path)}))  # type: ignore[arg-type]
    with pytest.raises(NoModelError, match="no model in"):
        models.get()
    store.promote("v0001")
    first = models.get()
    assert models.get() is first and len(spark.broadcasts) == 1  # no reload while CURRENT stays
    assert models.version == "v0001"
    store.promote("v0002")
    second = models.get()
    assert second.broadcast.value.dictionary.k == 6 and models.version == "v0002"
    assert second.key != first.key  # what a reused worker keys its unpickled model on
    assert spark.broadcasts[0].unpersisted  # the old model's broadcast is freed


def test_missing_version(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path))
    with pytest.raises(BundleError, match="no complete version"):
        store.load("v0042")
    with pytest.raises(BundleError, match="no version"):
        store.manifest("v0042")


def test_remote_uri_needs_spark(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="Spark session"):
        ModelStore("hdfs://namenode:8020/models")
