"""`imagetag status --json` against the real stack: the test's own topics and alias, seeded with
dead letters, review records, Solr documents and a consumer group's commits, and a real
StreamMetrics endpoint standing in for the stream's."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from imagetag.kafka_admin import GroupOffsets
from imagetag.metrics import StreamMetrics
from imagetag.records import dead_letter
from imagetag.settings import Settings
from imagetag.solr import solr_client

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGETAG = Path(sys.executable).with_name("imagetag")


def _delivered(producer: Producer, topic: str, value: bytes, partition: int = -1) -> None:
    def report(err: Any, _msg: Any) -> None:
        assert err is None, err

    producer.produce(topic, value=value, partition=partition, on_delivery=report)


@pytest.fixture
def seeded(isolated_settings: Settings) -> Settings:
    """The test's topics and alias with: 3 committed dead letters (2 decode/not_an_image, 1
    limits/too_many_pixels) and one aborted; 3 committed review records; 3 input records of
    which the stream's group committed 1 (lag 2); 3 Solr documents of two model versions."""
    settings = isolated_settings
    k = settings.kafka
    letters = [
        dead_letter(b"a", b"img-a", (k.topic_images, 0, 1), "decode", "not_an_image", "no"),
        dead_letter(b"b", b"img-b", (k.topic_images, 1, 2), "decode", "not_an_image", "no"),
        dead_letter(b"c", b"img-c", (k.topic_images, 0, 3), "limits", "too_many_pixels", "big"),
    ]
    producer = Producer(
        k.client_config() | {"transactional.id": f"test-status-{uuid.uuid4().hex}", "log_level": 3}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for _, value in letters:
        _delivered(producer, k.topic_dlq, value)
    for i in range(3):
        _delivered(producer, k.topic_review, f"tag-result-{i}".encode())
    producer.commit_transaction(30)
    producer.begin_transaction()
    _delivered(producer, k.topic_dlq, letters[0][1])
    producer.flush(30)
    producer.abort_transaction(30)

    plain = Producer(k.client_config() | {"log_level": 3})
    for partition in (0, 0, 1):
        _delivered(plain, k.topic_images, b"event", partition)
    assert plain.flush(30) == 0
    GroupOffsets(settings, k.stream_group).commit(k.topic_images, {0: 1, 1: 0})

    solr_client(settings).add(
        [
            {"id": "a" * 64, "model_version": "v0001"},
            {"id": "b" * 64, "model_version": "v0001"},
            {"id": "c" * 64, "model_version": "v0002"},
        ],
        commit=True,
    )
    return settings


@pytest.fixture
def stream_metrics() -> Iterator[tuple[StreamMetrics, int]]:
    """A real StreamMetrics endpoint on a free port, as the stream serves it."""
    metrics = StreamMetrics()
    port = metrics.serve("127.0.0.1", 0)
    assert port
    metrics.records.labels("tagged").inc(40)
    metrics.records.labels("review").inc(3)
    metrics.batches.inc(2)
    metrics.last_batch.set(time.time() - 1)
    metrics.model_in_use("v0002")
    metrics.input_lag({"0": 1, "1": 1})
    try:
        yield metrics, port
    finally:
        metrics.close()


def _status(settings: Settings, *args: str) -> tuple[int, dict[str, Any], str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(IMAGETAG), "status", "--json", *args],
        capture_output=True,
        text=True,
        env=settings.child_env(),
        cwd=REPO,
        timeout=120,
    )
    print(result.stdout, result.stderr)
    return result.returncode, json.loads(result.stdout), result.stderr, time.monotonic() - started


def test_status_shows_the_services_up_and_the_counts(
    seeded: Settings, stream_metrics: tuple[StreamMetrics, int]
) -> None:
    _, port = stream_metrics
    settings = seeded.derive(metrics={"stream_port": port})
    code, data, stderr, _ = _status(settings, "--window", "0.5")
    assert (code, data["ok"], data["exit_code"], stderr) == (0, True, 0, "")
    services = data["services"]
    assert services["kafka"]["up"] and services["solr"]["up"] and services["stream"]["up"]
    assert services["kafka"]["address"] == settings.kafka.bootstrap_servers
    assert isinstance(services["kafka"]["version"], str)  # the local stack runs the broker
    assert isinstance(services["solr"]["version"], str)
    assert services["spark"]["address"] == settings.spark.master

    stream = data["stream"]
    assert (stream["alive"], stream["batches"], stream["model_version"]) == (True, 2, "v0002")
    assert stream["records"] == {"tagged": 40, "review": 3, "dead": 0}
    assert (stream["rate_per_s"], stream["rate_window_batches"]) == (0.0, 0)
    assert stream["rate_window_s"] >= 0.5
    assert 0.5 <= stream["last_batch_age_s"] < 60
    assert stream["lag"]["stream"] == {"partitions": {"0": 1, "1": 1}, "total": 2}
    group = stream["lag"]["group"]
    assert (group["group"], group["total"], group["error"]) == (
        settings.kafka.stream_group,
        2,
        None,
    )
    assert group["partitions"]["0"] == {"committed": 1, "end": 2, "lag": 1}

    solr = data["solr"]
    assert (solr["total"], solr["by_model_version"]) == (3, {"v0001": 2, "v0002": 1})
    assert solr["collections"] == [f"{settings.solr.collection}_1"]

    review = data["review"]
    assert (review["records"], review["complete"], review["error"]) == (3, True, None)
    assert review["offsets"] > 3  # the transactions' markers take offsets too
    dead = data["dead_letters"]
    assert (dead["records"], dead["complete"]) == (3, True)  # the aborted letter is not counted
    assert dead["by_reason"] == [
        {"stage": "decode", "reason": "not_an_image", "count": 2},
        {"stage": "limits", "reason": "too_many_pixels", "count": 1},
    ]
    assert data["model"]["current"] is None and "CURRENT" in data["model"]["error"]


def test_a_bounded_read_says_at_least(seeded: Settings) -> None:
    _, data, _, _ = _status(seeded, "--window", "0.1", "--scan-records", "2")
    assert (data["review"]["records"], data["review"]["complete"]) == (2, False)
    assert data["dead_letters"]["complete"] is False


def test_kafka_and_the_stream_down_are_lines_not_tracebacks(settings: Settings) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    nowhere = settings.derive(
        kafka={"bootstrap_servers": "127.0.0.1:1"}, metrics={"stream_port": closed}
    )
    code, data, stderr, seconds = _status(nowhere, "--timeout", "2")
    assert (code, data["ok"], stderr) == (1, False, "")  # librdkafka's retries are not printed
    kafka = data["services"]["kafka"]
    assert (kafka["up"], kafka["address"]) == (False, "127.0.0.1:1")
    assert kafka["detail"].startswith("not reachable")
    assert data["services"]["solr"]["up"] is True
    assert data["stream"]["alive"] is False and data["stream"]["reason"].startswith("not reach")
    assert data["review"]["error"] == "not read: Kafka is down"
    assert data["stream"]["lag"]["group"]["error"] == "not read: Kafka is down"
    assert seconds < 60
