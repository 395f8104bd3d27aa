"""Each output row names the record it is the outcome of; the stream leaves out the repeats'.

The stream tags every record of a micro-batch in one Spark job and decides afterwards, from
the (dedupe key, timestamp, coordinates) that come back with the outcomes, which records were
repeats: ``pipeline.with_columns`` carries the record's columns to its outcome, and
``Tagged.ignoring`` + ``write_outputs`` leave the repeats' letters and counts out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyspark.sql import Row

from imagetag.pipeline import SolrTally, Tagged, with_columns, write_outputs
from imagetag.records import tag_kafka_rows
from imagetag.settings import Settings
from tests.unit.test_records import _event, _rows
from tests.unit.test_tagging import _blank, _model, _textured
from tests.unit.test_upsert import Sum

SETTINGS = Settings.model_validate({})


def test_every_outcome_names_its_record_and_carries_its_kept_columns() -> None:
    values = [
        (b"k0", _event(_blank())),
        (None, b"\x00 not avro"),
        (b"k2", _event(_textured(3))),
        (b"k3", _event(_blank(), image_id="0" * 64)),
    ]
    rows = _rows(values).astype({"partition": "int32"})  # as Arrow hands it over
    rows["partition"] = [0, 1, 1, 0]
    rows["dedupe_key"] = ["a", None, "c", "d"]
    rows["ms"] = [10, 11, 12, 13]
    out = tag_kafka_rows(rows, _model(), SETTINGS)
    assert sorted(zip(out["partition"], out["offset"], strict=True)) == [
        (0, 0),
        (0, 3),
        (1, 1),
        (1, 2),
    ]
    kept = with_columns(out, rows, ("dedupe_key", "ms"))
    assert list(kept["kind"]) == list(out["kind"])  # same rows, same order
    by_offset = {int(r.offset): (r.dedupe_key, int(r.ms)) for r in kept.itertuples()}
    assert by_offset == {0: ("a", 10), 1: (None, 11), 2: ("c", 12), 3: ("d", 13)}


class Sink:
    def __init__(self) -> None:
        self.written: list[tuple[str, bytes | None, bytes]] = []

    def done(self, token: str) -> bool:
        del token
        return False

    def write(self, token: str, records: Iterable[tuple[str, bytes | None, bytes]]) -> None:
        del token
        self.written += list(records)


def _meta(kind: str, offset: int, value: bytes | None = None, **extra: Any) -> Row:
    fields: dict[str, Any] = {"kind": kind, "latency_ms": 5 if kind == "tagged" else None}
    fields |= {"size": len(value or b""), "cause": "avro/bad_magic" if kind == "dead" else None}
    fields |= {"key": b"k" if value else None, "value": value}
    return Row(**fields, topic="images", partition=0, offset=offset, **extra)


def test_ignored_records_write_no_letters_and_count_nothing() -> None:
    tally = SolrTally(Sum(), Sum(), Sum())  # type: ignore[arg-type]
    meta = [
        _meta("tagged", 0),
        _meta("review", 1, b"first"),
        _meta("tagged", 2),  # a repeat of 0
        _meta("review", 3, b"again"),  # a repeat of 1
        _meta("dead", 4, b"letter"),
    ]
    tagged = Tagged(out=None, meta=meta, upserted=tally)  # type: ignore[arg-type]
    kept = tagged.ignoring([("images", 0, 2), ("images", 0, 3)])
    assert [m.offset for m in kept.meta] == [0, 1, 4] and len(tagged.meta) == 5
    sink = Sink()
    written = write_outputs(SETTINGS, kept, sink, "7")  # type: ignore[arg-type]
    assert written.counts == {"tagged": 1, "review": 1, "dead": 1}
    assert written.latencies_ms == [5]
    topics = SETTINGS.kafka
    assert sink.written == [
        (topics.topic_review, b"k", b"first"),
        (topics.topic_dlq, b"k", b"letter"),
    ]
    assert kept.ignoring([("images", 0, 4)]).ignored == {
        ("images", 0, 2),
        ("images", 0, 3),
        ("images", 0, 4),
    }
