"""Kafka rows -> tagged / review / dead output rows, as the stream's mapInPandas sees them."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence

import pandas as pd
import pytest

from imagetag.avro import AvroDeserializer, AvroSerializer
from imagetag.records import archive_rows, tag_kafka_rows
from imagetag.settings import Settings
from tests.unit.test_tagging import _blank, _model, _textured

SETTINGS = Settings.model_validate({})


def _event(image: bytes, image_id: str | None = None, label: str | None = None) -> bytes:
    return AvroSerializer("ImageEvent")(
        {
            "id": image_id or hashlib.sha256(image).hexdigest(),
            "image": image,
            "content_type": "image/png",
            "source": "test://x",
            "produced_at": 1_700_000_000_000,
            "label": label,
            "metadata": {"k": "v"},
        }
    )


def _rows(values: Sequence[tuple[bytes | None, bytes | None]]) -> pd.DataFrame:
    now = pd.Timestamp(time.time(), unit="s", tz="UTC")
    return pd.DataFrame(
        {
            "key": [k for k, _ in values],
            "value": [v for _, v in values],
            "topic": ["images"] * len(values),
            "partition": [0] * len(values),
            "offset": list(range(len(values))),
            "timestamp": [now] * len(values),
        }
    )


def test_every_record_gets_exactly_one_output_row() -> None:
    blank, textured = _blank(), _textured(3)
    values = [
        (b"k1", _event(blank, label="blank")),
        (b"k2", _event(textured)),
        (None, b"\x00 not avro"),
        (b"k4", _event(blank, image_id="0" * 64)),
        (b"k5", _event(b"\x89PNG\r\n\x1a\n but truncated")),
    ]
    out = tag_kafka_rows(_rows(values), _model(), SETTINGS)
    assert len(out) == len(values)
    kinds = out.groupby("kind").size().to_dict()
    assert kinds == {"tagged": 2, "dead": 3}

    tagged = out[out.kind == "tagged"]
    docs = {row.id: json.loads(row.doc) for row in tagged.itertuples()}
    doc = docs[hashlib.sha256(blank).hexdigest()]
    assert doc["top_tag"] == "blank" and doc["tags"] == ["blank"]
    assert doc["model_version"] == "v0007" and doc["label"] == "blank"
    assert doc["ingested_at"].endswith("Z") and doc["vote_blank"] == 1.0
    assert tagged["latency_ms"].notna().all()

    letters = [AvroDeserializer("DeadLetter")(v) for v in out[out.kind == "dead"]["value"]]
    by_offset = {letter["offset"]: letter for letter in letters}
    assert {o: (by_offset[o]["stage"], by_offset[o]["reason"]) for o in by_offset} == {
        2: ("avro", "bad_magic"),
        3: ("avro", "id_mismatch"),
        4: ("decode", by_offset[4]["reason"]),
    }
    for offset, letter in by_offset.items():  # the original record, byte for byte
        assert letter["value"] == values[offset][1]
        assert letter["key"] == values[offset][0]


def test_undecided_images_become_tag_results_for_review() -> None:
    textured = _textured(5)
    model = _model(fixed_votes=[0, 1, 2, 0, 1])  # 2/5 at most: below a 0.5 threshold
    settings = SETTINGS.derive(vote_threshold=0.5)
    out = tag_kafka_rows(_rows([(b"k", _event(textured, label="textured"))]), model, settings)
    assert out.kind.tolist() == ["review"]
    result = AvroDeserializer("TagResult")(out.value.iloc[0])
    assert result["id"] == hashlib.sha256(textured).hexdigest()
    assert result["threshold"] == 0.5 and result["tags"] == []
    assert result["confidence"] == pytest.approx(0.4) and result["label"] == "textured"
    assert result["metadata"] == {"k": "v"} and result["model_version"] == "v0007"
    assert out.key.iloc[0] == result["id"].encode()


def test_archive_keeps_valid_events_with_their_bytes() -> None:
    blank = _blank()
    rows = _rows([(b"k", _event(blank, label="blank")), (None, b"junk")])
    archived = archive_rows(rows)
    assert archived["id"].tolist() == [hashlib.sha256(blank).hexdigest()]
    assert archived["image"].iloc[0] == blank
    assert archived["label"].iloc[0] == "blank"
    assert len(archived["ingest_date"].iloc[0]) == 10
