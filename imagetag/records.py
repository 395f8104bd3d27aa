"""Pure pandas functions between raw Kafka records and the stream's sinks.

No Spark and no Kafka here: the job calls these inside ``mapInPandas``; the tests call them
directly. Raw Kafka rows have the columns of Spark's Kafka source:
``key, value, topic, partition, offset, timestamp``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from functools import cache
from typing import Any

import pandas as pd

from imagetag.avro import AvroDeserializer, AvroSerializer
from imagetag.errors import RecordError
from imagetag.settings import Settings
from imagetag.solr import to_solr_doc

OUTPUT_COLUMNS = ["kind", "id", "doc", "key", "value", "latency_ms"]


@cache
def _serde() -> tuple[AvroDeserializer, AvroSerializer, AvroSerializer]:
    """One deserializer and two serializers per Python worker (schemas parsed once)."""
    return (
        AvroDeserializer("ImageEvent"),
        AvroSerializer("TagResult"),
        AvroSerializer("DeadLetter"),
    )


def _ms(value: Any) -> int | None:
    """Epoch milliseconds from a datetime / pandas Timestamp / number."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, pd.Timestamp):
        return int(value.value // 1_000_000)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    return int(value)


def _now_ms() -> int:
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
        "failed_at": _now_ms(),
    }
    return (None if key is None else bytes(key)), serialize(letter)


def decode_events(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[bytes | None, bytes]]]:
    """Kafka rows -> (ImageEvents as a frame, dead letters for records that are not ImageEvents).

    A record is dead when its value is not an ImageEvent (bad Avro, unknown schema) or when its
    id is not the sha256 of its image bytes (the id is the Solr document id: it must be honest).
    """
    deserialize, _, _ = _serde()
    events: list[dict[str, Any]] = []
    dead: list[tuple[bytes | None, bytes]] = []
    for key, value, topic, partition, offset, timestamp in zip(
        rows["key"],
        rows["value"],
        rows["topic"],
        rows["partition"],
        rows["offset"],
        rows["timestamp"],
        strict=True,
    ):
        coords = (topic, int(partition), int(offset))
        if value is None:
            dead.append(dead_letter(key, b"", coords, "avro", "empty", "record has no value"))
            continue
        try:
            event = deserialize(value)
        except RecordError as err:
            dead.append(dead_letter(key, value, coords, err.stage, err.reason, err.detail))
            continue
        digest = hashlib.sha256(event["image"]).hexdigest()
        if event["id"] != digest:
            dead.append(
                dead_letter(
                    key,
                    value,
                    coords,
                    "avro",
                    "id_mismatch",
                    f"id {event['id'][:16]}... is not the sha256 of the image ({digest[:16]}...)",
                )
            )
            continue
        event["produced_at"] = _ms(event["produced_at"])
        event["ingested_at"] = event["timestamp"] = _ms(timestamp)
        event["topic"], event["partition"], event["offset"] = coords
        event["kafka_key"] = None if key is None else bytes(key)
        event["kafka_value"] = bytes(value)
        events.append(event)
    return pd.DataFrame(events), dead


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
        "tagged_at": _ms(row.get("tagged_at")) or _now_ms(),
    }


def tag_kafka_rows(rows: pd.DataFrame, model: Any, settings: Settings) -> pd.DataFrame:
    """Kafka rows -> one output row each: tagged (a Solr doc), review (a TagResult) or dead
    (a DeadLetter with the original key and value)."""
    events, dead = decode_events(rows)
    out = [("dead", "", None, key, value, None) for key, value in dead]
    return pd.DataFrame(out + _tag_event_rows(events, model, settings), columns=OUTPUT_COLUMNS)


def tag_events(events: pd.DataFrame, model: Any, settings: Settings) -> pd.DataFrame:
    """ImageEvents (as ``decode_events`` returns them) -> one output row each.

    ``events`` needs the ImageEvent fields plus ``ingested_at`` (ms), ``topic``, ``partition``,
    ``offset``, ``kafka_key`` and ``kafka_value`` (the record to dead-letter byte for byte; a
    backfill passes the bytes it read and its input coordinates).
    """
    return pd.DataFrame(_tag_event_rows(events, model, settings), columns=OUTPUT_COLUMNS)


OutputRow = tuple[str, str, str | None, bytes | None, bytes | None, int | None]


def _tag_event_rows(events: pd.DataFrame, model: Any, settings: Settings) -> list[OutputRow]:
    from imagetag.tagging import tag_batch

    _, serialize_result, _ = _serde()
    out: list[OutputRow] = []
    if len(events):
        by_id = {event["id"]: event for event in events.to_dict("records")}
        batch = events.drop(columns=["kafka_key", "kafka_value"])
        tagged, review, undecodable = tag_batch(
            batch, model, threshold=settings.vote_threshold, limits=settings.limits
        )
        for row in tagged.to_dict("records"):
            event = by_id[row["id"]]
            row.setdefault("source", event.get("source"))
            row.setdefault("label", event.get("label"))
            row["ingested_at"] = event.get("ingested_at")
            produced = event.get("produced_at")
            tagged_at = _ms(row.get("tagged_at")) or _now_ms()
            latency = tagged_at - produced if produced else None
            out.append(("tagged", row["id"], json.dumps(to_solr_doc(row)), None, None, latency))
        for row in review.to_dict("records"):
            event = by_id[row["id"]]
            value = serialize_result(_tag_result(row, event, settings.vote_threshold))
            out.append(("review", row["id"], None, row["id"].encode(), value, None))
        for row in undecodable.to_dict("records"):
            event = by_id[row["id"]]
            coords = (event["topic"], event["partition"], event["offset"])
            key, value = dead_letter(
                event["kafka_key"],
                event["kafka_value"],
                coords,
                str(row.get("stage") or "decode"),
                str(row.get("reason") or "undecodable"),
                str(row.get("detail") or ""),
            )
            out.append(("dead", row["id"], None, key, value, None))
    return out


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
    business: it dead-letters them)."""
    events, _ = decode_events(rows)
    columns = [
        "id",
        "image",
        "content_type",
        "source",
        "produced_at",
        "label",
        "metadata",
        "kafka_partition",
        "kafka_offset",
        "ingested_at",
        "ingest_date",
    ]
    if not len(events):
        return pd.DataFrame(columns=columns)
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
