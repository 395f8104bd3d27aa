"""ImageProducer validation and message building, without a broker."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from imagetag.avro import AvroDeserializer, AvroSerializer
from imagetag.errors import ConfigError, ServiceError
from imagetag.settings import Settings
from producers import ImageProducer, ImageRefused
from producers.producer import (
    CONFLUENT_REQUIRED,
    HEADER_CONTENT_TYPE,
    HEADER_SCHEMA_FINGERPRINT,
    REFUSAL_REASONS,
    ClientReport,
    OutgoingMessage,
)

# Nothing listens here: a producer that tried to talk to a broker would fail, not hang.
NO_BROKER = "127.0.0.1:9"


def _png(seed: int = 0, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


class FakeClient:
    """Records what the producer hands to the Kafka client; delivers on poll."""

    def __init__(self, full_times: int = 0) -> None:
        self.messages: list[OutgoingMessage] = []
        self.pending: list[ClientReport] = []
        self.full_times = full_times
        self.polls = 0
        self.fail_with: str | None = None

    def produce(self, message: OutgoingMessage, on_delivery: ClientReport) -> None:
        if self.full_times:
            self.full_times -= 1
            raise BufferError("Local: Queue full")
        self.messages.append(message)
        self.pending.append(on_delivery)

    def poll(self, timeout_s: float) -> None:
        self.polls += 1
        for report in self.pending:
            report(self.fail_with)
        self.pending.clear()

    def flush(self, timeout_s: float) -> int:
        self.poll(0)
        return 0

    def purge(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def settings() -> Settings:
    return Settings.load(kafka={"bootstrap_servers": NO_BROKER}, limits={"max_bytes": 4096})


@pytest.fixture
def producer(settings: Settings) -> ImageProducer:
    p = ImageProducer(settings, topic="t", check=False)
    p._client = FakeClient()
    return p


def _refusal(producer: ImageProducer, image: Any, **kwargs: Any) -> ImageRefused:
    with pytest.raises(ImageRefused) as info:
        producer.send(image, **kwargs)
    assert info.value.reason in REFUSAL_REASONS
    assert info.value.stage == "produce"
    return info.value


def _fake(producer: ImageProducer) -> FakeClient:
    client = producer._client
    assert isinstance(client, FakeClient)
    return client


# -- refusals ------------------------------------------------------------------------------


def test_refuses_empty_bytes_and_files(producer: ImageProducer, tmp_path: Path) -> None:
    assert _refusal(producer, b"").reason == "empty"
    (tmp_path / "empty.png").write_bytes(b"")
    refused = _refusal(producer, tmp_path / "empty.png")
    assert refused.reason == "empty"
    assert refused.source == (tmp_path / "empty.png").as_uri()
    assert "empty.png" in str(refused)


def test_refuses_oversize_without_reading_the_file(producer: ImageProducer, tmp_path: Path) -> None:
    assert _refusal(producer, _png(size=64) + b"\x00" * 5000).reason == "too_many_bytes"
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.write(_png())
        f.truncate(10 * 1024**3)  # a sparse 10 GB file: refused from its size alone
    refused = _refusal(producer, big)
    assert refused.reason == "too_many_bytes"
    assert "limits.max_bytes=4096" in refused.detail
    assert refused.original is None


def test_refuses_non_images_by_content_not_name(producer: ImageProducer, tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_text("I am text with an image's name")
    refused = _refusal(producer, tmp_path / "photo.jpg")
    assert refused.reason == "not_an_image"
    assert refused.original == b"I am text with an image's name"
    assert _refusal(producer, b"%PDF-1.7 ...").reason == "not_an_image"
    # and an image with a misleading name is fine
    (tmp_path / "notes.txt").write_bytes(_png())
    assert producer.send(tmp_path / "notes.txt") == hashlib.sha256(_png()).hexdigest()


def test_refuses_unreadable_paths(producer: ImageProducer, tmp_path: Path) -> None:
    assert _refusal(producer, tmp_path / "missing.png").reason == "unreadable"
    assert _refusal(producer, str(tmp_path)).reason == "unreadable"  # a folder
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    assert _refusal(producer, tmp_path / "dangling.png").reason == "unreadable"
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        locked = tmp_path / "locked.png"
        locked.write_bytes(_png())
        locked.chmod(0)
        assert _refusal(producer, locked).reason == "unreadable"


def test_refuses_bad_metadata(producer: ImageProducer) -> None:
    assert _refusal(producer, _png(), metadata={"n": 1}).reason == "bad_metadata"


def test_refusals_are_counted_and_nothing_is_sent(producer: ImageProducer, tmp_path: Path) -> None:
    inputs: list[bytes | Path] = [b"", b"", b"text", tmp_path / "missing.png"]
    for bad in [*inputs, b"\xff\xd8\xff" + b"\x00" * 5000]:
        with pytest.raises(ImageRefused):
            producer.send(bad)
    assert dict(producer.stats.refused) == {
        "empty": 2,
        "not_an_image": 1,
        "unreadable": 1,
        "too_many_bytes": 1,
    }
    assert producer.stats.queued == 0
    assert _fake(producer).messages == []


def test_rejects_wrong_argument_types(producer: ImageProducer) -> None:
    with pytest.raises(TypeError):
        producer.send(12345)  # type: ignore[arg-type]


# -- the message ---------------------------------------------------------------------------


def test_message_key_value_and_headers(producer: ImageProducer, tmp_path: Path) -> None:
    data = _png(7)
    (tmp_path / "cat.png").write_bytes(data)
    image_id = producer.send(tmp_path / "cat.png", label="cat", metadata={"camera": "x"})
    topic, key, value, headers = _fake(producer).messages[0]
    assert topic == "t"
    assert key == image_id.encode() == hashlib.sha256(data).hexdigest().encode()
    fingerprint = AvroSerializer("ImageEvent").fingerprint
    assert dict(headers) == {
        HEADER_CONTENT_TYPE: b"image/png",
        HEADER_SCHEMA_FINGERPRINT: fingerprint.hex().encode(),
    }
    assert value[:2] == b"\xc3\x01" and value[2:10] == fingerprint
    event = AvroDeserializer("ImageEvent")(value)
    assert event["id"] == image_id
    assert event["image"] == data
    assert event["content_type"] == "image/png"
    assert event["source"] == (tmp_path / "cat.png").as_uri()
    assert event["label"] == "cat"
    assert event["metadata"] == {"camera": "x"}
    assert event["produced_at"].tzinfo is not None


def test_bytes_get_a_content_addressed_source(producer: ImageProducer) -> None:
    data = _png(8)
    image_id = producer.send(data)
    event = AvroDeserializer("ImageEvent")(_fake(producer).messages[0][2])
    assert event["source"] == f"urn:sha256:{image_id}"
    producer.send(data, source="s3://bucket/x.png")
    assert (
        AvroDeserializer("ImageEvent")(_fake(producer).messages[1][2])["source"]
        == "s3://bucket/x.png"
    )


def test_same_bytes_same_key(producer: ImageProducer, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(1))
    (tmp_path / "b.png").write_bytes(_png(1))
    assert (
        producer.send(tmp_path / "a.png")
        == producer.send(tmp_path / "b.png")
        == producer.send(_png(1))
    )


def test_delivery_reports_are_counted(producer: ImageProducer) -> None:
    reports: list[tuple[str, str | None]] = []
    producer._on_delivery = lambda image_id, error: reports.append((image_id, error))
    first = producer.send(_png(1))
    _fake(producer).fail_with = "_MSG_TIMED_OUT: Local: Message timed out"
    second = producer.send(_png(2))
    stats = producer.close()
    assert (stats.queued, stats.sent, stats.failed, stats.pending) == (2, 1, 1, 0)
    assert dict(stats.failures) == {"_MSG_TIMED_OUT": 1}
    assert reports == [(first, None), (second, "_MSG_TIMED_OUT: Local: Message timed out")]
    assert stats.bytes_sent > len(_png(1))
    with pytest.raises(RuntimeError, match="closed"):
        producer.send(_png(3))


def test_waits_when_the_local_queue_is_full(producer: ImageProducer) -> None:
    client = _fake(producer)
    client.full_times = 5
    producer.send(_png(1))
    assert len(client.messages) == 1
    assert client.polls >= 5  # served delivery reports while waiting for room


def test_context_manager_flushes(settings: Settings) -> None:
    client = FakeClient()
    with ImageProducer(settings, topic="t", check=False) as producer:
        producer._client = client
        producer.send(_png(1))
        assert producer.stats.sent in (0, 1)
    assert producer.stats.sent == 1


# -- real clients without a broker ----------------------------------------------------------


def test_confluent_client_queues_then_purges_on_close(settings: Settings) -> None:
    """With no broker the message stays queued; close() gives up after its timeout and
    counts it as failed instead of hanging."""
    producer = ImageProducer(settings, topic="t", check=False)
    producer.send(_png(1))
    stats = producer.close(timeout_s=0.5)
    assert (stats.queued, stats.sent, stats.failed) == (1, 0, 1)
    assert list(stats.failures) == ["_PURGE_QUEUE"]


def test_confluent_back_pressure_with_a_tiny_queue(settings: Settings) -> None:
    """A queue of 2 messages and no broker: the third send waits (serving reports) instead of
    raising BufferError; here it can only get room when messages time out."""
    producer = ImageProducer(
        settings,
        topic="t",
        check=False,
        client_config={
            "queue.buffering.max.messages": 2,
            "message.timeout.ms": 300,
            "linger.ms": 0,
        },
    )
    for seed in range(4):
        producer.send(_png(seed))
    stats = producer.close(timeout_s=2)
    assert stats.queued == 4
    assert stats.failed == 4  # timed out / purged: no broker
    assert stats.failures.keys() <= {"_MSG_TIMED_OUT", "_PURGE_QUEUE"}


def test_idempotence_and_acks_cannot_be_turned_off(settings: Settings) -> None:
    from producers.producer import _ConfluentClient

    client = _ConfluentClient(settings, {"enable.idempotence": "false", "acks": "1"})
    assert CONFLUENT_REQUIRED == {"enable.idempotence": "true", "acks": "all"}
    client.close()


def test_unreachable_broker_is_a_service_error(settings: Settings) -> None:
    with pytest.raises(ServiceError, match=r"kafka at 127\.0\.0\.1:9"):
        ImageProducer(settings, topic="t", check=True, check_timeout_s=1)


def test_kafka_python_unreachable_broker_is_a_service_error(settings: Settings) -> None:
    fallback = settings.derive(kafka={"client_library": "kafka-python"})
    with pytest.raises(ServiceError, match=r"kafka at 127\.0\.0\.1:9"):
        ImageProducer(fallback, topic="t", client_config={"api_version_auto_timeout_ms": 500})


def test_kafka_python_rejects_untranslatable_options(settings: Settings) -> None:
    fallback = settings.derive(kafka={"client_library": "kafka-python"})
    with pytest.raises(ConfigError, match="no kafka-python equivalent"):
        ImageProducer(fallback, topic="t", client_config={"socket.keepalive.enable": "true"})


# -- the produce command's pieces that need no broker ------------------------------------------


def test_produce_command_arguments() -> None:
    from imagetag import cli
    from imagetag.commands import produce
    from imagetag.errors import ImagetagError

    args = cli.build_parser().parse_args(
        [
            "produce",
            "a/",
            "b.bin[0:10]",
            "--label-from",
            "csv:l.csv",
            "--limit",
            "5",
            "--glob",
            "*.png",
        ]
    )
    assert (args.sources, args.limit, args.glob) == (["a/", "b.bin[0:10]"], 5, ["*.png"])
    assert produce._label_from(args.label_from) == Path("l.csv")
    assert produce._label_from("folder") == "folder"
    assert produce._label_from(None) is None
    with pytest.raises(ImagetagError, match="--label-from"):
        produce._label_from("parent")


def test_produce_summary_counts_undelivered_as_failed() -> None:
    from imagetag.commands import produce

    stats = {
        "queued": 10, "sent": 7, "failed": 1, "bytes_sent": 7_000_000,
        "refused": {"empty": 2, "unreadable": 1}, "refused_total": 3,
        "failures": {"MSG_SIZE_TOO_LARGE": 1},
    }  # fmt: skip
    summary = produce._summary(stats, 2.0, "images")
    assert (summary["sent"], summary["refused"], summary["failed"]) == (7, 3, 3)
    text = produce._format(summary)
    assert "refused:  3 (empty: 2, unreadable: 1)" in text
    assert "3.5 MB/s" in text
