"""The stream's raw archive rows, decoded in the JVM: Kafka records -> valid ImageEvents.

``archive_events`` keeps the records that are ImageEvents the tag query accepts, with Spark's
own Avro reader (``from_avro``, the ``spark-avro`` jar fetched with the Kafka connector) and
Spark SQL, and gives them the archive's columns (``contracts.ARCHIVE_SCHEMA``). A record is
kept when, as ``records.decode_events`` decides:

* its value is single-object-encoded Avro (``C3 01`` + fingerprint) of a known ImageEvent
  writer schema (``avro.writer_schemas``: the current one and ``schemas/history/``), resolved
  into the current schema;
* its body decodes (Spark's ``PERMISSIVE`` mode: a truncated or corrupt body gives a row of
  nulls, which the checks below refuse), with valid UTF-8 in every string;
* its id is the sha256 of its image bytes, and its producer timestamp is within what the
  archive's readers can hold (``records.PRODUCED_AT_MIN_MS`` .. ``PRODUCED_AT_MAX_MS``).

The rest is the tag query's business: it dead-letters them. Why not Python: the archive query
used to send every record through a Python worker (``mapInPandas`` over ``records
.archive_rows``) and back, only to decode it; measured on ``bench/bench_stream.py`` (see the
README's stream section), doing it in the JVM costs the stream less CPU per image and frees
the Python workers for the tagging. ``tests/integration/test_archive.py`` checks that both
decide the same for every kind of record, and give the same rows.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from imagetag.avro import HEADER_SIZE, MAGIC, load_schema, writer_schemas
from imagetag.contracts import ARCHIVE_COLUMNS
from imagetag.records import PRODUCED_AT_MAX_MS, PRODUCED_AT_MIN_MS

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

EVENT = "ImageEvent"
PERMISSIVE = {"mode": "PERMISSIVE"}  # a body that does not decode: a row of NULLs, no failure


def _decode(record: Column) -> Column:
    """A record (a struct with the Kafka ``value``) with, for each known writer schema ``i``,
    ``w<i>``: its body decoded with that schema when its header names it (else NULL), and for a
    writer that is not the current schema ``e<i>``: that resolved into the current schema."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import from_avro

    reader = load_schema(EVENT)
    resolve = PERMISSIVE | {"avroSchema": json.dumps(reader)}
    value = record["value"]
    header = value.substr(1, HEADER_SIZE)
    body = value.substr(F.lit(HEADER_SIZE + 1), F.length(value))
    for i, (fp, schema) in enumerate(writer_schemas(EVENT).items()):
        named = header == F.lit(bytearray(MAGIC + fp))
        writer = json.dumps(schema)
        record = record.withField(f"w{i}", F.when(named, from_avro(body, writer, PERMISSIVE)))
        if schema != reader:
            record = record.withField(f"e{i}", F.when(named, from_avro(body, writer, resolve)))
    return record


def _event(record: Column) -> Column:
    """A decoded record (``_decode``) as (partition, offset, timestamp, value, event,
    written): the ImageEvent in the current schema (NULL when the header names no known
    schema, a row of NULLs when the body does not decode) and the length of the body its
    writer's encoding of it takes (NULL unless it decoded; the body's length unless bytes
    follow the record)."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import to_avro

    reader = load_schema(EVENT)
    events, written = [], []
    for i, schema in enumerate(writer_schemas(EVENT).values()):
        event = record[f"w{i}"] if schema == reader else record[f"e{i}"]
        events.append(event)
        # Re-encoded only when it decoded: a row of NULLs does not fit the schema.
        size = F.length(to_avro(record[f"w{i}"], json.dumps(schema)))
        written.append(F.when(event["id"].isNotNull(), size))
    return F.struct(
        *(record[name].alias(name) for name in ("partition", "offset", "timestamp", "value")),
        F.coalesce(*events).alias("event"),
        F.coalesce(*written).alias("written"),
    )


def _valid(record: Column) -> Column:
    """Whether a record (``_event``) holds an ImageEvent the tag query accepts (see the module
    docstring)."""
    from pyspark.sql import functions as F

    event = record["event"]
    utf8 = F.is_valid_utf8
    return (
        (event["id"] == F.sha2(event["image"], 256))
        & (record["written"] == F.length(record["value"]) - HEADER_SIZE)
        & event["produced_at"].between(
            F.timestamp_millis(F.lit(PRODUCED_AT_MIN_MS)),
            F.timestamp_millis(F.lit(PRODUCED_AT_MAX_MS)),
        )
        & utf8(event["content_type"])
        & utf8(event["source"])
        & (event["label"].isNull() | utf8(event["label"]))
        & F.forall(F.map_keys(event["metadata"]), utf8)
        & F.forall(F.map_values(event["metadata"]), utf8)
    )


# The archive's columns (contracts.ARCHIVE_SCHEMA): the event, then where and when Kafka had it.
# The ingest date is the UTC day of the Kafka timestamp, whatever the session's time zone.
ARCHIVE_EXPRESSIONS = (
    "event.id AS id",
    "event.image AS image",
    "event.content_type AS content_type",
    "event.source AS source",
    "event.produced_at AS produced_at",
    "event.label AS label",
    "event.metadata AS metadata",
    "CAST(partition AS INT) AS kafka_partition",
    "CAST(offset AS BIGINT) AS kafka_offset",
    "timestamp AS ingested_at",
    "date_format(to_utc_timestamp(timestamp, current_timezone()), 'yyyy-MM-dd') AS ingest_date",
)
assert tuple(e.rsplit(" AS ", 1)[1] for e in ARCHIVE_EXPRESSIONS) == ARCHIVE_COLUMNS


def archive_events(rows: DataFrame) -> DataFrame:
    """Kafka-shaped rows (``value``, ``partition``, ``offset``, ``timestamp``) -> the valid
    ImageEvents among them as archive rows (``ARCHIVE_SCHEMA``), in the JVM.

    Each step is a higher-order function over a one-element array, whose survivors ``inline``
    makes rows again, so that each record is decoded and re-encoded once: written as columns and
    a ``where``, Spark's optimizer copied the decoding into every reference to the event (the
    filter's nine and the projection's), ``explain()`` showed."""
    from pyspark.sql import functions as F

    records = F.array(F.struct("partition", "offset", "timestamp", "value"))
    decoded = F.transform(F.transform(records, _decode), _event)
    return rows.select(F.inline(F.filter(decoded, _valid))).selectExpr(*ARCHIVE_EXPRESSIONS)
