"""Helpers of the backfill / retrain / reindex integration tests: small images, a hand-built
model bundle (no training: fast and deterministic), and the stream's archive. What landed in
Solr and in the topics is read with ``imagetag.testing.services``."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from batch.backfill.readers import event_row, rows_frame
from imagetag.dictionary import VisualDictionary
from imagetag.images import decode_image
from imagetag.settings import ImageLimits, Settings
from imagetag.testing.models import hand_built_bundle, save_bundle, small_featurizer, stump

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


def hand_model(store: str, sample: list[bytes], seed: int = 0, promote: bool = True) -> str:
    """Write (and promote) a bundle without training: dense SIFT, 8 words drawn from the
    sample's own descriptors, and ten stumps on the most variable words at different
    quantiles, so the votes spread: most images reach the 0.40 threshold (tagged), about a
    fifth do not (review). Returns the version."""
    featurizer = small_featurizer()
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
    nodes = []
    for tree in range(10):
        feature = int(spread[tree % len(spread)])
        threshold = float(np.quantile(vectors[:, feature], [0.5, 0.3, 0.7][tree % 3]))
        nodes += stump(tree, feature, threshold, tree % 4, (tree + 1) % 4, len(CLASSES))
    bundle = hand_built_bundle(featurizer, dictionary, nodes, CLASSES, version="unsaved")
    return save_bundle(store, bundle, promote=promote)


def write_archive(
    spark: SparkSession, settings: Settings, images: Sequence[tuple[bytes, str | None]]
) -> None:
    """The stream's raw archive, as its archive query writes it (records.archive_rows)."""
    from imagetag.contracts import ARCHIVE_SCHEMA
    from streaming.job import archive_partition

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
