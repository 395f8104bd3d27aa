"""Backfill: tag a historical corpus with Spark, through the stream's own code path.

    imagetag backfill SOURCE [--since DATE] [--retag older|review|all] [...]
    spark-submit --py-files deps.zip submit.py backfill SOURCE [...]

``run(settings, BackfillOptions(...))`` is the job (``imagetag.commands.backfill`` turns the
command line into the options); ``run_backfill`` runs it in a Spark session the caller owns.

SOURCE is read with Spark into *Kafka-shaped rows* (``key`` = image id, ``value`` = an Avro
ImageEvent, ``topic``/``partition``/``offset`` = where the record came from, ``timestamp`` =
its ingest time), so ``imagetag.pipeline.tag_rows`` and ``write_outputs`` — what the stream's
``foreachBatch`` calls — tag and write them unchanged: Solr upserts, the review topic, the
dead-letter topic. A round that fails deterministically is narrowed down and its poison
records are dead-lettered (``poison``); the backfill goes on and counts them. ImageEvents are built on the executors (``mapInPandas``); the id is the
sha256 of the bytes, so a re-done record upserts the same Solr document.

Sources (``--format`` or sniffed):

- ``archive``: the raw archive the stream writes (Parquet under ``archive_dir`` partitioned
  by ``ingest_date``; ``--since DATE`` keeps ``ingest_date >= DATE``), plus what earlier
  backfills archived under ``archive_dir/_backfill``;
- a folder tree, read with Spark's ``binaryFile`` source (recursive, ``--glob`` is its
  ``pathGlobFilter``), ``--label-from folder`` labels with the parent folder's name;
- Parquet with a bytes column (``--bytes-column``, optional ``--label-column``);
- Hadoop SequenceFile(s) of (Text filename, BytesWritable bytes), one split per file;
- CIFAR-10/100 python batches and Tiny Images ``.bin`` files, split into record ranges read on
  the executors (they need the path on a filesystem every executor mounts);
- ``kafka[:TOPIC]``: a topic (default ``kafka.topic_images``) from its earliest offset to its
  current end, with Spark's batch Kafka source.

Splits and rounds. The driver plans *splits* from metadata only (file listings, file sizes,
record counts, Kafka watermarks); each split is one unit of progress. Splits are processed in
*rounds* of ``--splits-per-round`` (default: Spark's default parallelism), one Spark job per
round, so memory stays flat however large the corpus: nothing but per-round counts comes back
to the driver. Images from external sources are also appended to the archive
(``archive_dir/_backfill``, one partition per split, overwritten when a split is re-done) so a
later ``--retag`` or ``imagetag reindex`` finds their bytes.

Resuming. Each finished split leaves a progress record ``done/<split>.json`` in the state
folder (``--state``, default ``<checkpoint_dir>/backfill/<hash of the source and options>``); a
restarted backfill skips finished splits. Solr writes are idempotent (ids are content hashes);
the review / dead-letter records of a round go out in one Kafka transaction with a ledger entry
naming its splits (``imagetag.sinks``), so a round re-done after a crash does not append them
twice, and a round killed half-way leaves nothing a read_committed consumer sees.

Re-tagging. ``--retag older`` re-tags archived images whose Solr document has a
``model_version`` other than ``CURRENT`` (ids paged from Solr with ``cursorMark``);
``--retag review`` those in the review topic not yet re-tagged by ``CURRENT``; ``--retag all``
both. The ids are collected once per run into the state folder (on an executor, never on the
driver), the archive is semi-joined with them, and an image the new model leaves undecided
(review) or cannot decode (dead) is also removed from Solr, so no document keeps an old
model's tags.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from imagetag.contracts import BACKFILL_ARCHIVE_SCHEMA, KAFKA_COLUMNS, KAFKA_SCHEMA
from imagetag.errors import ConfigError, ImagetagError, NoModelError, ServiceError
from imagetag.formats import CONTENT_TYPES, sniff_format
from imagetag.hadoop import (
    archive_roots,
    canonical,
    file_uri,
    from_hadoop,
    from_uri,
    is_uri,
    parquet_files,
    spark_path,
)
from imagetag.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from imagetag.sinks import TransactionalSink

log = logging.getLogger("imagetag.backfill")

# Source formats (``--format``; sniffed when not given) and re-tag modes (``--retag``).
KINDS = ("archive", "folder", "parquet", "sequencefile", "cifar", "tiny", "kafka")
RETAG_MODES = ("older", "review", "all")
# Default split sizes: records for tiny / cifar / kafka, files for folders, bytes for Parquet.
DEFAULT_SPLIT_RECORDS = {"tiny": 5000, "cifar": 5000, "kafka": 5000, "folder": 1000}
DEFAULT_SPLIT_BYTES = 64 * 1024 * 1024


class BackfillError(ImagetagError):
    """A backfill cannot start: unknown source, bad option, state of another source."""


# -- options and splits --------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillOptions:
    """What to backfill and how. ``kind`` None = sniffed from ``source``.

    Raises ConfigError when an option is out of range (an unknown ``kind`` or ``retag``, a
    split size, round size or batch size below 1, a negative ``max_splits``).
    """

    source: str = "archive"
    kind: str | None = None
    since: dt.date | None = None
    retag: str | None = None
    state_dir: str | None = None
    split_size: int | None = None  # records (files for a folder) per split
    split_bytes: int = DEFAULT_SPLIT_BYTES  # Parquet / archive splits
    splits_per_round: int | None = None
    max_splits: int | None = None
    glob: str | None = None
    label_from_folder: bool = False
    bytes_column: str = "image"
    label_column: str | None = None
    archive: bool | None = None  # None: archive images from external sources
    kafka_sinks: bool = True  # write review / dead letters (a rebuild writes Solr only)
    batch_size: int = 500  # Arrow records per batch handed to tag_batch
    progress: bool | None = None  # None: only on a terminal
    fresh: bool = False

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"unknown source format {self.kind!r}: one of {', '.join(KINDS)}")
        if self.retag is not None and self.retag not in RETAG_MODES:
            raise ConfigError(f"retag must be one of {', '.join(RETAG_MODES)}, not {self.retag!r}")
        for name, minimum in (
            ("split_size", 1),
            ("split_bytes", 1),
            ("splits_per_round", 1),
            ("max_splits", 0),
            ("batch_size", 1),
        ):
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ConfigError(f"{name} must be at least {minimum}, got {value}")


@dataclass(frozen=True)
class Split:
    """One unit of progress: files, a record range of a file, or a Kafka offset range.

    ``index`` is its position in the plan (the Kafka-shaped ``partition`` of its rows);
    ``count`` is the number of records when known (None: the whole file(s)).
    """

    index: int
    kind: str
    paths: tuple[str, ...]
    start: int = 0
    count: int | None = None
    part: int = -1  # Kafka partition
    size: int = 0  # bytes, when known

    @property
    def key(self) -> str:
        """Stable id of the split's content (the progress record's name)."""
        body = json.dumps([self.kind, list(self.paths), self.start, self.count, self.part])
        return hashlib.sha1(body.encode()).hexdigest()[:24]

    def describe(self) -> dict[str, Any]:
        first = self.paths[0] if self.paths else ""
        return {
            "index": self.index,
            "kind": self.kind,
            "files": len(self.paths),
            "first": first,
            "start": self.start,
            "count": self.count,
            "part": self.part,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Split:
        data = json.loads(text)
        data["paths"] = tuple(data["paths"])
        return cls(**data)


@dataclass
class BackfillSummary:
    """What a run did (this run's counts; ``splits_skipped`` were finished by earlier runs)."""

    source: str
    kind: str
    state_dir: str
    retag: str | None = None
    retag_ids: int | None = None
    splits_total: int = 0
    splits_skipped: int = 0
    splits_done: int = 0
    images: int = 0
    tagged: int = 0
    review: int = 0
    dead: int = 0
    quarantined: int = 0  # of dead: poison records of a split that failed deterministically
    refused: int = 0
    seconds: float = 0.0
    model_versions: list[str] = field(default_factory=list)

    @property
    def splits_remaining(self) -> int:
        return self.splits_total - self.splits_skipped - self.splits_done

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["splits_remaining"] = self.splits_remaining
        data["images_per_s"] = round(self.images_per_s, 1)
        data["seconds"] = round(self.seconds, 2)
        return data

    def format(self) -> str:
        retag = f" (re-tag {self.retag}: {self.retag_ids} ids)" if self.retag else ""
        return "\n".join(
            [
                f"source:   {self.kind} {self.source}{retag}",
                f"splits:   {self.splits_done} done now, {self.splits_skipped} done before, "
                f"{self.splits_remaining} left of {self.splits_total}  (state {self.state_dir})",
                f"images:   {self.images} in {self.seconds:.1f} s ({self.images_per_s:.1f} img/s)",
                f"tagged:   {self.tagged}",
                f"review:   {self.review}",
                f"dead:     {self.dead} ({self.quarantined} quarantined as poison)",
                f"refused:  {self.refused} (over limits.max_bytes, not read)",
                f"model:    {', '.join(self.model_versions) or '-'}",
            ]
        )


# -- pure helpers: sniffing, planning -----------------------------------------------------


def sniff_kind(source: str) -> str:
    """The source kind of ``source`` from its name / magic bytes; BackfillError if unknown."""
    if source == "archive" or source.startswith("archive:"):
        return "archive"
    if source == "kafka" or source.startswith("kafka:"):
        return "kafka"
    if is_uri(source):
        raise BackfillError(f"cannot sniff the format of {source}: pass --format")
    path = Path(canonical(source))
    if not path.exists():
        raise BackfillError(f"{source} does not exist")
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        if any(n.startswith("data_batch_") or n == "test_batch" for n in names):
            return "cifar"
        if (path / "_spark_metadata").is_dir():
            return "archive"
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
        if files and all(p.suffix == ".parquet" for p in files):
            return "parquet"
        if files and all(_magic(p)[:3] == b"SEQ" for p in files[:20]):
            return "sequencefile"
        return "folder"
    head = _magic(path)
    if head[:3] == b"SEQ":
        return "sequencefile"
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:1] == b"\x80":
        return "cifar"
    if path.suffix == ".bin":
        return "tiny"
    raise BackfillError(f"cannot tell what {source} holds: pass --format")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def source_path(source: str, kind: str, settings: Settings) -> str:
    """The path/URI/topic a source spec names (``archive`` -> ``archive_dir``)."""
    if kind == "archive":
        rest = source.split(":", 1)[1] if source.startswith("archive:") else ""
        return canonical(rest or settings.archive_dir)
    if kind == "kafka":
        rest = source.split(":", 1)[1] if source.startswith("kafka:") else ""
        return rest or settings.kafka.topic_images
    return canonical(source)


