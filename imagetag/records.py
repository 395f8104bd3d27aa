"""Pure pandas functions between raw Kafka records and the stream's sinks.

No Spark, no Kafka and no Solr client here: the job calls these inside ``mapInPandas``; the
tests call them directly. Raw Kafka rows have the columns of Spark's Kafka source
(``contracts.KAFKA_COLUMNS``); the output rows are ``contracts.OUTPUT_COLUMNS`` and the archive
rows ``contracts.ARCHIVE_COLUMNS``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from functools import cache
from typing import Any

import pandas as pd

from imagetag.avro import AvroDeserializer, AvroSerializer
from imagetag.contracts import ARCHIVE_COLUMNS, KAFKA_COLUMNS, OUTPUT_COLUMNS, Coords
from imagetag.documents import to_solr_doc
from imagetag.errors import INTERNAL_ERROR, RecordError
from imagetag.settings import Settings

log = logging.getLogger(__name__)

# Kafka header of a dead letter sent again by `imagetag dlq replay`: "<dlq topic>:<partition>:
# <offset>" of the letter. The stream de-duplicates by image id plus this header.
REPLAY_HEADER = "imagetag.replay"


@cache
def _serde() -> tuple[AvroDeserializer, AvroSerializer, AvroSerializer]:
    """One deserializer and two serializers per Python worker (schemas parsed once)."""
    return (
        AvroDeserializer("ImageEvent"),
        AvroSerializer("TagResult"),
        AvroSerializer("DeadLetter"),
    )


def epoch_ms(value: Any) -> int | None:
    """Epoch milliseconds from a datetime / pandas Timestamp / number (None for missing:
    None, NaN, NaT)."""
    if value is None or value is pd.NaT or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, pd.Timestamp):
        return int(value.value // 1_000_000)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    return int(value)


def now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


def _as_list(value: Any) -> list[Any]:
    """A list from None, a list or a numpy array (whose truth value is ambiguous)."""
    return [] if value is None else list(value)


def dead_letter(
    key: bytes | None,
    value: bytes,
    coords: tuple[str, int, int],
    stage: str,
    reason: str,
    detail: str,
) -> tuple[bytes | None, bytes]:
    """A DeadLetter record (Kafka key, Avro value) carrying the original bytes unchanged."""
    _, _, serialize = _serde()
    topic, partition, offset = coords
    letter = {
        "key": None if key is None else bytes(key),
        "value": bytes(value),
        "topic": str(topic),
        "partition": int(partition),
        "offset": int(offset),
        "stage": stage,
        "reason": reason,
        "detail": detail[:2000],
        "failed_at": now_ms(),
    }
    return (None if key is None else bytes(key)), serialize(letter)


# A record that is not an ImageEvent: its dead letter's (key, value), ``stage/reason``, where
DeadRecord = tuple[bytes | None, bytes, str, Coords]


def decode_events(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[DeadRecord]]:
    """Kafka rows -> (ImageEvents as a frame, dead letters (key, value, ``stage/reason``,
    coordinates) for records that are not ImageEvents).

    A record is dead when its value is not an ImageEvent (bad Avro, unknown schema), when its
    id is not the sha256 of its image bytes (the id is the Solr document id: it must be honest),
    or when its producer timestamp is outside what the archive can store. Anything else that
    raises while one record is decoded makes that record dead (``internal_error``).
    """
    events: list[dict[str, Any]] = []
    dead: list[DeadRecord] = []
    for key, value, topic, partition, offset, timestamp in zip(
        *(rows[column] for column in KAFKA_COLUMNS), strict=True
    ):
        coords = (str(topic), int(partition), int(offset))
        try:
            events.append(_decode_event(key, value, coords, timestamp))
        except RecordError as err:
            letter = dead_letter(key, value or b"", coords, err.stage, err.reason, err.detail)
            dead.append((*letter, f"{err.stage}/{err.reason}", coords))
        except Exception as exc:  # isolation: this record, and only it, is dead
            detail = f"{type(exc).__name__}: {exc}"
            letter = dead_letter(key, value or b"", coords, "avro", INTERNAL_ERROR, detail)
            dead.append((*letter, f"avro/{INTERNAL_ERROR}", coords))
    return pd.DataFrame(events), dead


# What pandas' nanosecond timestamps (the archive's Parquet columns) can hold, in ms.
_MIN_MS = int(pd.Timestamp.min.value // 1_000_000) + 1
_MAX_MS = int(pd.Timestamp.max.value // 1_000_000) - 1


def _decode_event(
    key: bytes | None, value: bytes | None, coords: tuple[str, int, int], timestamp: Any
) -> dict[str, Any]:
    """One Kafka record -> its ImageEvent with the Kafka fields; RecordError when it is not one."""
    deserialize, _, _ = _serde()
    if value is None:
        raise RecordError("avro", "empty", "record has no value")
    event = deserialize(value)
    digest = hashlib.sha256(event["image"]).hexdigest()
    if event["id"] != digest:
        raise RecordError(
            "avro",
            "id_mismatch",
            f"id {str(event['id'])[:16]}... is not the sha256 of the image ({digest[:16]}...)",
        )
    produced_at = epoch_ms(event["produced_at"])
    if produced_at is None or not _MIN_MS <= produced_at <= _MAX_MS:
        raise RecordError(
            "avro", "bad_timestamp", f"produced_at {event['produced_at']} out of range"
        )
    event["produced_at"] = produced_at
    event["ingested_at"] = event["timestamp"] = epoch_ms(timestamp)
    event["topic"], event["partition"], event["offset"] = coords
    event["kafka_key"] = None if key is None else bytes(key)
    event["kafka_value"] = bytes(value)
    return event


def _tag_result(row: dict[str, Any], event: dict[str, Any], threshold: float) -> dict[str, Any]:
    votes = row.get("votes") or {}
    return {
        "id": row["id"],
        "source": str(event.get("source") or ""),
        "tags": [str(t) for t in _as_list(row.get("tags"))],
        "top_tag": str(row.get("top_tag") or ""),
        "confidence": float(row.get("confidence") or 0.0),
        "votes": {str(k): float(v) for k, v in dict(votes).items()},
        "threshold": float(threshold),
        "model_version": str(row.get("model_version") or ""),
        "width": int(row.get("width") or 0),
        "height": int(row.get("height") or 0),
        "format": str(row.get("format") or ""),
        "content_type": str(event.get("content_type") or ""),
        "size": int(row.get("size") or len(event["image"])),
        "phash": str(row.get("phash") or ""),
        "label": event.get("label"),
        "metadata": dict(event.get("metadata") or {}),
        "produced_at": int(event.get("produced_at") or 0),
        "ingested_at": int(event.get("ingested_at") or 0),
        "tagged_at": epoch_ms(row.get("tagged_at")) or now_ms(),
    }


# kind, id, doc (tagged), Kafka key and value (review, dead), latency_ms (tagged), cause (dead:
# "stage/reason", what the metrics count dead letters by), the record's topic, partition, offset
OutputRow = tuple[
    str, str, str | None, bytes | None, bytes | None, int | None, str | None, str, int, int
]


def tag_kafka_rows(rows: pd.DataFrame, model: Any, settings: Settings) -> pd.DataFrame:
    """Kafka rows -> one output row each: tagged (a Solr doc), review (a TagResult) or dead
    (a DeadLetter with the original key and value)."""
    events, dead = decode_events(rows)
    out: list[OutputRow] = [
        ("dead", "", None, key, value, None, cause, *coords) for key, value, cause, coords in dead
    ]
    return pd.DataFrame(out + _tag_event_rows(events, model, settings), columns=OUTPUT_COLUMNS)


def tag_events(events: pd.DataFrame, model: Any, settings: Settings) -> pd.DataFrame:
    """ImageEvents (as ``decode_events`` returns them) -> one output row each.

    ``events`` needs the ImageEvent fields plus ``ingested_at`` (ms), ``topic``, ``partition``,
    ``offset``, ``kafka_key`` and ``kafka_value`` (the record to dead-letter byte for byte; a
    backfill passes the bytes it read and its input coordinates).
    """
    return pd.DataFrame(_tag_event_rows(events, model, settings), columns=OUTPUT_COLUMNS)


def _tag_event_rows(events: pd.DataFrame, model: Any, settings: Settings) -> list[OutputRow]:
    """tag_batch, then each result row serialised for its sink; a row that fails to serialise
    is dead-lettered (``internal_error`` at stage ``serialize``), never raised."""
    if not len(events):
        return []
    # Results find their event by Kafka coordinates (tag_batch passes them through) and id: the
    # same image twice in one batch is two records, each dead-lettered with its own.
    by_place = {_place(event): event for event in events.to_dict("records")}
    tagged, review, undecodable = _tag(
        events.drop(columns=["kafka_key", "kafka_value"]), model, settings
    )
    out: list[OutputRow] = []
    for kind, frame in (("tagged", tagged), ("review", review), ("dead", undecodable)):
        for row in frame.to_dict("records"):
            event = by_place[_place(row)]
            try:
                out.append(_output_row(kind, row, event, settings))
            except Exception as exc:  # isolation: this record, and only it, is dead
                out.append(
                    _dead_output(event, "serialize", INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
                )
    return out


def _place(row: dict[str, Any]) -> tuple[str, int, int, str]:
    return (str(row["topic"]), int(row["partition"]), int(row["offset"]), str(row["id"]))


def _tag(
    batch: pd.DataFrame, model: Any, settings: Settings
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """tag_batch over the batch; should it raise (it isolates records itself, so only a bug
    outside its per-record steps could), again one record at a time, and a record that still
    makes it raise is dead with the exception."""
    from imagetag.tagging import DEAD_COLUMNS, internal_error, tag_batch

    def run(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        return tag_batch(frame, model, threshold=settings.vote_threshold, limits=settings.limits)

    try:
        return run(batch)
    except Exception:
        log.exception("tag_batch raised for a batch of %d; retrying record by record", len(batch))
    parts: list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = []
    for i in range(len(batch)):
        one = batch.iloc[i : i + 1]
        try:
            parts.append(run(one))
        except Exception as exc:
            row = one.iloc[0]
            err = internal_error("tag", exc, bytes(row["image"] or b""))
            fields = {"stage": err.stage, "reason": err.reason, "detail": err.detail}
            place = {c: row[c] for c in ("id", "topic", "partition", "offset")}
            dead = pd.DataFrame([{**place, "image": err.original, **fields}])
            dead = dead.reindex(columns=[*DEAD_COLUMNS, "topic", "partition", "offset"])
            parts.append((pd.DataFrame(), pd.DataFrame(), dead))
    return tuple(pd.concat([part[i] for part in parts], ignore_index=True) for i in range(3))


def _output_row(
    kind: str, row: dict[str, Any], event: dict[str, Any], settings: Settings
) -> OutputRow:
    """One tag_batch result row as what the sinks write: a Solr doc, a TagResult, a DeadLetter."""
    if kind == "tagged":
        row.setdefault("source", event.get("source"))
        row.setdefault("label", event.get("label"))
        row["ingested_at"] = event.get("ingested_at")
        produced = event.get("produced_at")
        tagged_at = epoch_ms(row.get("tagged_at")) or now_ms()
        latency = tagged_at - produced if produced else None
        doc = json.dumps(to_solr_doc(row))
        return ("tagged", row["id"], doc, None, None, latency, None, *_coords(event))
    if kind == "review":
        _, serialize_result, _ = _serde()
        value = serialize_result(_tag_result(row, event, settings.vote_threshold))
        return ("review", row["id"], None, row["id"].encode(), value, None, None, *_coords(event))
    return _dead_output(
        event,
        str(row.get("stage") or "decode"),
        str(row.get("reason") or "undecodable"),
        str(row.get("detail") or ""),
    )


def _dead_output(event: dict[str, Any], stage: str, reason: str, detail: str) -> OutputRow:
    """A DeadLetter carrying the event's original Kafka record byte for byte."""
    coords = _coords(event)
    key, value = dead_letter(
        event["kafka_key"], event["kafka_value"], coords, stage, reason, detail
    )
    return ("dead", event["id"], None, key, value, None, f"{stage}/{reason}", *coords)


