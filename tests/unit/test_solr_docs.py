from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pysolr
import pytest

from imagetag.documents import VECTOR_DIM, project_vector, to_solr_doc, vote_field
from imagetag.settings import Settings
from imagetag.solr import SolrWriter


def test_vote_fields_are_valid_solr_names() -> None:
    assert vote_field("T-shirt/top") == "vote_t_shirt_top"
    assert vote_field("Ankle boot") == "vote_ankle_boot"


def test_short_vectors_are_padded_and_normalised() -> None:
    projected = project_vector([3.0, 4.0])
    assert projected is not None and len(projected) == VECTOR_DIM
    assert projected[:2] == pytest.approx([0.6, 0.8])
    assert not any(projected[2:])
    assert project_vector([0.0, 0.0]) is None


def test_long_vectors_are_projected_deterministically_preserving_similarity() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(2560)
    b = a + 0.05 * rng.random(2560)
    c = rng.random(2560)
    pa, pb, pc = (np.array(project_vector(v)) for v in (a, b, c))
    assert pa.shape == (VECTOR_DIM,)
    assert project_vector(a) == project_vector(a.copy())
    assert pa @ pb > pa @ pc


def test_to_solr_doc() -> None:
    row = {
        "id": "ab" * 32,
        "source": "file:///x.png",
        "tags": np.array(["Bag", "Sandal"]),
        "top_tag": "Bag",
        "confidence": np.float32(0.5),
        "votes": {"Bag": 0.5, "Sandal": 0.4, "T-shirt/top": 0.1},
        "model_version": "v0001",
        "width": np.int64(28),
        "height": 28,
        "format": "png",
        "size": 300,
        "phash": "00ff00ff00ff00ff",
        "colors": ["#000000"],
        "thumbnail": "iVBOR",
        "label": None,
        "ingested_at": 1_700_000_000_000,
        "tagged_at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "vector": [1.0, 0.0],
    }
    doc = to_solr_doc(row)
    assert doc["id"] == "ab" * 32
    assert doc["tags"] == ["Bag", "Sandal"]
    assert doc["vote_t_shirt_top"] == pytest.approx(0.1)
    assert doc["width"] == 28 and isinstance(doc["width"], int)
    assert doc["confidence"] == pytest.approx(0.5)
    assert doc["ingested_at"] == "2023-11-14T22:13:20.000Z"
    assert doc["tagged_at"] == "2026-01-02T03:04:05.000Z"
    assert "label" not in doc
    assert len(doc["vector"]) == VECTOR_DIM


class FakeClient:
    """Stands in for pysolr.Solr: fails `outages` times, refuses docs whose id starts with x."""

    def __init__(self, outages: int = 0) -> None:
        self.outages = outages
        self.stored: dict[str, dict[str, Any]] = {}

    def add(self, docs: list[dict[str, Any]], commitWithin: int) -> None:
        if self.outages:
            self.outages -= 1
            raise pysolr.SolrError("Failed to connect to server at http://solr/update/")
        if any(d["id"].startswith("x") for d in docs):
            bad = next(d["id"] for d in docs if d["id"].startswith("x"))
            raise pysolr.SolrError(
                f"Solr responded with an error (HTTP 400): [Reason: ERROR: [doc={bad}] unknown field]"
            )
        self.stored.update({d["id"]: d for d in docs})


def _writer(client: FakeClient, sleeps: list[float]) -> SolrWriter:
    settings = Settings.model_validate({"solr": {"batch_size": 3}})
    writer = SolrWriter(settings, sleep=sleeps.append, max_backoff_s=2.0)
    writer.client = client
    return writer


def test_writer_waits_out_an_outage_with_capped_backoff() -> None:
    sleeps: list[float] = []
    client = FakeClient(outages=5)
    result = _writer(client, sleeps).write({"id": str(i)} for i in range(7))
    assert result.accepted == 7 and not result.rejected
    assert sorted(client.stored) == [str(i) for i in range(7)]
    assert sleeps == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_writer_counts_its_retries_and_the_seconds_it_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import imagetag.solr

    clock = [100.0]
    monkeypatch.setattr(imagetag.solr.time, "monotonic", lambda: clock[0])

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    settings = Settings.model_validate({"solr": {"batch_size": 3}})
    writer = SolrWriter(settings, sleep=sleep, max_backoff_s=2.0)
    writer.client = FakeClient(outages=3)  # the first batch waits 0.5 + 1 + 2 s
    result = writer.write({"id": str(i)} for i in range(7))
    assert result.accepted == 7
    assert result.retries == 3 and result.stalled_s == pytest.approx(3.5)
    writer.client = FakeClient()
    assert writer.write([{"id": "1"}]).stalled_s == 0.0


def test_writer_isolates_refused_documents() -> None:
    client = FakeClient()
    result = _writer(client, []).write([{"id": "1"}, {"id": "x2"}, {"id": "3"}, {"id": "4"}])
    assert result.accepted == 3
    assert [doc["id"] for doc, _ in result.rejected] == ["x2"]
    assert "HTTP 400" in result.rejected[0][1]
    assert sorted(client.stored) == ["1", "3", "4"]


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("Failed to connect to server at http://solr/update/", True),
        ("Solr responded with an error (HTTP 503): no servers hosting shard", True),
        ("Solr responded with an error (HTTP 404): Not Found", True),
        ("Solr responded with an error (HTTP 400): No active replicas", True),
        ("Solr responded with an error (HTTP 400): [Reason: ERROR: [doc=a] bad]", False),
    ],
)
def test_only_refused_documents_are_not_retried(message: str, transient: bool) -> None:
    from imagetag.solr import _is_transient

    assert _is_transient(pysolr.SolrError(message)) is transient
