"""``tag_batch``: the one tagging function the stream, the backfill, the tests and the bench share.

Input: a pandas batch of ImageEvents. Output: three DataFrames,

- **tagged**: images where at least ``threshold`` of the trees voted for the winning class;
  these become Solr documents.
- **review**: decoded images below the threshold (kept for re-tagging after retraining, so
  they also carry the original bytes and event fields).
- **dead**: records that could not be decoded, featurized or described, with the original
  bytes, the stage and a reason token (they go to the dead-letter topic).

Every input row lands in exactly one output, and nothing a record contains makes this function
raise: each record's own steps run in isolation (a refusal keeps its reason; any other
exception makes that record, and only it, dead with reason ``internal_error`` and the
exception), and when a vectorised step over the batch raises, it is re-run record by record to
find the culprit. Neither Spark nor Kafka is imported here: the callers own the plumbing.

Per row (Python loop, one OpenCV call each): decode with limits, extract local features,
perceptual hash, dominant colours, thumbnail. Per batch (vectorised): encode every image's
descriptors against the dictionary in one pass, then one forest evaluation for all rows; both
over ``CHUNK_ROWS`` records at a time, which keeps their temporaries in the caches.

Tags: every class whose vote fraction is >= threshold, most-voted first (so a tag list has at
most ``floor(1 / threshold)`` entries); ``top_tag``: the most-voted class (ties: the class
listed first in the model), set in review rows too.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pandas as pd

from imagetag.bundle import ModelBundle
from imagetag.contracts import KAFKA_COORDINATES
from imagetag.errors import INTERNAL_ERROR, RecordError
from imagetag.features import Features, dominant_colors, phash_hex, single_threaded_opencv
from imagetag.images import DecodedImage, Limits, decode_image, make_thumbnail
from imagetag.settings import ImageLimits

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 64

# Records are described and classified this many at a time. The vectorised steps' temporaries
# grow with the rows they take (the scores of every descriptor against every word: 169 x 256
# floats an image with the dense-SIFT model), and so does the memory the described records hold
# until they are classified; past a few MB they no longer fit in the caches. Measured on one
# core with the dense-SIFT model, calls of 1000 rows (``bench/bench_tag_batch.py``): CPU ms an
# image 7.39 with 1000 rows a pass, 7.16 with 500, 5.94 with 100, 5.77 with 32, 5.85 with 10.
CHUNK_ROWS = 32


TAGGED_COLUMNS: tuple[str, ...] = (
    "id",
    "tags",  # list[str]
    "top_tag",  # str
    "confidence",  # float: vote fraction of top_tag
    "votes",  # dict[str, float]: vote fraction of every class
    "model_version",  # str
    "width",  # int
    "height",  # int
    "format",  # str: jpeg, png, gif, bmp, tiff, webp
    "size",  # int: bytes
    "phash",  # str: 16 hex digits
    "colors",  # list[str]: "#rrggbb", most frequent first
    "vector",  # list[float]: encoded vector (or its projection when > 1024 values)
    "thumbnail",  # str: base64 JPEG, longer side <= 64 px
    "label",  # str | None: ground truth when the producer knew it
    "source",  # str
    "produced_at",  # int: producer timestamp, ms since the epoch (UTC)
    "ingested_at",  # int: Kafka record timestamp when known, else tagged_at (ms)
    "tagged_at",  # int: when this batch was tagged (ms)
)
# Review rows also carry what is needed to re-tag them later from the review topic.
REVIEW_COLUMNS: tuple[str, ...] = (*TAGGED_COLUMNS, "image", "content_type", "metadata")
DEAD_COLUMNS: tuple[str, ...] = (
    "id",
    "image",  # bytes: the original image bytes
    "stage",  # decode | featurize | describe | classify | document
    "reason",  # token, e.g. truncated, too_many_pixels, not_an_image, internal_error
    "detail",  # human sentence
    "source",
    "content_type",
    "produced_at",
)


def tag_batch(
    batch: pd.DataFrame,
    model: ModelBundle,
    *,
    threshold: float | None = None,
    limits: Limits | None = None,
    now_ms: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tag a batch of ImageEvents with ``model``.

    ``batch`` columns: ``id`` (sha256 hex), ``image`` (bytes), ``content_type``, ``source``,
    ``produced_at`` (ms), ``label`` (str or None), ``metadata`` (dict or None); optionally
    ``topic``/``partition``/``offset`` and ``timestamp`` (Kafka's, datetime or ms).
    ``threshold`` defaults to the bundle's (``settings.vote_threshold`` is what callers pass);
    ``limits`` to :class:`~imagetag.settings.ImageLimits` defaults.

    Returns ``(tagged, review, dead)`` with the columns :data:`TAGGED_COLUMNS`,
    :data:`REVIEW_COLUMNS` and :data:`DEAD_COLUMNS` (+ Kafka coordinates when present).
    """
    single_threaded_opencv()
    threshold = model.vote_threshold if threshold is None else float(threshold)
    limits = limits or ImageLimits()
    tagged_at = int(time.time() * 1000) if now_ms is None else int(now_ms)
    # Kafka coordinates are passed through when the batch has them (the stream's batches do).
    kafka = [c for c in KAFKA_COORDINATES if c in batch.columns]

    dead: list[dict[str, Any]] = []
    tagged_rows: list[dict[str, Any]] = []
    review_rows: list[dict[str, Any]] = []
    rows = batch.to_dict("records")
    for start in range(0, len(rows), CHUNK_ROWS):
        good: list[_Decoded] = []
        for row in rows[start : start + CHUNK_ROWS]:
            decoded = _describe(row, model, limits, tagged_at)
            if isinstance(decoded, RecordError):
                dead.append(_dead_row(row, decoded, kafka))
            else:
                good.append(decoded)
        for item, classified in _classify(model, good):
            if isinstance(classified, RecordError):
                dead.append(_dead_row(item.row, classified, kafka))
                continue
            try:
                out = _finish(item, classified, model.classes, threshold, kafka)
            except Exception as exc:  # isolation: this record, and only it, is dead
                dead.append(_dead_row(item.row, internal_error("document", exc, item.data), kafka))
                continue
            (tagged_rows if out["tags"] else review_rows).append(out)

    return (
        _frame(tagged_rows, TAGGED_COLUMNS, kafka),
        _frame(review_rows, REVIEW_COLUMNS, kafka),
        _frame(dead, DEAD_COLUMNS, kafka),
    )