def plan_ranges(
    kind: str, paths: Sequence[tuple[str, int]], split_size: int, first_index: int = 0
) -> list[Split]:
    """Record-range splits over files of known record counts ``[(path, records), ...]``."""
    if split_size < 1:
        raise BackfillError(f"split size must be >= 1, got {split_size}")
    splits: list[Split] = []
    for path, records in paths:
        for start in range(0, records, split_size):
            index = first_index + len(splits)
            splits.append(Split(index, kind, (path,), start, min(split_size, records - start)))
    return splits


def plan_file_groups(
    kind: str,
    files: Iterable[tuple[str, int]],
    max_files: int | None = None,
    max_bytes: int | None = None,
) -> list[Split]:
    """Consecutive files grouped into splits of at most ``max_files`` files / ``max_bytes``
    bytes (a single larger file is a split of its own). ``files`` = [(path, size), ...] in a
    stable order, so a restart plans the same splits."""
    splits: list[Split] = []
    group: list[str] = []
    group_bytes = 0

    def flush() -> None:
        nonlocal group, group_bytes
        if group:
            count = len(group) if kind == "folder" else None
            splits.append(Split(len(splits), kind, tuple(group), 0, count, size=group_bytes))
            group, group_bytes = [], 0

    for path, size in files:
        full = (max_files is not None and len(group) >= max_files) or (
            max_bytes is not None and group and group_bytes + size > max_bytes
        )
        if full:
            flush()
        group.append(path)
        group_bytes += size
    flush()
    return splits


