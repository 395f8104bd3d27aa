"""The jobs' Prometheus metrics and what the stream's progress events feed (offsets, lag, the
batch line, the consumer group): with a real registry and real HTTP, without Spark or Kafka."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import requests
from prometheus_client import generate_latest

from imagetag.metrics import BackfillMetrics, StreamMetrics, names, parse
from imagetag.pipeline import Written
from imagetag.settings import Settings
from streaming.job import BatchStats, ProgressReporter, batch_line, source_offsets


def written(**counts: int) -> Written:
    return Written(
        dict(counts),
        [1500, 250] if counts.get("tagged") else [],
        {"decode/not_an_image": counts.get("dead", 0)} if counts.get("dead") else {},
        {"tag": 0.5, "solr": 0.25, "kafka": 0.125},
        solr_retries=2,
        solr_stalled_s=1.5,
    )


def scrape(
    metrics: StreamMetrics | BackfillMetrics,
) -> dict[str, list[tuple[dict[str, str], float]]]:
    return parse(generate_latest(metrics.registry).decode())


def by(samples: list[tuple[dict[str, str], float]], label: str) -> dict[str, float]:
    return {labels[label]: value for labels, value in samples}


def test_a_written_batch_is_counted_by_outcome_reason_phase_and_latency() -> None:
    metrics = StreamMetrics()
    metrics.batch_written(written(tagged=2, review=1, dead=3, quarantined=1))
    metrics.batch_written(written(tagged=1))
    metrics.model_in_use("v0007")
    page = scrape(metrics)
    assert by(page["imagetag_stream_records_total"], "outcome") == {
        "tagged": 3,
        "review": 1,
        "dead": 3,
    }
    assert page["imagetag_stream_batches_total"][0][1] == 2
    assert page["imagetag_stream_quarantined_total"][0][1] == 1
    dead = page["imagetag_stream_dead_letters_total"]
    assert dead == [({"stage": "decode", "reason": "not_an_image"}, 3.0)]
    assert by(page["imagetag_stream_phase_duration_seconds_count"], "phase") == {
        "tag": 2,
        "solr": 2,
        "kafka": 2,
    }
    assert by(page["imagetag_stream_phase_duration_seconds_sum"], "phase")["kafka"] == 0.25
    assert page["imagetag_stream_produce_to_tagged_seconds_count"][0][1] == 4
    assert page["imagetag_stream_produce_to_tagged_seconds_sum"][0][1] == pytest.approx(3.5)
    assert page["imagetag_stream_solr_retries_total"][0][1] == 4
    assert page["imagetag_stream_solr_outage_seconds_total"][0][1] == 3
    assert page["imagetag_stream_model_info"] == [({"version": "v0007"}, 1.0)]
    assert page["imagetag_stream_last_batch_timestamp_seconds"][0][1] > 0


def test_names_are_what_each_job_serves() -> None:
    stream, backfill = names(StreamMetrics), names(BackfillMetrics)
    assert "imagetag_stream_records_total" in stream
    assert "imagetag_stream_input_lag_records" in stream  # labelled, so no sample before a batch
    assert "imagetag_stream_batch_duration_seconds_bucket" in stream
    assert "imagetag_stream_model_info" in stream
    assert "imagetag_backfill_done_splits" in backfill
    assert not any(name.startswith("imagetag_backfill") for name in stream)
    assert "imagetag_stream_planned_splits" not in stream


def test_the_endpoint_serves_on_a_free_port_and_can_be_off() -> None:
    metrics = BackfillMetrics()
    assert metrics.serve("127.0.0.1", None) is None
    port = metrics.serve("127.0.0.1", 0)
    assert port
    try:
        metrics.planned.set(12)
        page = parse(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        assert page["imagetag_backfill_planned_splits"][0][1] == 12
        taken = BackfillMetrics()
        assert taken.serve("127.0.0.1", port) is None  # in use: logged, the job goes on
    finally:
        metrics.close()


def test_source_offsets_read_a_kafka_sources_progress() -> None:
    assert source_offsets('{"images":{"1":40,"0":12}}') == {"images": {0: 12, 1: 40}}
    assert source_offsets(None) == {}
    assert source_offsets("not json") == {}
    assert source_offsets("[1, 2]") == {}


def test_the_batch_line_has_the_counts_and_each_phase() -> None:
    line = batch_line(7, 6, written(tagged=2, review=1, dead=3), 1234, 5)
    assert line == (
        "batch 7: input=6 tagged=2 review=1 dead=3 duration=1234ms "
        "(tag 500ms solr 250ms kafka 125ms) lag=5"
    )
    assert "quarantined=1" in batch_line(8, 1, written(dead=1, quarantined=1), 10, 0)
    assert batch_line(9, 0, None, 10, 0).startswith("batch 9: input=0 tagged=0")


class FakeGroup:
    def __init__(self, fail: int = 0) -> None:
        self.commits: list[tuple[str, dict[int, int]]] = []
        self.fail = fail

    def commit(self, topic: str, offsets: dict[int, int]) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("coordinator not available")
        self.commits.append((topic, dict(offsets)))


def progress(batch_id: int, rows: int, end: str, latest: str, at: str = "") -> Any:
    source = SimpleNamespace(endOffset=end, latestOffset=latest)
    return SimpleNamespace(
        batchId=batch_id,
        timestamp=at or f"2026-12-02T10:00:{batch_id:02d}.000Z",
        numInputRows=rows,
        sources=[source],
        durationMs={"triggerExecution": 900, "addBatch": 700, "walCommit": 20},
    )


def test_progress_sets_the_lag_logs_the_batch_and_commits_the_group_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = BatchStats()
    reporter = ProgressReporter(Settings.model_validate({}), stats)
    group = FakeGroup(fail=1)
    reporter._group = group  # type: ignore[assignment]
    stats.record(3, written(tagged=2))
    with caplog.at_level("INFO", "imagetag.stream"):
        reporter.progress(progress(3, 2, '{"images":{"0":5,"1":7}}', '{"images":{"0":9,"1":7}}'))
    assert "batch 3: input=2 tagged=2" in caplog.text
    assert "could not commit" in caplog.text  # the first commit failed: logged, not raised
    assert by(scrape(stats.metrics)["imagetag_stream_input_lag_records"], "partition") == {
        "0": 4,
        "1": 0,
    }
    page = scrape(stats.metrics)
    assert page["imagetag_stream_batch_duration_seconds_count"][0][1] == 1
    steps = by(page["imagetag_stream_trigger_step_seconds_sum"], "step")
    assert steps == {"addBatch": 0.7, "walCommit": 0.02}
    assert stats.pop(3) is None  # the batch's counts were taken for its line
    # the next event retries the commit; a no-data batch with the same offsets commits nothing
    reporter.progress(progress(4, 4, '{"images":{"0":9,"1":7}}', '{"images":{"0":9,"1":7}}'))
    reporter.progress(progress(5, 0, '{"images":{"0":9,"1":7}}', '{"images":{"0":9,"1":7}}'))
    assert group.commits == [("images", {0: 9, 1: 7})]
    assert by(scrape(stats.metrics)["imagetag_stream_input_lag_records"], "partition") == {
        "0": 0,
        "1": 0,
    }


class FakeQuery:
    """A query's ``lastProgress``, as ``StreamingQuery`` returns it; raises when told to."""

    def __init__(self) -> None:
        self.last: Any = None
        self.broken = False

    @property
    def lastProgress(self) -> Any:
        if self.broken:
            raise RuntimeError("py4j: the JVM went away")
        return self.last


