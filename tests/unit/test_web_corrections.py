"""A correction reaches the retrain corpus: the image is archived again with its new label,
and the corpus reader (``batch.retrain.latest_labels``) keeps each image's LAST labelled
record, so the correction wins over the label it was first sent with."""

from __future__ import annotations

import datetime as dt
from typing import Any

from batch.retrain import latest_labels


def test_the_latest_labelled_record_of_an_image_wins(local_spark: Any) -> None:
    first, later = dt.datetime(2026, 6, 1, 10), dt.datetime(2026, 6, 1, 11)
    rows = [
        ("a" * 64, b"A", "image/png", "Bag", first, 5),
        ("a" * 64, b"A", "image/png", "Shirt", later, 9),  # the correction, sent again
        ("b" * 64, b"B", "image/png", None, first, 6),
        ("b" * 64, b"B", "image/png", "Sandal", later, 7),
        ("c" * 64, b"C", "image/png", None, first, 8),
    ]
    frame = local_spark.createDataFrame(
        rows,
        "id string, image binary, content_type string, label string, "
        "ingested_at timestamp, kafka_offset long",
    )
    kept = {r["id"]: r["label"] for r in latest_labels(frame).collect()}
    assert kept == {"a" * 64: "Shirt", "b" * 64: "Sandal"}