def plan_kafka_ranges(
    topic: str, watermarks: dict[int, tuple[int, int]], split_size: int
) -> list[Split]:
    """Offset-range splits ``[low, high)`` of each partition of ``topic``."""
    splits: list[Split] = []
    for partition in sorted(watermarks):
        low, high = watermarks[partition]
        for start in range(low, high, split_size):
            count = min(split_size, high - start)
            splits.append(Split(len(splits), "kafka", (topic,), start, count, part=partition))
    return splits


def rounds(splits: Sequence[Split], size: int) -> Iterator[list[Split]]:
    """Consecutive groups of ``size`` splits."""
    for i in range(0, len(splits), max(1, size)):
        yield list(splits[i : i + max(1, size)])


def state_hash(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- executor side: records -> Kafka-shaped rows -------------------------------------------


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
    (tiny / cifar / sequencefile)."""
    from imagetag import datasets

    path = split.paths[0]
    uri = file_uri(path)
    if split.kind == "tiny":
        records = datasets.read_tiny_images(path, split.start, split.count)
        for i, record in enumerate(records):
            index = split.start + i
            meta = {"dataset": "tiny-images", "name": record.name}
            yield i, f"{uri}#{index}", record.data, record.label, meta
    elif split.kind == "cifar":
        records = datasets.read_cifar10(path, split.start, split.count)
        for i, record in enumerate(records):
            index = split.start + i
            meta = {"dataset": "cifar", "name": record.name}
            yield i, f"{uri}#{index}", record.data, record.label, meta
    elif split.kind == "sequencefile":
        for i, record in enumerate(datasets.read_sequence_file(path)):
            meta = {"dataset": "sequence-file", "name": record.name}
            yield i, f"{uri}#{quote(record.name, safe='/:')}", record.data, record.label, meta
    else:  # pragma: no cover - the planner only sends these kinds
        raise BackfillError(f"split kind {split.kind} is not read on executors")


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
                    produced_at_ms=_ms(modified) or stamp_ms,
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
            ingested = _ms(record["ingested_at"]) or 0
            rows.append(
                event_row(
                    record["image"],
                    image_id=str(record["id"]),
                    content_type=str(record.get("content_type") or ""),
                    source=str(record.get("source") or ""),
                    label=record.get("label"),
                    metadata=dict(record.get("metadata") or {}),
                    produced_at_ms=_ms(record.get("produced_at")) or ingested,
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


def _ms(value: Any) -> int | None:
    """Epoch milliseconds from a pandas / datetime timestamp (None for missing)."""
    import pandas as pd

    if value is None or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, pd.Timestamp):
        return int(value.value // 1_000_000)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    return int(value)


def solr_ids_partition(settings_json: str, current: str, page: int = 10_000) -> Iterator[str]:
    """Ids of the Solr documents whose ``model_version`` is not ``current`` (cursorMark paging).

    Runs on one executor so that millions of ids never pass through the driver."""
    from imagetag.solr import solr_client

    settings = Settings.model_validate_json(settings_json)
    client = solr_client(settings)
    cursor = "*"
    escaped = current.replace("\\", "\\\\").replace('"', '\\"')
    while True:
        result = client.search(
            "*:*",
            fq=f'-model_version:"{escaped}"',
            fl="id",
            sort="id asc",
            rows=page,
            cursorMark=cursor,
        )
        for doc in result.docs:
            yield str(doc["id"])
        if not result.nextCursorMark or result.nextCursorMark == cursor:
            return
        cursor = result.nextCursorMark


def review_ids_frame(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: review-topic records (value = TagResult) -> (id, model_version)."""
    import pandas as pd

    from imagetag.avro import AvroDeserializer
    from imagetag.errors import RecordError

    deserialize = AvroDeserializer("TagResult")
    for frame in batches:
        out = []
        for value in frame["value"]:
            try:
                result = deserialize(value)
            except RecordError:
                continue  # not a TagResult: nothing to re-tag
            out.append((str(result["id"]), str(result.get("model_version") or "")))
        yield pd.DataFrame(out, columns=["id", "model_version"])


def solr_delete_partition(settings_json: str) -> Callable[[Iterable[Any]], Iterator[int]]:
    """mapPartitions body: remove documents by id (images a re-tag sent to review / DLQ)."""

    def delete(rows: Iterable[Any]) -> Iterator[int]:
        from imagetag.solr import solr_client

        ids = [row.id for row in rows if row.id]
        if not ids:
            return
        client = solr_client(Settings.model_validate_json(settings_json))
        for i in range(0, len(ids), 500):
            client.delete(id=ids[i : i + 500], commit=False)
        yield len(ids)

    return delete


# -- driver side: state ----------------------------------------------------------------------


# Kafka keeps at most offset.metadata.max.bytes (4096 by default) of a ledger entry's metadata.
_TOKEN_MAX_CHARS = 4000


def round_token(splits: Sequence[Split]) -> str:
    """The sink ledger's token for a round (see ``imagetag.sinks``): the keys of its splits,
    so a restarted run can tell which splits the last committed round wrote whatever rounds it
    forms now; a hash when the list would not fit in Kafka's offset metadata."""
    token = ",".join(s.key for s in splits)
    if len(token) > _TOKEN_MAX_CHARS:
        return "sha1:" + hashlib.sha1(token.encode()).hexdigest()
    return token


def token_splits(token: str | None) -> set[str]:
    """The split keys a ledger token names (none for a hashed or missing token)."""
    if not token or token.startswith("sha1:"):
        return set()
    return set(token.split(","))


class BackfillState:
    """The state folder: ``manifest.json``, ``done/<split>.json``, ``sinks/``, ``ids/``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.done_dir = self.folder / "done"

    def open(self, manifest: dict[str, Any], fresh: bool = False) -> dict[str, Any]:
        """Create the folder (wiped first when ``fresh``), or check that it belongs to the
        same source. Returns the manifest (with the first run's ``started_ms``)."""
        if fresh and self.folder.exists():
            shutil.rmtree(self.folder)
        self.done_dir.mkdir(parents=True, exist_ok=True)
        path = self.folder / "manifest.json"
        if path.exists():
            existing = json.loads(path.read_text())
            if existing.get("source") != manifest.get("source") or existing.get(
                "kind"
            ) != manifest.get("kind"):
                raise BackfillError(
                    f"state folder {self.folder} belongs to {existing.get('kind')} "
                    f"{existing.get('source')}: pass another --state or --fresh"
                )
            return dict(existing)
        _write_json(path, manifest)
        return manifest

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``state/lock`` (an flock: released if the process dies) for a run; a second
        backfill with the same state folder is refused instead of racing the first."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise BackfillError(
                    f"another backfill is running with the state folder {self.folder}"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def done_keys(self) -> set[str]:
        return {p.stem for p in self.done_dir.glob("*.json")}

    def finish(self, split: Split, round_counts: dict[str, int]) -> None:
        record = {**split.describe(), "finished_at": _now_iso(), "round": round_counts}
        _write_json(self.done_dir / f"{split.key}.json", record)

    @property
    def ids_dir(self) -> Path:
        return self.folder / "ids"

    @property
    def complete_marker(self) -> Path:
        return self.folder / "complete"

    def reset_progress(self) -> None:
        """Forget finished splits, the sink id and the re-tag id set (the manifest stays)."""
        for name in ("done", "sinks", "ids"):
            shutil.rmtree(self.folder / name, ignore_errors=True)
        self.complete_marker.unlink(missing_ok=True)
        self.done_dir.mkdir(parents=True, exist_ok=True)

    def sink_id(self) -> str:
        """The transactional id of this state's review / dead-letter writes: new with the state
        (a fresh start, or a re-tag asked again), the same across resumes, so the round an
        interrupted run was writing is recognised by its token."""
        path = self.folder / "sinks" / "id"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(f"imagetag-backfill-{uuid.uuid4().hex}")
            os.replace(tmp, path)
        return path.read_text().strip()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, default=str))
    os.replace(tmp, path)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# -- driver side: planning with Spark / Kafka metadata --------------------------------------


