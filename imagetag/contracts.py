"""The row contracts between Spark and our pandas functions: every row schema, defined once.

Spark's ``mapInPandas`` and ``createDataFrame`` take a schema as a DDL string; the pandas
functions that build those frames name their columns. Both live here, side by side, so a
column added to one is added to the other (``tests/unit/test_contracts.py`` checks that each
column tuple is its schema's column names, in order). Pure: strings and tuples, no Spark.
"""

from __future__ import annotations

# -- Kafka-shaped rows ---------------------------------------------------------------------
# What Spark's Kafka source gives (and what the backfill builds from other sources): the input
# of ``pipeline.tag_frame`` and ``records.tag_kafka_rows``.
KAFKA_COLUMNS: tuple[str, ...] = ("key", "value", "topic", "partition", "offset", "timestamp")
KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"
)
# Where a record came from: passed through tag_batch so each result finds its record.
KAFKA_COORDINATES: tuple[str, ...] = ("topic", "partition", "offset")
Coords = tuple[str, int, int]  # a record's (topic, partition, offset)

# -- the tagger's output rows ---------------------------------------------------------------
# One row per input record, what the sinks write:
#   kind  = tagged | review | dead
#   id    = image id (or "" for records without one)
#   doc   = the Solr document as JSON (tagged)
#   key, value = the Kafka record to write (review: TagResult, dead: DeadLetter)
#   latency_ms = tagged_at - produced_at, for the progress line
#   cause = "stage/reason" (dead)
#   topic, partition, offset = the coordinates of the record it is the outcome of
OUTPUT_COLUMNS: tuple[str, ...] = (
    "kind",
    "id",
    "doc",
    "key",
    "value",
    "latency_ms",
    "cause",
    *KAFKA_COORDINATES,
)
OUTPUT_SCHEMA = (
    "kind string, id string, doc string, key binary, value binary, latency_ms long, cause string,"
    " topic string, partition int, offset long"
)

# -- the raw archive (Parquet under archive_dir, partitioned by ingest_date) ------------------
# Every valid ImageEvent the stream read, bytes included: what the backfill, the re-tag and
# the retraining read back: the ImageEvent's fields, then where and when it was read.
ARCHIVE_EVENT_COLUMNS: tuple[str, ...] = (
    "id",
    "image",
    "content_type",
    "source",
    "produced_at",
    "label",
    "metadata",
)
ARCHIVE_COLUMNS: tuple[str, ...] = (
    *ARCHIVE_EVENT_COLUMNS,
    "kafka_partition",
    "kafka_offset",
    "ingested_at",
    "ingest_date",
)
ARCHIVE_SCHEMA = (
    "id string, image binary, content_type string, source string, produced_at timestamp, "
    "label string, metadata map<string,string>, kafka_partition int, kafka_offset long, "
    "ingested_at timestamp, ingest_date string"
)
# The backfill's archive (archive_dir/_backfill) adds the split a row came from: the partition
# a re-done split overwrites.
BACKFILL_ARCHIVE_COLUMNS: tuple[str, ...] = (*ARCHIVE_COLUMNS, "split")
BACKFILL_ARCHIVE_SCHEMA = ARCHIVE_SCHEMA + ", split string"

# -- the training corpus as shards (batch/train.py) ------------------------------------------
SHARD_COLUMNS: tuple[str, ...] = (
    "shard",
    "split",
    "kind",
    "path",
    "start",
    "count",
    "files",
    "file_labels",
)
SHARD_SCHEMA = (
    "shard long, split string, kind string, path string, start long, count long, "
    "files array<string>, file_labels array<string>"
)


def column_names(schema: str) -> tuple[str, ...]:
    """The column names of a DDL schema (``"a int, b map<string,string>"`` -> ``("a", "b")``):
    split at the commas outside ``<...>``, first word of each field."""
    names: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(schema + ","):
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        elif char == "," and depth == 0:
            field = schema[start:i].strip()
            if field:
                names.append(field.split()[0])
            start = i + 1
    return tuple(names)