def _coords(event: dict[str, Any]) -> Coords:
    return (str(event["topic"]), int(event["partition"]), int(event["offset"]))


def dead_letter_for_refused_doc(
    image_id: str, doc_json: str, reason: str, settings: Settings
) -> tuple[bytes, bytes]:
    """A document Solr refused goes to the dead-letter topic with stage ``index``.

    Its value is the refused document (JSON): the image bytes themselves are in the archive
    under the same id.
    """
    _, value = dead_letter(
        image_id.encode(),
        doc_json.encode(),
        (settings.kafka.topic_images, -1, -1),
        "index",
        "solr_refused",
        reason,
    )
    return image_id.encode(), value


def archive_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Kafka rows -> the valid ImageEvents as archive rows (invalid ones are the tag query's
    business: it dead-letters them).

    Should building the frame raise for some record, the records are taken one by one and the
    ones that still fail are left out of the archive (logged; the tag query handles them)."""
    events, _ = decode_events(rows)
    if not len(events):
        return pd.DataFrame(columns=ARCHIVE_COLUMNS)
    try:
        return _archive_frame(events)
    except Exception:
        log.exception("archive rows failed for a batch of %d; one by one", len(events))
    kept = []
    for i in range(len(events)):
        try:
            kept.append(_archive_frame(events.iloc[i : i + 1]))
        except Exception as exc:
            log.error("not archived: %s at %s (%s)", events["id"].iloc[i], i, exc)
    return pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=ARCHIVE_COLUMNS)


def _archive_frame(events: pd.DataFrame) -> pd.DataFrame:
    ingested = pd.to_datetime(events["ingested_at"], unit="ms", utc=True)
    return pd.DataFrame(
        {
            "id": events["id"],
            "image": events["image"],
            "content_type": events["content_type"],
            "source": events["source"],
            "produced_at": pd.to_datetime(events["produced_at"], unit="ms", utc=True),
            "label": events["label"],
            "metadata": events["metadata"].map(lambda m: dict(m or {})),
            "kafka_partition": events["partition"].astype("int32"),
            "kafka_offset": events["offset"].astype("int64"),
            "ingested_at": ingested,
            "ingest_date": ingested.dt.strftime("%Y-%m-%d"),
        }
    )
