"""Executor side: records -> Kafka-shaped rows (KAFKA_SCHEMA) carrying Avro ImageEvents.

``event_row`` / ``rows_frame`` build the rows; the rest are ``mapInPandas`` bodies (split
descriptors, ``binaryFile`` rows, Parquet rows, archive rows, and Kafka-shaped rows ->
archive rows). Spark pickles them by reference: they stay in this importable module.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from batch.backfill.options import Split
from imagetag import sourceformats
from imagetag.contracts import KAFKA_COLUMNS
from imagetag.formats import CONTENT_TYPES, sniff_format
from imagetag.hadoop import file_uri, from_hadoop, from_uri
from imagetag.records import epoch_ms
from imagetag.sourceformats import SourceKind

if TYPE_CHECKING:
    import pandas as pd


log = logging.getLogger("imagetag.backfill")


@cache
def _event_serializer() -> Any:
    from imagetag.avro import AvroSerializer

    return AvroSerializer("ImageEvent")


def content_type_of(data: bytes) -> str:
    fmt = sniff_format(data)
    return CONTENT_TYPES[fmt] if fmt else "application/octet-stream"


def event_row(
    image: bytes,
    *,
    source: str,
    label: str | None,
    metadata: dict[str, str],
    produced_at_ms: int,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    image_id: str | None = None,
    content_type: str | None = None,
) -> tuple[bytes, bytes, str, int, int, int]:
    """One Kafka-shaped row carrying an ImageEvent, as a producer would have sent it.

    The id is the sha256 of ``image`` unless given (the archive keeps the producer's id; the
    tagger checks it against the bytes and dead-letters a mismatch, as the stream does).
    """
    image = bytes(image)
    image_id = image_id or hashlib.sha256(image).hexdigest()
    value = _event_serializer()(
        {
            "id": image_id,
            "image": image,
            "content_type": content_type or content_type_of(image),
            "source": source,
            "produced_at": int(produced_at_ms),
            "label": None if label is None else str(label),
            "metadata": {str(k): str(v) for k, v in metadata.items()},
        }
    )
    return image_id.encode(), value, topic, int(partition), int(offset), int(timestamp_ms)


def rows_frame(rows: list[tuple[bytes, bytes, str, int, int, int]]) -> pd.DataFrame:
    """Kafka-shaped rows as the pandas frame mapInPandas returns (KAFKA_SCHEMA)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=KAFKA_COLUMNS)
    frame["partition"] = frame["partition"].astype("int32")
    frame["offset"] = frame["offset"].astype("int64")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"].astype("int64"), unit="ms", utc=True)
    return frame


def split_records(split: Split) -> Iterator[tuple[int, str, bytes, str | None, dict[str, str]]]:
    """(offset in split, source URI, bytes, label, metadata) of a split read on an executor
    by the registry's reader (idx, CIFAR and Tiny Images ranges; SequenceFiles whole). The
    source URI is ``<file>#<index>``, or ``<file>#<name>`` for a SequenceFile's named records."""
    kind = SourceKind(split.kind)
    path = Path(split.paths[0])
    uri = file_uri(str(path))
    dataset = sourceformats.FORMATS[kind].dataset
    records = sourceformats.read(kind, path, split.start, split.count)
    for i, (_, index, record) in enumerate(records):
        anchor = quote(record.name, safe="/:") if kind is SourceKind.SEQUENCEFILE else index
        meta = {"dataset": dataset, "name": record.name}
        yield i, f"{uri}#{anchor}", record.data, record.label, meta