def test_poll_reports_each_progress_once_whoever_polls_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = BatchStats()
    reporter = ProgressReporter(Settings.model_validate({}), stats)
    reporter._group = FakeGroup()  # type: ignore[assignment]
    query = FakeQuery()
    with caplog.at_level("INFO", "imagetag.stream"):
        reporter.poll(query)  # type: ignore[arg-type]  # no progress yet: nothing
        stats.record(3, written(tagged=2))
        query.last = progress(3, 2, '{"images":{"0":5}}', '{"images":{"0":5}}')
        for _ in range(3):  # the next batch's start and the supervisor's loop both poll
            reporter.poll(query)  # type: ignore[arg-type]
        # an idle progress of the same batch, later: the lag moves, no second line
        query.last = progress(3, 0, '{"images":{"0":5}}', '{"images":{"0":8}}', at="later")
        reporter.poll(query)  # type: ignore[arg-type]
        query.broken = True
        reporter.poll(query)  # type: ignore[arg-type]  # logged, not raised
    assert caplog.text.count("batch 3: input=2 tagged=2") == 1
    assert "reporting the stream's progress failed" in caplog.text
    page = scrape(stats.metrics)
    assert page["imagetag_stream_batch_duration_seconds_count"][0][1] == 1
    assert by(page["imagetag_stream_input_lag_records"], "partition") == {"0": 3}
