"""The archive query's JVM decoding (imagetag.archive) keeps exactly the records the tag query
accepts (records.decode_events), and gives them the rows the Python archive gave."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import pandas as pd

from imagetag.archive import archive_events
from imagetag.avro import MAGIC, AvroSerializer
from imagetag.contracts import ARCHIVE_COLUMNS, KAFKA_SCHEMA
from imagetag.records import PRODUCED_AT_MAX_MS, archive_rows, decode_events

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

NOW_MS = 1_780_000_000_000  # 2026-05-28T20:26:40Z
LAST_MS = 1_780_012_799_999  # 2026-05-28T23:59:59.999Z
IMAGE = b"\x89PNG\r\n\x1a\n not decoded by the archive, only hashed"


def event(image: bytes = IMAGE, **fields: Any) -> bytes:
    record = {
        "id": hashlib.sha256(image).hexdigest(),
        "image": image,
        "content_type": "image/png",
        "source": "test://archive/SRC1",
        "produced_at": NOW_MS - 5_000,
        "label": "Shirt",
        "metadata": {"k": "v", "dataset": "META"},
    } | fields
    return AvroSerializer("ImageEvent")(record)


def replaced(value: bytes, old: bytes, new: bytes) -> bytes:
    """``value`` with ``old`` (met once) replaced by ``new`` of the same length: invalid UTF-8
    placed inside a string the serializer would not write."""
    assert value.count(old) == 1 and len(old) == len(new)
    return value.replace(old, new)


def records() -> list[tuple[str, bytes | None]]:
    """(what it is, the Kafka value): every kind of record the tag query keeps or refuses."""
    valid = event()
    return [
        ("valid", valid),
        ("valid, no label, no metadata", event(image=IMAGE + b"2", label=None, metadata={})),
        ("valid, bytes after the body", event(image=IMAGE + b"3") + b"\x00\x01"),
        ("no value", None),
        ("empty value", b""),
        ("not Avro", b"\x00 not avro at all"),
        ("unknown schema", MAGIC + b"\x01" * 8 + valid[10:]),
        ("truncated body", valid[: len(valid) // 2]),
        ("id not the image's sha256", event(id="0" * 64)),
        ("id in upper case", event(id=hashlib.sha256(IMAGE).hexdigest().upper())),
        ("produced_at past pandas", event(produced_at=PRODUCED_AT_MAX_MS + 1)),
        ("produced_at past the JVM's microseconds", event(produced_at=2**62)),
        ("produced_at before 1970", event(produced_at=-86_400_000)),
        ("source not UTF-8", replaced(valid, b"SRC1", b"\xff\xfeSR")),
        ("metadata not UTF-8", replaced(valid, b"META", b"M\xc3\x28A")),
        ("label not UTF-8", replaced(valid, b"Shirt", b"Sh\xe9rt")),
    ]


def kafka_rows(cases: list[tuple[str, bytes | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": [b"k" if value else None for _, value in cases],
            "value": [value for _, value in cases],
            "topic": "images",
            "partition": pd.Series([i % 2 for i in range(len(cases))], dtype="int32"),
            "offset": pd.Series(range(100, 100 + len(cases)), dtype="int64"),
            # one a millisecond before midnight UTC: its ingest date is still that day's
            "timestamp": pd.to_datetime(
                [LAST_MS if i == 1 else NOW_MS for i in range(len(cases))], unit="ms", utc=True
            ),
        }
    )


def comparable(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The archive rows as plain values, ordered by offset (timestamps as epoch ms)."""
    out = []
    for row in frame.sort_values("kafka_offset").to_dict("records"):
        for column in ("produced_at", "ingested_at"):
            row[column] = int(pd.Timestamp(row[column]).tz_localize(None).value // 1_000_000)
        row["metadata"] = dict(sorted(dict(row["metadata"] or {}).items()))
        row["image"] = bytes(row["image"])
        row["kafka_partition"], row["kafka_offset"] = (
            int(row["kafka_partition"]),
            int(row["kafka_offset"]),
        )
        out.append(row)
    return out


def test_the_jvm_keeps_the_records_python_keeps_with_the_same_rows(
    local_spark: SparkSession,
) -> None:
    cases = records()
    rows = kafka_rows(cases)
    events, dead = decode_events(rows)
    kept_by_python = {int(o) for o in events["offset"]}
    by_offset = {100 + i: what for i, (what, _) in enumerate(cases)}
    assert {by_offset[o] for o in kept_by_python} == {
        "valid",
        "valid, no label, no metadata",
        "produced_at before 1970",
    }, [cause for *_, cause, _ in dead]

    archived = archive_events(local_spark.createDataFrame(rows, KAFKA_SCHEMA))
    assert tuple(archived.columns) == ARCHIVE_COLUMNS
    jvm = pd.DataFrame(archived.toPandas())
    assert sorted(by_offset[int(o)] for o in jvm["kafka_offset"]) == sorted(
        by_offset[o] for o in kept_by_python
    )
    python = comparable(archive_rows(rows))
    assert comparable(jvm) == python
    assert {row["ingest_date"] for row in python} == {"2026-05-28"}


def test_the_archive_schema_is_the_contract(local_spark: SparkSession) -> None:
    """The JVM's archive rows have the types the Python archive was written with."""
    from pyspark.sql.types import StructType

    from imagetag.contracts import ARCHIVE_SCHEMA

    rows = kafka_rows([("valid", event()), ("valid", event(image=IMAGE + b"x"))])
    archived = archive_events(local_spark.createDataFrame(rows, KAFKA_SCHEMA))
    wanted = StructType.fromDDL(ARCHIVE_SCHEMA)
    assert isinstance(wanted, StructType)
    assert [(f.name, f.dataType.simpleString()) for f in archived.schema.fields] == [
        (f.name, f.dataType.simpleString()) for f in wanted.fields
    ]