def expand_splits(
    batches: Iterable[pd.DataFrame], topic: str, stamp_ms: int, batch_size: int, max_bytes: int
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: split descriptors (column ``split``) -> Kafka-shaped rows, read on
    the executor ``batch_size`` records at a time."""
    for descriptors in batches:
        for text in descriptors["split"]:
            split = Split.from_json(text)
            rows: list[tuple[bytes, bytes, str, int, int, int]] = []
            for offset, source, data, label, meta in split_records(split):
                if len(data) > max_bytes:
                    log.warning("%s: %d bytes over limits.max_bytes, not read", source, len(data))
                    continue
                rows.append(
                    event_row(
                        data,
                        source=source,
                        label=label,
                        metadata=meta,
                        produced_at_ms=stamp_ms,
                        topic=topic,
                        partition=split.index,
                        offset=offset,
                        timestamp_ms=stamp_ms,
                    )
                )
                if len(rows) >= batch_size:
                    yield rows_frame(rows)
                    rows = []
            if rows:
                yield rows_frame(rows)


def folder_rows(
    batches: Iterable[pd.DataFrame],
    places: dict[str, tuple[int, int]],
    root: str,
    topic: str,
    stamp_ms: int,
    label_from_folder: bool,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body over binaryFile rows (path, modificationTime, length, content)."""
    root_key = root.rstrip("/")
    for files in batches:
        rows = []
        for path, modified, content in zip(
            files["path"], files["modificationTime"], files["content"], strict=True
        ):
            key = from_hadoop(path)
            index, offset = places.get(key, (-1, -1))
            relative = key[len(root_key) + 1 :] if key.startswith(root_key + "/") else key
            parent = relative.rsplit("/", 1)[0] if "/" in relative else None
            label = parent.rsplit("/", 1)[-1] if label_from_folder and parent else None
            rows.append(
                event_row(
                    content,
                    source=file_uri(key),
                    label=label,
                    metadata={"dataset": "folder", "name": relative},
                    produced_at_ms=epoch_ms(modified) or stamp_ms,
                    topic=topic,
                    partition=index,
                    offset=offset,
                    timestamp_ms=stamp_ms,
                )
            )
        if rows:
            yield rows_frame(rows)


def parquet_rows(
    batches: Iterable[pd.DataFrame],
    places: dict[str, int],
    topic: str,
    stamp_ms: int,
    has_label: bool,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body over Parquet rows (image, [label], file_path, row_index)."""
    for frame in batches:
        labels = frame["label"] if has_label else [None] * len(frame)
        rows = []
        for data, label, path, row_index in zip(
            frame["image"], labels, frame["file_path"], frame["row_index"], strict=True
        ):
            data = b"" if data is None else data  # a null image is a dead letter (empty), not lost
            key = from_uri(path)
            rows.append(
                event_row(
                    data,
                    source=f"{file_uri(key)}#{int(row_index)}",
                    label=None if label is None or label != label else str(label),
                    metadata={"dataset": "parquet"},
                    produced_at_ms=stamp_ms,
                    topic=topic,
                    partition=places.get(key, -1),
                    offset=int(row_index),
                    timestamp_ms=stamp_ms,
                )
            )
        if rows:
            yield rows_frame(rows)


def archive_event_rows(
    batches: Iterable[pd.DataFrame], places: dict[str, int], topic: str
) -> Iterator[pd.DataFrame]:
    """mapInPandas body over archive rows: the archived ImageEvent, re-encoded as it was sent
    (the producer's id, source, label, metadata and times are kept)."""
    for frame in batches:
        rows = []
        for record in frame.to_dict("records"):
            ingested = epoch_ms(record["ingested_at"]) or 0
            rows.append(
                event_row(
                    record["image"],
                    image_id=str(record["id"]),
                    content_type=str(record.get("content_type") or ""),
                    source=str(record.get("source") or ""),
                    label=record.get("label"),
                    metadata=dict(record.get("metadata") or {}),
                    produced_at_ms=epoch_ms(record.get("produced_at")) or ingested,
                    topic=topic,
                    partition=places.get(from_uri(record["file_path"]), -1),
                    offset=int(record["row_index"]),
                    timestamp_ms=ingested,
                )
            )
        if rows:
            yield rows_frame(rows)


def archive_split_rows(
    batches: Iterable[pd.DataFrame], split_of: Callable[[int, int], str]
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: Kafka-shaped rows -> archive rows (the stream's archive columns) plus
    the ``split`` they belong to (the archive partition a re-done split overwrites)."""
    from imagetag.records import archive_rows

    for rows in batches:
        archived = archive_rows(rows)
        archived["split"] = [
            split_of(int(p), int(o))
            for p, o in zip(archived["kafka_partition"], archived["kafka_offset"], strict=True)
        ]
        yield archived