def list_folder(spark: SparkSession, root: str, glob: str | None) -> list[str]:
    """The files under ``root`` as Spark's binaryFile source lists them (recursive, hidden
    files skipped, ``glob`` as its pathGlobFilter), sorted."""
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    if glob:
        reader = reader.option("pathGlobFilter", glob)
    return sorted(from_uri(u) for u in reader.load(spark_path(root)).inputFiles())


def plan_parquet(
    spark: SparkSession,
    kind: str,
    roots: Sequence[str],
    split_bytes: int,
    since: dt.date | None = None,
) -> list[Split]:
    """Splits of the Parquet files under ``roots`` (only committed ones for a streaming sink,
    in ``hadoop.parquet_files``' stable order, so a restart plans the same splits), of at most
    ``split_bytes`` bytes each."""
    return plan_file_groups(kind, parquet_files(spark, roots, since), max_bytes=split_bytes)


def kafka_watermarks(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    """(low, high) offsets of every partition of ``topic``. Raises BackfillError when the topic
    does not exist, ServiceError when Kafka cannot be reached."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"imagetag-backfill-plan-{os.getpid()}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise BackfillError(f"topic {topic} not found at {settings.kafka.bootstrap_servers}")
        return {
            p: tuple(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30))  # type: ignore[misc]
            for p in sorted(found.partitions)
        }
    except KafkaException as exc:
        raise ServiceError("kafka", settings.kafka.bootstrap_servers, str(exc)) from exc
    finally:
        consumer.close()


# -- driver side: reading a round -----------------------------------------------------------


class Backfill:
    """One backfill run: plan, then tag and write round by round. See the module docstring."""

    def __init__(self, spark: SparkSession, settings: Settings, options: BackfillOptions) -> None:
        self.spark = spark
        self.settings = settings
        self.options = options
        self.kind = options.kind or sniff_kind(options.source)
        if options.retag is not None and self.kind != "archive":
            raise BackfillError("--retag re-tags from the archive: SOURCE must be 'archive'")
        self.path = source_path(options.source, self.kind, settings)
        self.topic_label = f"backfill:{self.kind}"
        self.archive_output = (
            options.archive
            if options.archive is not None
            else self.kind not in ("archive", "kafka")
        )
        self.current: str | None = None
        if options.retag:
            from imagetag.bundle import ModelStore

            self.current = ModelStore(settings.model_store, spark).current_version()
            if self.current is None:
                raise NoModelError(settings.model_store, "nothing to re-tag")
        identity = {
            "kind": self.kind,
            "source": self.path,
            "since": options.since,
            "retag": options.retag,
            "current": self.current,
            "glob": options.glob,
            "bytes_column": options.bytes_column,
            "label_column": options.label_column,
            "split_size": options.split_size,
            "split_bytes": options.split_bytes,
            "collection": settings.solr.collection,
        }
        self.state = BackfillState(
            options.state_dir
            or f"{settings.checkpoint_dir.rstrip('/')}/backfill/{state_hash(identity)}"
        )
        self.manifest = self.state.open(
            {"source": self.path, "kind": self.kind, "options": identity, "started_ms": _now_ms()},
            fresh=options.fresh,
        )
        self.stamp_ms = int(self.manifest["started_ms"])
        self.sink: TransactionalSink | None = None
        self.summary = BackfillSummary(
            source=self.path, kind=self.kind, state_dir=str(self.state.folder), retag=options.retag
        )

    # -- planning --------------------------------------------------------------------------
    def plan(self) -> list[Split]:
        kind, opts = self.kind, self.options
        size = opts.split_size or DEFAULT_SPLIT_RECORDS.get(kind, 5000)
        if kind == "tiny":
            from imagetag.datasets import count_records

            return plan_ranges(kind, [(self.path, count_records(self.path))], size)
        if kind == "cifar":
            from imagetag.datasets import cifar10_batches, count_records

            batches = cifar10_batches(self.path) if Path(self.path).is_dir() else [Path(self.path)]
            return plan_ranges(kind, [(str(b), count_records(b)) for b in batches], size)
        if kind == "sequencefile":
            root = Path(self.path)
            files = (
                sorted(str(p) for p in root.rglob("*") if p.is_file() and _is_seq(p))
                if root.is_dir()
                else [str(root)]
            )
            return plan_file_groups(kind, [(f, Path(f).stat().st_size) for f in files], 1)
        if kind == "folder":
            files = list_folder(self.spark, self.path, opts.glob)
            return plan_file_groups(kind, [(f, 0) for f in files], max_files=size)
        if kind == "parquet":
            return plan_parquet(self.spark, kind, [self.path], opts.split_bytes, opts.since)
        if kind == "archive":
            roots = archive_roots(self.settings, self.path)
            return plan_parquet(self.spark, kind, roots, opts.split_bytes, opts.since)
        if kind == "kafka":
            return plan_kafka_ranges(self.path, kafka_watermarks(self.settings, self.path), size)
        raise BackfillError(f"unknown source format {kind}")  # pragma: no cover

    # -- reading ---------------------------------------------------------------------------
    def read(self, splits: Sequence[Split]) -> DataFrame:
        """The round's records as Kafka-shaped rows (KAFKA_SCHEMA)."""
        if self.kind in ("tiny", "cifar", "sequencefile"):
            return self._read_on_executors(splits)
        if self.kind == "folder":
            return self._read_folder(splits)
        if self.kind == "parquet":
            return self._read_parquet(splits)
        if self.kind == "archive":
            return self._read_archive(splits)
        return self._read_kafka(splits)

    def _read_on_executors(self, splits: Sequence[Split]) -> DataFrame:
        topic, stamp, size = self.topic_label, self.stamp_ms, self.options.batch_size
        max_bytes = self.settings.limits.max_bytes
        descriptors = self.spark.sparkContext.parallelize(
            [(s.to_json(),) for s in splits], len(splits)
        )
        return self.spark.createDataFrame(descriptors, "split string").mapInPandas(
            lambda it: expand_splits(it, topic, stamp, size, max_bytes), KAFKA_SCHEMA
        )

    def _read_folder(self, splits: Sequence[Split]) -> DataFrame:
        from pyspark.sql import functions as F

        places = {
            path: (split.index, offset)
            for split in splits
            for offset, path in enumerate(split.paths)
        }
        files = self.spark.read.format("binaryFile").load(
            [spark_path(p) for s in splits for p in s.paths]
        )
        max_bytes = self.settings.limits.max_bytes
        listing = files.select("path", "length").collect()  # no content read
        oversize = [row for row in listing if row.length > max_bytes]
        for row in oversize:
            log.warning("%s: %d bytes over limits.max_bytes, not read", row.path, row.length)
        self.summary.refused += len(oversize)
        root, topic, stamp = self.path, self.topic_label, self.stamp_ms
        by_folder = self.options.label_from_folder
        rows = files.where(F.col("length") <= max_bytes).mapInPandas(
            lambda it: folder_rows(it, places, root, topic, stamp, by_folder), KAFKA_SCHEMA
        )
        # Spark's file scans skip empty files; they are records too (dead letters, `empty`).
        present = {from_hadoop(row.path) for row in listing}
        empty = [
            event_row(
                b"",
                source=file_uri(path),
                label=None,
                metadata={"dataset": "folder", "name": path},
                produced_at_ms=stamp,
                topic=topic,
                partition=index,
                offset=offset,
                timestamp_ms=stamp,
            )
            for path, (index, offset) in places.items()
            if path not in present
        ]
        if empty:
            rows = rows.unionByName(self.spark.createDataFrame(rows_frame(empty), KAFKA_SCHEMA))
        return rows

    def _read_parquet(self, splits: Sequence[Split]) -> DataFrame:
        from pyspark.sql import functions as F

        opts = self.options
        places = {p: s.index for s in splits for p in s.paths}
        frame = self.spark.read.parquet(*[spark_path(p) for s in splits for p in s.paths])
        if opts.bytes_column not in frame.columns:
            raise BackfillError(
                f"no column {opts.bytes_column!r} in {self.path} (columns: "
                f"{', '.join(frame.columns)}): pass --bytes-column"
            )
        columns = [F.col(opts.bytes_column).alias("image")]
        if opts.label_column:
            columns.append(F.col(opts.label_column).cast("string").alias("label"))
        columns += [F.col("_metadata.file_path"), F.col("_metadata.row_index")]
        max_bytes = self.settings.limits.max_bytes
        selected = frame.select(*columns)
        too_big = selected.where(F.length("image") > max_bytes).count()
        if too_big:
            log.warning("%d records over limits.max_bytes, not read", too_big)
        self.summary.refused += too_big
        topic, stamp, has_label = self.topic_label, self.stamp_ms, bool(opts.label_column)
        return selected.where(F.length("image") <= max_bytes).mapInPandas(
            lambda it: parquet_rows(it, places, topic, stamp, has_label), KAFKA_SCHEMA
        )

    def _read_archive(self, splits: Sequence[Split]) -> DataFrame:
        from pyspark.sql import functions as F

        places = {p: s.index for s in splits for p in s.paths}
        stream_root, backfill_root = archive_roots(self.settings, self.path)
        backfill_key = backfill_root.rstrip("/") + "/"
        by_root: dict[str, list[str]] = {stream_root: [], backfill_root: []}
        for split in splits:
            for p in split.paths:
                by_root[backfill_root if p.startswith(backfill_key) else stream_root].append(p)
        frames = []
        for root, paths in by_root.items():
            if not paths:
                continue
            frame = (
                self.spark.read.option("basePath", spark_path(root))
                .parquet(*[spark_path(p) for p in paths])
                .select(
                    "id",
                    "image",
                    "content_type",
                    "source",
                    "produced_at",
                    "label",
                    "metadata",
                    "ingested_at",
                    F.col("_metadata.file_path").alias("file_path"),
                    F.col("_metadata.row_index").alias("row_index"),
                )
            )
            frames.append(frame)
        archived = frames[0]
        for frame in frames[1:]:
            archived = archived.unionByName(frame)
        if self.options.retag:
            ids = self.spark.read.parquet(spark_path(canonical(str(self.state.ids_dir))))
            archived = archived.join(ids, "id", "left_semi").dropDuplicates(["id"])
        topic = self.topic_label
        return archived.mapInPandas(lambda it: archive_event_rows(it, places, topic), KAFKA_SCHEMA)

    def _read_kafka(self, splits: Sequence[Split]) -> DataFrame:
        from imagetag.pipeline import kafka_options

        frames = []
        for split in splits:
            topic, part = split.paths[0], str(split.part)
            end = split.start + (split.count or 0)
            frames.append(
                self.spark.read.format("kafka")
                .options(**kafka_options(self.settings))
                .option("assign", json.dumps({topic: [split.part]}))
                .option("startingOffsets", json.dumps({topic: {part: split.start}}))
                .option("endingOffsets", json.dumps({topic: {part: end}}))
                .option("failOnDataLoss", "false")
                .option(
                    "kafka.max.partition.fetch.bytes", str(self.settings.limits.max_bytes + 2**20)
                )
                .load()
                .selectExpr(*KAFKA_COLUMNS)
            )
        rows = frames[0]
        for frame in frames[1:]:
            rows = rows.union(frame)
        return rows

    # -- re-tag ids --------------------------------------------------------------------------
    def collect_retag_ids(self) -> int:
        """Write the ids to re-tag under ``state/ids`` (once per state); returns how many."""
        from pyspark.sql import functions as F

        ids_dir = self.state.ids_dir
        target = spark_path(canonical(str(ids_dir)))
        if not (ids_dir / "_SUCCESS").exists():
            assert self.current is not None
            mode = self.options.retag
            parts: list[DataFrame] = []
            if mode in ("older", "all"):
                settings_json, current = self.settings.model_dump_json(), self.current
                older = self.spark.sparkContext.parallelize([0], 1).mapPartitions(
                    lambda _: ((i,) for i in solr_ids_partition(settings_json, current))
                )
                parts.append(self.spark.createDataFrame(older, "id string"))
            if mode in ("review", "all"):
                from imagetag.pipeline import kafka_options

                review = (
                    self.spark.read.format("kafka")
                    .options(**kafka_options(self.settings))
                    .option("subscribe", self.settings.kafka.topic_review)
                    # only committed transactions: never an aborted attempt (imagetag.sinks)
                    .option("kafka.isolation.level", "read_committed")
                    .option("startingOffsets", "earliest")
                    .option("endingOffsets", "latest")
                    .option("failOnDataLoss", "false")
                    .load()
                    .select("value")
                    .mapInPandas(review_ids_frame, "id string, model_version string")
                    .groupBy("id")
                    .agg(F.max((F.col("model_version") == self.current).cast("int")).alias("now"))
                    .where("now = 0")
                    .select("id")
                )
                parts.append(review)
            ids = parts[0]
            for part in parts[1:]:
                ids = ids.union(part)
            ids.distinct().write.mode("overwrite").parquet(target)
        return int(self.spark.read.parquet(target).count())

    # -- running -----------------------------------------------------------------------------
    def run(self) -> BackfillSummary:
        """Plan, then tag and write round by round; returns the summary."""
        conf = "spark.sql.execution.arrow.maxRecordsPerBatch"
        previous = self.spark.conf.get(conf, None)
        self.spark.conf.set(conf, str(self.options.batch_size))  # bounds tag_batch's memory
        try:
            with self.state.lock():
                return self._run()
        finally:
            if self.sink is not None:
                self.sink.close()
                self.sink = None
            if previous is None:
                self.spark.conf.unset(conf)
            else:
                self.spark.conf.set(conf, previous)

    def _run(self) -> BackfillSummary:
        from imagetag.pipeline import CurrentModel

        opts, summary = self.options, self.summary
        started = time.monotonic()
        if opts.retag:
            if self.state.complete_marker.exists():
                # A re-tag is a query ("what is not on CURRENT now"): once a run of it finished,
                # the next run asks again instead of finding everything done.
                log.info("the previous re-tag finished: collecting the ids again")
                self.state.reset_progress()
            summary.retag_ids = self.collect_retag_ids()
            log.info("%d documents to re-tag with %s", summary.retag_ids, self.current)
        splits = self.plan() if not opts.retag or summary.retag_ids else []
        done = self.state.done_keys()
        pending = [s for s in splits if s.key not in done]
        summary.splits_total = len(splits)
        summary.splits_skipped = len(splits) - len(pending)
        if opts.max_splits is not None:
            pending = pending[: opts.max_splits]
        per_round = opts.splits_per_round or max(1, self.spark.sparkContext.defaultParallelism)
        log.info(
            "backfill %s %s: %d splits, %d done before, %d to do now (state %s)",
            self.kind,
            self.path,
            len(splits),
            summary.splits_skipped,
            len(pending),
            self.state.folder,
        )
        models = CurrentModel(self.spark, self.settings) if pending else None
        bar = _progress_bar(len(splits), summary.splits_skipped, opts.progress)
        try:
            for round_splits, token in self._rounds(pending, per_round):
                assert models is not None
                model_bc = models.get()
                if models.version and models.version not in summary.model_versions:
                    summary.model_versions.append(models.version)
                counts = self._run_round(round_splits, token, model_bc)
                for split in round_splits:
                    self.state.finish(split, counts)
                summary.splits_done += len(round_splits)
                for kind in ("tagged", "review", "dead", "quarantined"):
                    setattr(summary, kind, getattr(summary, kind) + counts.get(kind, 0))
                summary.images += sum(counts.get(k, 0) for k in ("tagged", "review", "dead"))
                summary.seconds = time.monotonic() - started
                bar.update(len(round_splits))
                bar.set_postfix_str(
                    f"{summary.images} img, {summary.images_per_s:.0f} img/s", refresh=True
                )
        finally:
            bar.close()
            summary.seconds = time.monotonic() - started
        if summary.splits_done:
            self._commit()
        if summary.splits_remaining == 0:
            self.state.complete_marker.touch()
        return summary

    def _rounds(
        self, pending: Sequence[Split], per_round: int
    ) -> Iterator[tuple[Sequence[Split], str]]:
        """The rounds to run, each with its sink token. Splits the ledger's last committed round
        wrote, but whose progress records a crash prevented, come first, as one round under
        that round's token: Solr gets the same documents again (idempotent) and the review /
        dead-letter records, already committed, are not appended again."""
        if pending and self.sink is None:
            from imagetag.sinks import TransactionalSink

            self.sink = TransactionalSink(self.settings, self.state.sink_id())
        last = self.sink.last_token() if self.sink is not None else None
        written = token_splits(last)
        recovered = [s for s in pending if s.key in written]
        if recovered:
            assert last is not None
            log.info("%d splits of the last round were written before the crash", len(recovered))
            yield recovered, last
        for round_splits in rounds([s for s in pending if s.key not in written], per_round):
            yield round_splits, round_token(round_splits)

    def _run_round(self, splits: Sequence[Split], token: str, model_bc: Any) -> dict[str, int]:
        """Read, archive, tag and write one round; a round that fails deterministically is
        narrowed down and its poison records dead-lettered (``pipeline.tag_rows``)."""
        from pyspark import StorageLevel

        from imagetag.pipeline import tag_rows, write_outputs

        rows = self.read(splits)
        if self.archive_output:
            rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
            self._archive(rows, splits)
        try:
            tagged = tag_rows(rows, model_bc, self.settings, f"round {token[:60]}")
            try:
                assert self.sink is not None
                written = write_outputs(
                    self.settings, tagged, self.sink, token, appends=self.options.kafka_sinks
                )
                if self.options.retag:
                    settings_json = self.settings.model_dump_json()
                    tagged.out.where("kind != 'tagged' AND id != ''").select(
                        "id"
                    ).rdd.mapPartitions(solr_delete_partition(settings_json)).collect()
            finally:
                tagged.unpersist()
        finally:
            if self.archive_output:
                rows.unpersist()
        return written.counts

    def _archive(self, rows: DataFrame, splits: Sequence[Split]) -> None:
        """Append the round's valid ImageEvents to ``archive_dir/_backfill`` (one partition per
        split, replaced when a split is re-done), in the stream's archive columns."""
        kafka = self.kind == "kafka"
        table = [(s.part if kafka else s.index, s.start, s.count, s.key) for s in splits]

        def split_of(partition: int, offset: int) -> str:
            for part, start, count, key in table:
                if part == partition and (not kafka or start <= offset < start + (count or 0)):
                    return key
            return "unknown"

        (
            rows.mapInPandas(lambda it: archive_split_rows(it, split_of), BACKFILL_ARCHIVE_SCHEMA)
            .write.mode("overwrite")
            .option("partitionOverwriteMode", "dynamic")
            .partitionBy("ingest_date", "split")
            .parquet(spark_path(archive_roots(self.settings)[1]))
        )

    def _commit(self) -> None:
        """One hard commit at the end, so that what the summary counts is searchable now."""
        from imagetag.solr import solr_client

        try:
            solr_client(self.settings).commit()
        except Exception as exc:  # commitWithin makes it visible shortly anyway
            log.warning(
                "final Solr commit failed (%s); documents become visible by commitWithin", exc
            )


def _is_seq(path: Path) -> bool:
    try:
        return _magic(path)[:3] == b"SEQ"
    except OSError:
        return False


def _now_ms() -> int:
    return int(time.time() * 1000)


def _progress_bar(total: int, initial: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="split",
        desc="backfill",
        file=sys.stderr,
        disable=None if enabled is None else not enabled,
        dynamic_ncols=True,
    )


def run_backfill(
    spark: SparkSession, settings: Settings, options: BackfillOptions
) -> BackfillSummary:
    """Plan, tag and write in ``spark``; returns the summary. Raises BackfillError for a source
    it cannot read or a state folder of another source, NoModelError when the model store has
    no CURRENT model, ServiceError when Kafka or Solr cannot be reached."""
    return Backfill(spark, settings, options).run()


def run(settings: Settings, options: BackfillOptions) -> BackfillSummary:
    """The backfill job in its own Spark session (stopped at the end): what ``imagetag
    backfill`` runs. Raises as ``run_backfill`` does."""
    from imagetag.spark import spark_session

    spark = spark_session(settings, "imagetag-backfill")
    try:
        return run_backfill(spark, settings, options)
    finally:
        with contextlib.suppress(Exception):
            spark.stop()
