"""The tagging job's own Solr upserts (``pipeline.upsert_tagged``): what the rows become."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pandas as pd
import pytest

import imagetag.solr
from imagetag.avro import AvroDeserializer
from imagetag.contracts import OUTPUT_COLUMNS
from imagetag.pipeline import REFUSED, SolrTally, upsert_tagged
from imagetag.settings import Settings
from imagetag.solr import WriteResult


class Sum:
    def __init__(self) -> None:
        self.value: float = 0

    def add(self, amount: float) -> None:
        self.value += amount


class FakeWriter:
    written: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, settings: Settings) -> None:
        del settings

    def write(self, docs: Any) -> WriteResult:
        docs = list(docs)
        FakeWriter.written = docs
        refused = [(d, "HTTP 400: [doc=x] unknown field") for d in docs if d["id"].startswith("x")]
        return WriteResult(len(docs) - len(refused), refused, retries=2, stalled_s=1.5)


def test_tagged_rows_are_upserted_and_a_refused_one_becomes_its_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(imagetag.solr, "SolrWriter", FakeWriter)
    rows = pd.DataFrame(
        [
            ("tagged", "a1", json.dumps({"id": "a1"}), None, None, 120, None, "images", 0, 1),
            (
                "tagged",
                "x2",
                json.dumps({"id": "x2", "bad": 1}),
                None,
                None,
                340,
                None,
                "images",
                0,
                2,
            ),
            ("review", "r3", None, b"r3", b"tag-result", None, None, "images", 1, 1),
        ],
        columns=OUTPUT_COLUMNS,
    )
    tally = SolrTally(Sum(), Sum(), Sum())  # type: ignore[arg-type]
    out = upsert_tagged(rows, Settings.model_validate({}), tally)
    assert [d["id"] for d in FakeWriter.written] == ["a1", "x2"]
    assert list(out["kind"]) == ["tagged", "dead", "review"]
    assert out.at[0, "doc"] is None and out.at[0, "latency_ms"] == 120
    assert out.at[1, "cause"] == REFUSED and out.at[1, "latency_ms"] is None
    letter = AvroDeserializer("DeadLetter")(out.at[1, "value"])
    assert letter["stage"] == "index" and letter["reason"] == "solr_refused"
    assert json.loads(letter["value"]) == {"id": "x2", "bad": 1}  # the refused document
    assert out.at[2, "value"] == b"tag-result"
    assert list(out["offset"]) == [1, 2, 1]  # each row still names its record
    assert tally.retries.value == 2 and tally.stalled_s.value == 1.5 and tally.seconds.value >= 0


def test_a_batch_without_tagged_rows_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imagetag.solr, "SolrWriter", None)  # would fail if called
    rows = pd.DataFrame(
        [("review", "r", None, b"r", b"v", None, None, "images", 0, 0)], columns=OUTPUT_COLUMNS
    )
    tally = SolrTally(Sum(), Sum(), Sum())  # type: ignore[arg-type]
    assert upsert_tagged(rows, Settings.model_validate({}), tally) is rows
