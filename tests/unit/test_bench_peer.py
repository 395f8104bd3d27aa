"""The bench's peer (bench/peer.py) and the pieces of bench_stream that need no services: the
Kafka-shaped frame from consumed messages, a batch's order of writes, the counters, the tables,
the percentiles."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prometheus_client import generate_latest

from bench.bench_stream import (
    PEER_READY,
    POLL_WINDOW_S,
    Cpu,
    Pending,
    Result,
    Running,
    Snapshot,
    breakdown_rows,
    cpu_rows,
    fmt,
    format_table,
    logged_phases,
    peer_snapshot,
    per_cpu_second,
    percentiles,
    stream_snapshot,
)
from bench.peer import READY_LINE, BatchStats, Peer, consumer_config, kafka_frame
from imagetag.contracts import KAFKA_COLUMNS
from imagetag.errors import ServiceError
from imagetag.metrics import StreamMetrics, parse
from imagetag.pipeline import Written
from imagetag.records import decode_events, tag_kafka_rows
from imagetag.settings import Settings
from imagetag.solr import WriteResult
from streaming.job import batch_line
from tests.unit.test_records import _event
from tests.unit.test_tagging import _blank, _model, _textured

SETTINGS = Settings.model_validate({})


@dataclass
class FakeMessage:
    """What a confluent_kafka.Message answers."""

    _value: bytes | None
    _offset: int
    _key: bytes | None = b"k"
    _timestamp: tuple[int, int] = (1, 1_700_000_000_123)  # TIMESTAMP_CREATE_TIME, ms
    _topic: str = "images"
    _partition: int = 1

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def error(self) -> None:
        return None


def test_kafka_frame_has_the_spark_source_columns_and_types() -> None:
    messages = [
        FakeMessage(b"v0", 7),
        FakeMessage(None, 8, _key=None, _timestamp=(0, -1)),  # TIMESTAMP_NOT_AVAILABLE
    ]
    frame = kafka_frame(messages)
    assert tuple(frame.columns) == KAFKA_COLUMNS
    assert frame["key"].tolist() == [b"k", None] and frame["value"].tolist() == [b"v0", None]
    assert frame["topic"].tolist() == ["images", "images"]
    assert frame["partition"].dtype == "int32" and frame["offset"].dtype == "int64"
    assert frame["offset"].tolist() == [7, 8]
    assert frame["timestamp"].iloc[0] == pd.Timestamp(1_700_000_000_123, unit="ms", tz="UTC")
    assert frame["timestamp"].isna().tolist() == [False, True]


def test_kafka_frame_of_nothing_has_the_columns() -> None:
    frame = kafka_frame([])
    assert tuple(frame.columns) == KAFKA_COLUMNS and len(frame) == 0
    assert frame["key"].dtype == object


def test_the_frame_decodes_as_the_stream_s_rows_do() -> None:
    image = _blank()
    frame = kafka_frame([FakeMessage(_event(image), 3), FakeMessage(b"\x00 not avro", 4)])
    events, dead = decode_events(frame)
    assert len(events) == 1 and len(dead) == 1
    event = events.iloc[0]
    assert event["ingested_at"] == 1_700_000_000_123  # the Kafka timestamp, in ms
    assert (event["topic"], event["partition"], event["offset"]) == ("images", 1, 3)
    assert event["kafka_key"] == b"k"
    out = tag_kafka_rows(frame, _model(), SETTINGS)
    assert len(out) == 2 and "dead" in set(out["kind"])


class FakeConsumer:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def commit(self, asynchronous: bool = True) -> None:
        assert asynchronous is False
        self.calls.append("commit")


@dataclass
class FakeProducer:
    calls: list[str]
    fail: str | None = None
    sent: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    reports: list[Any] = field(default_factory=list)

    def produce(self, topic: str, key: bytes | None, value: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, key, value))
        self.reports.append(on_delivery)

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        self.calls.append("flush")
        for report in self.reports:
            report(self.fail, None)
        self.reports = []
        return 0


@dataclass
class FakeWriter:
    calls: list[str]
    docs: list[dict[str, Any]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    def write(self, docs: list[dict[str, Any]]) -> WriteResult:
        self.calls.append("solr")
        self.docs.extend(docs)
        refused = [(doc, "bad field") for doc in docs if doc["id"] in self.refuse]
        return WriteResult(accepted=len(docs) - len(refused), rejected=refused)


def _peer(
    calls: list[str], model: Any = None, settings: Settings = SETTINGS, fail: str | None = None
) -> tuple[Peer, FakeProducer, FakeWriter]:
    producer = FakeProducer(calls, fail=fail)
    writer = FakeWriter(calls)
    consumer: Any = FakeConsumer(calls)
    peer = Peer(settings, consumer, producer, writer, model or _model())  # type: ignore[arg-type]
    return peer, producer, writer


BLANK = _blank()


def _batch() -> list[FakeMessage]:
    """Two images the test model tags (blank, textured) and a record that is not Avro."""
    return [
        FakeMessage(_event(BLANK, label="blank"), 0),
        FakeMessage(_event(_textured(3)), 1),
        FakeMessage(b"\x00 not avro", 2, _key=None),
    ]


def test_a_batch_is_committed_after_solr_and_the_producer_accepted_it() -> None:
    calls: list[str] = []
    peer, producer, writer = _peer(calls)
    stats = peer.process(_batch(), consume_s=0.25)
    assert calls == ["solr", "flush", "commit"]
    assert (stats.rows, stats.tagged, stats.review, stats.dead) == (3, 2, 0, 1)
    assert len(writer.docs) == 2 and all("id" in doc for doc in writer.docs)
    assert [(topic, key) for topic, key, _ in producer.sent] == [("images.dlq", None)]
    assert stats.consume_s == 0.25
    assert stats.batch_s >= stats.tag_s + stats.solr_s + stats.kafka_s - 1e-9


def test_undecided_images_go_to_review() -> None:
    calls: list[str] = []
    model = _model(fixed_votes=[0, 1, 2, 0, 1])  # 2/5 at most: below a 0.5 threshold
    peer, producer, writer = _peer(calls, model, SETTINGS.derive(vote_threshold=0.5))
    stats = peer.process(_batch()[1:2], consume_s=0.0)
    assert (stats.tagged, stats.review) == (0, 1) and writer.docs == []
    assert [topic for topic, _, _ in producer.sent] == ["images.review"]
    assert calls[-1] == "commit"


def test_a_refused_document_is_a_dead_letter() -> None:
    calls: list[str] = []
    peer, producer, writer = _peer(calls)
    writer.refuse = {hashlib.sha256(BLANK).hexdigest()}
    stats = peer.process(_batch(), consume_s=0.0)
    assert (stats.tagged, stats.dead) == (1, 2)
    assert [topic for topic, _, _ in producer.sent] == ["images.dlq", "images.dlq"]
    assert producer.sent[-1][1] == hashlib.sha256(BLANK).hexdigest().encode()


def test_an_undelivered_record_is_not_committed() -> None:
    calls: list[str] = []
    peer, _, _ = _peer(calls, fail="broker down")
    with pytest.raises(ServiceError, match="broker down"):
        peer.process(_batch(), consume_s=0.0)
    assert "commit" not in calls


def test_consumer_config_commits_by_hand_and_fetches_the_largest_image() -> None:
    config = consumer_config(SETTINGS, "g1")
    assert config["group.id"] == "g1" and config["enable.auto.commit"] is False
    assert config["auto.offset.reset"] == "earliest"
    assert "isolation.level" not in config
    assert config["max.partition.fetch.bytes"] > SETTINGS.limits.max_bytes
    assert config["fetch.max.bytes"] >= config["max.partition.fetch.bytes"]
    assert config["receive.message.max.bytes"] >= config["fetch.max.bytes"] + 512


def _stats(rows: int, **seconds: float) -> BatchStats:
    phases = {"consume_s": 0.5, "tag_s": 0.3, "solr_s": 0.1, "kafka_s": 0.05} | seconds
    return BatchStats(at=0.0, rows=rows, tagged=rows, review=0, dead=0, batch_s=0.5, **phases)


def test_the_bench_waits_for_the_peer_s_ready_line() -> None:
    assert PEER_READY == READY_LINE


def test_peer_stats_lines_sum_into_a_snapshot() -> None:
    lines = [_stats(100).to_json(), _stats(50, tag_s=0.2).to_json(), '{"rows": 3, "ba']
    snapshot = peer_snapshot(lines)
    assert snapshot.batches == snapshot.data_batches == 2  # the cut-off line is skipped
    assert snapshot.rows == 150
    means = snapshot.per_batch()
    assert means["batch"] == pytest.approx(0.5)
    assert means["tag"] == pytest.approx(0.25)
    assert means["consume"] == pytest.approx(0.5)
    assert means["other"] == pytest.approx(0.5 - 0.25 - 0.1 - 0.05)
    assert json.loads(lines[0])["rows"] == 100


def test_a_peer_of_several_processes_sums_their_stats_files(tmp_path: Path) -> None:
    files = [tmp_path / "peer-0.jsonl", tmp_path / "peer-1.jsonl", tmp_path / "peer-2.jsonl"]
    files[0].write_text(_stats(100).to_json() + "\n" + _stats(20).to_json() + "\n")
    files[1].write_text(_stats(50).to_json() + "\n")  # files[2]: that process wrote nothing yet
    run = Running("peer", [], tmp_path / "peer.log", 0, files)
    snapshot = run.snapshot()
    assert (snapshot.batches, snapshot.rows) == (3, 170)


def test_stream_snapshot_reads_the_metrics_and_the_batch_lines() -> None:
    metrics = StreamMetrics()
    for tag_s, solr_s in ((0.8, 0.2), (0.1, 0.0)):  # a batch with data, then one without
        metrics.batches.inc()
        metrics.phase_seconds.labels("tag").observe(tag_s)
        metrics.phase_seconds.labels("solr").observe(solr_s)
        metrics.phase_seconds.labels("kafka").observe(0.0)
    metrics.records.labels("tagged").inc(7)
    metrics.batch_seconds.observe(1.5)  # only batches with data have a duration
    for step, seconds in (("addBatch", 1.2), ("walCommit", 0.2), ("latestOffset", 0.1)):
        metrics.spark_steps.labels(step).observe(seconds)
    logged = Written({"tagged": 7}, [], phases={"tag": 0.8, "solr": 0.2, "kafka": 0.0})
    log = "12:00:00 INFO imagetag.stream: " + batch_line(0, 7, logged, 1500, 0) + "\n"
    before = stream_snapshot({})
    after = stream_snapshot(parse(generate_latest(metrics.registry).decode()), log)
    spent = after - before
    assert (spent.batches, spent.data_batches, spent.rows) == (2, 1, 7)
    assert spent.batch_s == pytest.approx(1.5)
    assert spent.phase_s == pytest.approx({"tag": 0.8, "solr": 0.2, "kafka": 0.0})
    assert spent.nodata_s == pytest.approx(0.1)
    assert spent.per_batch()["other"] == pytest.approx(1.5 - 0.8)  # its solr is inside tag
    rows = {measure: cell for measure, cell, _ in breakdown_rows({"stream": spent})}
    assert rows["batches with data"] == "1"
    assert rows["batches without data"] == "1 x 100 ms"
    assert rows["other"] == "700 ms (47%)"
    assert spent.steps == pytest.approx({"addBatch": 1.2, "walCommit": 0.2, "latestOffset": 0.1})
    assert (
        rows["  spark addBatch"] == "1200 ms (80%)" and rows["  spark walCommit"] == "200 ms (13%)"
    )


def test_the_batch_line_pattern_reads_the_stream_s_line() -> None:
    written = Written({"tagged": 2}, [], phases={"tag": 1.234, "solr": 0.5, "kafka": 0.0625})
    line = batch_line(3, 2, written, 2000, 0)
    assert logged_phases(f"x\n{line}\n{line}\n") == pytest.approx(
        {"tag": 2 * 1.234, "solr": 1.0, "kafka": 2 * 0.062}
    )
    assert logged_phases("batch 4: input=0 nothing") == {"tag": 0.0, "solr": 0.0, "kafka": 0.0}


def test_snapshot_differences_and_no_batches() -> None:
    a = Snapshot(3, 2, 1.0, {"tag": 0.5}, 20)
    b = Snapshot(5, 3, 1.6, {"tag": 0.9}, 21)
    spent = b - a
    assert (spent.batches, spent.data_batches, spent.rows) == (2, 1, 1)
    assert spent.batch_s == pytest.approx(0.6) and spent.phase_s == pytest.approx({"tag": 0.4})
    assert (a - a).per_batch() == {}


def test_format_table_aligns_the_columns() -> None:
    text = format_table("title", [("images/s", "1200", "-"), ("p50 (s)", "0.85", "12.50")])
    lines = text.splitlines()
    assert lines[0] == "title"
    assert lines[1].split() == ["measure", "stream", "peer"]
    assert set(lines[2]) == {"-"} and len(lines[2]) == len(lines[1])
    assert lines[3].startswith("images/s ") and lines[3].endswith("    -")
    widths = {len(line) for line in lines[1:]}
    assert widths == {len(lines[1])}  # right-aligned to one width
    assert lines[4].endswith("0.85  12.50")


def test_breakdown_rows_of_one_pipeline_leave_the_other_blank() -> None:
    peer = peer_snapshot([_stats(100).to_json()])
    rows = {
        measure: (stream, peer_cell)
        for measure, stream, peer_cell in breakdown_rows({"peer": peer})
    }
    assert rows["batch"] == ("-", "500 ms")
    assert rows["tag"] == ("-", "300 ms (60%)")
    assert rows["other"] == ("-", "50 ms (10%)")
    assert rows["images per batch"] == ("-", "100.0")
    assert rows["consume wait (outside the batch)"] == ("-", "500 ms")
    assert (rows["batches with data"], rows["batches without data"]) == (("-", "1"), ("-", "0"))


def test_percentiles() -> None:
    assert percentiles(list(range(1, 101))) == pytest.approx([50.5, 99.01])
    assert percentiles([2.0]) == [2.0, 2.0]
    assert all(math.isnan(p) for p in percentiles([]))
    assert percentiles([1.0, 3.0], [50]) == [2.0]


def test_the_latency_poll_looks_back_to_the_oldest_image_it_still_expects() -> None:
    pending = Pending(expected={"a", "b", "c"})
    assert pending.since({}, now=100.0) == 99.0  # nothing sent: the last second
    pending.sent += [("a", 10.0), ("review", 11.0), ("b", 12.0), ("c", 13.0)]
    assert pending.since({}, now=20.0) == 9.0  # a, sent at 10, not seen yet
    # a seen: the image sent to review is not waited for
    assert pending.since({"a": 14.0}, now=20.0) == 11.0
    assert pending.since({"a": 14.0, "c": 15.0}, now=20.0) == 11.0  # b still pending
    assert pending.since({"a": 14.0, "b": 15.0, "c": 15.0}, now=20.0) == 19.0
    # an image that never shows holds the window open at most POLL_WINDOW_S
    stuck = Pending(expected=None)
    stuck.sent.append(("review", 10.0))
    assert stuck.since({}, now=100.0) == 100.0 - POLL_WINDOW_S


def test_fmt_marks_missing_values() -> None:
    assert fmt(None) == "-" and fmt(math.nan) == "-"
    assert fmt(1.234) == "1.23" and fmt(1234.5, ".0f") == "1234"


def test_a_phase_inside_another_is_not_taken_from_other_twice() -> None:
    snap = Snapshot(
        2, 2, 2.0, {"tag": 1.6, "solr": 0.6, "kafka": 0.2}, 10, nested=frozenset({"solr"})
    )
    means = snap.per_batch()
    assert means["other"] == pytest.approx(1.0 - 0.8 - 0.1)
    assert (snap - Snapshot()).nested == frozenset({"solr"})


def test_cpu_rows_give_ms_per_image_by_process_and_the_cores_kept_busy() -> None:
    before = Cpu({"pipeline": 10.0, "solr": 5.0, "kafka": 1.0}, at=100.0)
    after = Cpu({"pipeline": 18.0, "solr": 7.0, "kafka": 1.5}, at=105.0)
    stream = Result("stream", 2, drained_cpu=(after - before, 1000))
    rows = {measure: (a, b) for measure, a, b in cpu_rows({"stream": stream})}
    assert rows["draining: pipeline (ms/image)"] == ("8.0", "-")
    assert rows["draining: solr (ms/image)"] == ("2.0", "-")
    assert rows["draining: all (ms/image)"] == ("10.5", "-")
    assert rows["draining: cores busy"] == ("2.10", "-")  # 10.5 CPU seconds in 5 s
    assert "half load+10s: all (ms/image)" in rows and rows["half load+10s: cores busy"] == (
        "-",
        "-",
    )


def test_images_per_cpu_second_count_every_process() -> None:
    spent = Cpu({"pipeline": 8.0, "solr": 2.0, "kafka": 0.5}, at=5.0)
    assert per_cpu_second(Result("stream", 2, drained_cpu=(spent, 1050))) == "100"
    assert per_cpu_second(Result("peer", 1)) == "-"  # not measured
