"""Helpers of the backfill / retrain / reindex integration tests: small images, a hand-built
model bundle (no training: fast and deterministic), and readers of what landed in Solr and in
the review topic."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
import requests

from batch.backfill import event_row, rows_frame
from imagetag.avro import AvroDeserializer
from imagetag.bundle import ModelBundle, ModelStore
from imagetag.dictionary import VisualDictionary
from imagetag.features import get_featurizer
from imagetag.forest import Forest
from imagetag.images import decode_image
from imagetag.kafka_admin import read_topic
from imagetag.settings import ImageLimits, Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["red", "green", "blue", "grey"]


def images(count: int, seed: int) -> list[np.ndarray]:
    """Distinct 32x32 BGR images: smooth colour fields with a few small squares."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        low = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        image = cv2.resize(low, (32, 32), interpolation=cv2.INTER_CUBIC)
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, 28, 2))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(image, (x, y), (x + 4, y + 4), color, -1)
        out.append(image)
    return out


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_folder(root: Path, count: int, seed: int = 7) -> set[str]:
    """``count`` PNGs under ``root/class<i % 4>/`` plus a non-image file; returns the ids of
    the distinct images."""
    ids: set[str] = set()
    for i, image in enumerate(images(count, seed)):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        data = png(image)
        (folder / f"img{i:05d}.png").write_bytes(data)
        ids.add(sha256(data))
    (root / "README.txt").write_text("not an image: the tagger dead-letters it")
    return ids


def _leaf(tree: int, node: int, prediction: int) -> dict[str, Any]:
    stats = [0.0] * len(CLASSES)
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
        "stats": stats,
    }


def hand_model(store: str, sample: list[bytes], seed: int = 0, promote: bool = True) -> str:
    """Write (and promote) a bundle without training: dense SIFT, 8 words drawn from the
    sample's own descriptors, and ten stumps on the most variable words at different
    quantiles, so the votes spread: most images reach the 0.40 threshold (tagged), about a
    fifth do not (review). Returns the version."""
    featurizer = get_featurizer("dense-sift", size=32, step=8, scales=[3.0], margin=4)
    features = [featurizer.extract(decode_image(data, ImageLimits())) for data in sample]
    descriptors = np.concatenate([f.descriptors for f in features])
    rng = np.random.default_rng(seed)
    centers = descriptors[rng.choice(len(descriptors), 8, replace=False)].astype(np.float32)
    dictionary = VisualDictionary(centers, levels=1, normalization="sqrt")
    counts = np.array([len(f) for f in features])
    vectors = dictionary.encode_batch(
        descriptors,
        np.repeat(np.arange(len(features)), counts),
        len(features),
        np.concatenate([f.positions for f in features]),
    )
    spread = np.argsort(-vectors.std(axis=0))
    rows = []
    for tree in range(10):
        feature = int(spread[tree % len(spread)])
        threshold = float(np.quantile(vectors[:, feature], [0.5, 0.3, 0.7][tree % 3]))
        left, right = tree % 4, (tree + 1) % 4
        rows += [
            {
                **_leaf(tree, 0, left),
                "left": 1,
                "right": 2,
                "feature": feature,
                "threshold": threshold,
            },
            _leaf(tree, 1, left),
            _leaf(tree, 2, right),
        ]
    forest = Forest.from_nodes(pd.DataFrame(rows), CLASSES, n_features=dictionary.dim)
    model_store = ModelStore(store)
    version = model_store.allocate_version()
    manifest = {
        "version": version,
        "vote_threshold": 0.4,
        "color_k": 2,
        "featurizer": {"name": featurizer.name, "params": featurizer.params},
        "metrics": {"accuracy": 0.0},
    }
    model_store.write(ModelBundle(version, manifest, featurizer, dictionary, forest))
    if promote:
        model_store.promote(version)
    return version


def solr_docs(settings: Settings, collection: str | None = None) -> list[dict[str, Any]]:
    """Every document (id, model_version) of the collection, after a commit (cursorMark)."""
    url = f"{settings.solr.url}/{collection or settings.solr.collection}"
    requests.get(f"{url}/update", params={"commit": "true"}, timeout=60).raise_for_status()
    docs: list[dict[str, Any]] = []
    cursor = "*"
    while True:
        body = requests.get(
            f"{url}/select",
            params={
                "q": "*:*",
                "fl": "id,model_version",
                "rows": "2000",
                "sort": "id asc",
                "cursorMark": cursor,
                "wt": "json",
            },
            timeout=60,
        ).json()
        docs.extend(body["response"]["docs"])
        if body["nextCursorMark"] == cursor:
            return docs
        cursor = body["nextCursorMark"]


def solr_ids(settings: Settings, collection: str | None = None) -> list[str]:
    return [d["id"] for d in solr_docs(settings, collection)]


def solr_count(settings: Settings, collection: str | None = None) -> int:
    url = f"{settings.solr.url}/{collection or settings.solr.collection}/select"
    body = requests.get(url, params={"q": "*:*", "rows": "0", "wt": "json"}, timeout=30).json()
    return int(body["response"]["numFound"])


def topic_values(settings: Settings, topic: str) -> list[bytes]:
    """Every committed record value of ``topic``, from the beginning to its current end."""
    return [value for _, value in read_topic(settings, topic, timeout_s=120)]


def review_ids(settings: Settings) -> list[str]:
    """Image ids of the TagResults in the review topic (with repeats, if any)."""
    deserialize = AvroDeserializer("TagResult")
    return [deserialize(v)["id"] for v in topic_values(settings, settings.kafka.topic_review)]


def write_archive(
    spark: SparkSession, settings: Settings, images: Sequence[tuple[bytes, str | None]]
) -> None:
    """The stream's raw archive, as its archive query writes it (records.archive_rows)."""
    from streaming.job import ARCHIVE_SCHEMA, archive_partition

    now = int(time.time() * 1000)
    rows = rows_frame(
        [
            event_row(
                data,
                source=f"test://fashion/{i}",
                label=label,
                metadata={},
                produced_at_ms=now,
                topic=settings.kafka.topic_images,
                partition=0,
                offset=i,
                timestamp_ms=now,
            )
            for i, (data, label) in enumerate(images)
        ]
    )
    (
        spark.createDataFrame(rows)
        .mapInPandas(archive_partition, ARCHIVE_SCHEMA)
        .write.mode("append")
        .partitionBy("ingest_date")
        .parquet(settings.archive_dir)
    )
