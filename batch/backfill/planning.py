"""Planning splits on the driver, from metadata only: sniffing the source format, the
path a source names, record-range / file-group / Kafka offset-range splits, rounds, and
the listings, Parquet files and Kafka watermarks they are planned from."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from batch.backfill.options import BackfillError, Split
from imagetag.errors import ServiceError
from imagetag.hadoop import canonical, from_uri, is_uri, parquet_files, spark_path
from imagetag.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


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


def _is_seq(path: Path) -> bool:
    try:
        return _magic(path)[:3] == b"SEQ"
    except OSError:
        return False