@dataclass
class _Decoded:
    """One record past the per-record steps: its row, bytes, features and document fields."""

    row: dict[str, Any]
    data: bytes
    features: Features
    document: dict[str, Any]


@dataclass
class _Classified:
    """One record's share of the batch's vectorised steps."""

    label: str
    confidence: float
    fractions: np.ndarray
    vector: np.ndarray


def _describe(
    row: dict[str, Any], model: ModelBundle, limits: Limits, tagged_at: int
) -> _Decoded | RecordError:
    """Decode, featurize and describe one record; any failure becomes its RecordError.

    A refusal keeps its own stage and reason; anything else that raises is an
    ``internal_error`` of the stage it happened in (the record goes to the dead-letter topic
    with the exception, the batch goes on).
    """
    stage = "decode"
    data = b""
    try:
        data = _bytes(row.get("image"))
        image = decode_image(data, limits)
        stage = "featurize"
        try:
            features = model.featurizer.extract(image)
        except cv2.error as exc:
            raise RecordError("featurize", "opencv_error", exc.msg, data) from exc
        stage = "describe"
        document = _document(row, data, image, model, tagged_at)
    except RecordError as err:
        return err
    except Exception as exc:
        return internal_error(stage, exc, data)
    return _Decoded(row, data, features, document)


def _classify(
    model: ModelBundle, items: list[_Decoded]
) -> Iterator[tuple[_Decoded, _Classified | RecordError]]:
    """Encode and vote for the whole batch at once; if that raises, record by record, so the
    record that makes it raise is found and dead-lettered alone."""
    if not items:
        return
    try:
        results = _vectorised(model, items)
    except Exception:
        log.warning("encode/vote failed for a batch of %d; retrying record by record", len(items))
    else:
        yield from zip(items, results, strict=True)
        return
    for item in items:
        try:
            [result] = _vectorised(model, [item])
        except Exception as exc:
            yield item, internal_error("classify", exc, item.data)
        else:
            yield item, result


