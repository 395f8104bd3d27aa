"""The worker-side training functions, called as mapInPandas would call them: no Spark."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pandas as pd

from batch.training.workers import _dense, encode_shards, evaluate_bundle_on_shards
from imagetag.bundle import ModelBundle
from imagetag.images import decode_image
from imagetag.settings import ImageLimits
from imagetag.testing.models import synthetic_bundle

LIMITS = ImageLimits()


def _png(path: Path, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    path.write_bytes(buf.tobytes())
    return str(path)


def _shards(tmp_path: Path) -> pd.DataFrame:
    """Two file shards: two images and an undecodable file, then only an undecodable file."""
    good = [_png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    bad = str(tmp_path / "bad.png")
    rows: list[dict[str, Any]] = [
        {"shard": 0, "split": "test", "kind": "files", "files": [good[0], bad, good[1]]},
        {"shard": 1, "split": "test", "kind": "files", "files": [bad]},
    ]
    for row in rows:
        row["file_labels"] = ["class1" if f == good[0] else "class2" for f in row["files"]]
    return pd.DataFrame(rows)


def _bundle() -> ModelBundle:
    return synthetic_bundle(trees=5, depth=4, k=16)


def _one_by_one(bundle: ModelBundle, paths: list[str]) -> np.ndarray:
    """What encoding each image on its own gives: the batch must agree."""
    vectors = []
    for path in paths:
        features = bundle.featurizer.extract(decode_image(Path(path).read_bytes(), LIMITS))
        vectors.append(bundle.dictionary.encode(features.descriptors, features.positions))
    return np.stack(vectors)


def test_encode_shards_encodes_the_decodable_records_of_each_shard(tmp_path: Path) -> None:
    bundle = _bundle()
    run = encode_shards(bundle.featurizer, LIMITS, SimpleNamespace(value=bundle.dictionary))
    (frame,) = list(run([_shards(tmp_path)]))  # the all-undecodable shard yields nothing
    names = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert list(frame["name"]) == names
    assert list(frame["label"]) == ["class1", "class2"]
    assert list(frame["split"]) == ["test", "test"]
    vectors = _dense(frame["features"], bundle.dictionary.dim)
    assert np.allclose(vectors, _one_by_one(bundle, names), atol=1e-6)


def test_evaluate_bundle_votes_on_the_same_vectors(tmp_path: Path) -> None:
    bundle = _bundle()
    run = evaluate_bundle_on_shards(SimpleNamespace(value=bundle), LIMITS)
    (frame,) = list(run([_shards(tmp_path)]))
    votes = bundle.forest.vote(_one_by_one(bundle, [str(tmp_path / n) for n in ("a.png", "b.png")]))
    assert list(frame["label"]) == ["class1", "class2"]
    assert list(frame["predicted"]) == [str(label) for label in votes.labels]
    assert np.allclose(np.stack(frame["fractions"].to_numpy()), votes.fractions)
