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
from imagetag import sourceformats
from imagetag.errors import ServiceError
from imagetag.hadoop import canonical, from_uri, is_uri, parquet_files, spark_path
from imagetag.settings import Settings
from imagetag.sourceformats import SourceKind, named_service

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def sniff_kind(source: str) -> SourceKind:
    """The source kind of ``source`` by the registry's rules (:mod:`imagetag.sourceformats`);
    BackfillError if it cannot be told."""
    service = named_service(source)
    if service is not None:
        return service[0]
    if sourceformats.fashion_mnist_split(source) is not None:
        return SourceKind.IDX
    if is_uri(source):
        raise BackfillError(f"cannot sniff the format of {source}: pass --format")
    path = Path(canonical(source))
    if not path.exists():
        raise BackfillError(f"{source} does not exist")
    kind = sourceformats.sniff_path(path)
    if kind is None:
        raise BackfillError(f"cannot tell what {source} holds: pass --format")
    return kind


def source_path(source: str, kind: SourceKind, settings: Settings) -> str:
    """The path/URI/topic a source spec names (``archive`` -> ``archive_dir``, ``kafka`` ->
    the images topic, ``fashion-mnist[:test]`` -> Debian's idx file)."""
    service = named_service(source)
    if kind is SourceKind.ARCHIVE:
        return canonical((service[1] if service else "") or settings.archive_dir)
    if kind is SourceKind.KAFKA:
        return (service[1] if service else "") or settings.kafka.topic_images
    split = sourceformats.fashion_mnist_split(source)
    if split is not None:
        return str(sourceformats.fashion_mnist(split))
    return canonical(source)


def plan_record_ranges(kind: SourceKind, path: str, split_size: int) -> list[Split]:
    """Record-range splits of every part of an indexable file source (a CIFAR folder's
    batches, say), counted from headers, sizes or pickles: no image is decoded."""
    files = sourceformats.parts(kind, Path(path))
    return plan_ranges(kind, [(str(f), sourceformats.count(kind, f)) for f in files], split_size)


def plan_ranges(
    kind: SourceKind, paths: Sequence[tuple[str, int]], split_size: int, first_index: int = 0
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
    kind: SourceKind,
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
            count = len(group) if kind == SourceKind.FOLDER else None
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
            splits.append(
                Split(len(splits), SourceKind.KAFKA, (topic,), start, count, part=partition)
            )
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
    kind: SourceKind,
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