def _vectorised(model: ModelBundle, items: list[_Decoded]) -> list[_Classified]:
    vectors = _encode(model, [item.features for item in items])
    labels, confidence, fractions = model.forest.vote(vectors)
    search = model.dictionary.search_vector(vectors)
    return [
        _Classified(str(labels[i]), float(confidence[i]), fractions[i], search[i])
        for i in range(len(items))
    ]


def _finish(
    item: _Decoded,
    classified: _Classified,
    classes: list[str],
    threshold: float,
    kafka: list[str],
) -> dict[str, Any]:
    """The tagged (or review) row of one classified record."""
    row, votes = item.row, classified.fractions
    out = dict(item.document)
    order = np.argsort(-votes, kind="stable")
    out["tags"] = [classes[j] for j in order if votes[j] >= threshold]
    out["top_tag"] = classified.label
    out["confidence"] = classified.confidence
    out["votes"] = {c: float(v) for c, v in zip(classes, votes, strict=True)}
    out["vector"] = classified.vector.astype(float).tolist()
    for column in kafka:
        out[column] = row.get(column)
    if not out["tags"]:
        out["image"] = item.data
        out["content_type"] = row.get("content_type")
        out["metadata"] = row.get("metadata")
    return out


def internal_error(stage: str, exc: BaseException, data: bytes) -> RecordError:
    """What an unexpected exception while handling one record becomes: a dead letter with
    reason ``internal_error``, the exception's type and message, and the original bytes."""
    log.debug("internal error at %s", stage, exc_info=exc)
    return RecordError(stage, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:2000], data)


def _encode(model: ModelBundle, features: list[Features]) -> np.ndarray:
    """One dictionary pass for the whole batch (descriptors stacked, image index alongside)."""
    counts = np.array([len(f) for f in features], np.int64)
    dim = model.dictionary.descriptor_dim
    descriptors = (
        np.concatenate([f.descriptors for f in features])
        if counts.sum()
        else np.zeros((0, dim), np.float32)
    )
    positions = (
        np.concatenate([f.positions for f in features])
        if counts.sum()
        else np.zeros((0, 2), np.float32)
    )
    image_index = np.repeat(np.arange(len(features)), counts)
    return model.dictionary.encode_batch(descriptors, image_index, len(features), positions)


def _document(
    row: dict[str, Any],
    data: bytes,
    image: DecodedImage,
    model: ModelBundle,
    tagged_at: int,
) -> dict[str, Any]:
    """The fields of one image's document that need the decoded pixels (per record)."""
    colors = dominant_colors(image, k=model.color_k)
    return {
        "id": row.get("id"),
        "model_version": model.version,
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "size": len(data),
        "phash": phash_hex(image),
        "colors": [colour for colour, _ in colors],
        "thumbnail": base64.b64encode(make_thumbnail(image, THUMBNAIL_SIDE)).decode("ascii"),
        "label": _optional_str(row.get("label")),
        "source": row.get("source"),
        "produced_at": _millis(row.get("produced_at")),
        "ingested_at": _millis(row.get("timestamp")) or tagged_at,
        "tagged_at": tagged_at,
    }


def _dead_row(row: dict[str, Any], err: RecordError, kafka: list[str]) -> dict[str, Any]:
    out = {
        "id": row.get("id"),
        "image": err.original if err.original is not None else _bytes(row.get("image")),
        "stage": err.stage,
        "reason": err.reason,
        "detail": err.detail,
        "source": row.get("source"),
        "content_type": row.get("content_type"),
        "produced_at": _millis(row.get("produced_at")),
    }
    for column in kafka:
        out[column] = row.get(column)
    return out


def _frame(rows: list[dict[str, Any]], columns: tuple[str, ...], kafka: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*columns, *kafka])


def _bytes(value: Any) -> bytes:
    """The image bytes of a row (None -> empty; bytearray / memoryview -> bytes)."""
    return b"" if value is None else bytes(value)


def _optional_str(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def _millis(value: Any) -> int | None:
    """Milliseconds since the epoch from an int, a pandas/numpy timestamp or None/NaT."""
    if value is None:
        return None
    if isinstance(value, pd.Timestamp | np.datetime64):
        stamp = pd.Timestamp(value)
        if pd.isna(stamp):
            return None
        if stamp.tzinfo is None:
            stamp = stamp.tz_localize("UTC")
        return int(stamp.value // 1_000_000)
    if isinstance(value, float) and np.isnan(value):
        return None
    return int(value)
