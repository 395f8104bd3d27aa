"""`imagetag dlq replay` against the real broker: dead letters built as the stream builds them,
written to the test's own dead-letter topic, replayed to its own input topic."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from imagetag import cli
from imagetag.avro import AvroDeserializer, AvroSerializer
from imagetag.commands import dlq
from imagetag.errors import ServiceError
from imagetag.records import dead_letter, dead_letter_for_refused_doc
from imagetag.settings import Settings
from producers.replay import REPLAY_HEADER, ReplayOptions, replay_dead_letters

REPO = Path(__file__).resolve().parents[2]
IMAGETAG = Path(sys.executable).with_name("imagetag")


@dataclass(frozen=True)
class Letter:
    """A dead letter as written: the original record, and where the letter sits in the DLQ."""

    name: str
    key: bytes | None
    value: bytes
    partition: int
    offset: int


def _image_event(seed: int) -> tuple[bytes, bytes]:
    """(key, value) of a real ImageEvent: a random 32x32 PNG (about 3.3 KB) keyed by its sha256."""
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    image = buf.tobytes()
    image_id = hashlib.sha256(image).hexdigest()
    value = AvroSerializer("ImageEvent")(
        {
            "id": image_id,
            "image": image,
            "content_type": "image/png",
            "source": f"test:///{seed}",
            "produced_at": dt.datetime.now(dt.UTC),
            "label": "x",
        }
    )
    return image_id.encode(), value


def _aged(letter_value: bytes, days: int) -> bytes:
    """The same DeadLetter, failed ``days`` ago."""
    letter = AvroDeserializer("DeadLetter")(letter_value)
    letter["failed_at"] = letter["failed_at"] - dt.timedelta(days=days)
    return AvroSerializer("DeadLetter")(letter)


def _transactional_producer(settings: Settings) -> Producer:
    producer = Producer(
        settings.kafka.client_config()
        | {"transactional.id": f"test-dlq-{uuid.uuid4().hex}", "log_level": 3}
    )
    producer.init_transactions(30)
    return producer


def _write(producer: Producer, topic: str, key: bytes | None, value: bytes) -> list[Any]:
    delivered: list[Any] = []

    def report(err: Any, msg: Any) -> None:
        assert err is None, err
        delivered.append(msg)

    producer.produce(topic, key=key, value=value, on_delivery=report)
    return delivered


@pytest.fixture
def letters(isolated_settings: Settings) -> dict[str, Letter]:
    """Seven committed records in the dead-letter topic, written in one transaction as the
    stream writes them (so commit markers take offsets), plus one aborted letter:

    - ``a``, ``b``: decode / not_an_image, failed now; ``c``: limits / too_many_pixels, now;
    - ``old``: decode / not_an_image, failed three days ago;
    - ``index``: index / solr_refused (a refused Solr document, not an ImageEvent);
    - ``empty``: avro / empty (no value);
    - ``junk``: not a DeadLetter at all;
    - ``aborted``: decode / not_an_image in an aborted transaction (never visible).
    """
    settings = isolated_settings
    topic = settings.kafka.topic_dlq
    images = settings.kafka.topic_images
    originals = {name: _image_event(seed) for seed, name in enumerate(["a", "b", "c", "old"])}
    originals["aborted"] = _image_event(99)
    values = {
        "a": dead_letter(*originals["a"], (images, 0, 10), "decode", "not_an_image", "no")[1],
        "b": dead_letter(*originals["b"], (images, 1, 11), "decode", "not_an_image", "no")[1],
        "c": dead_letter(*originals["c"], (images, 0, 12), "limits", "too_many_pixels", "big")[1],
        "old": _aged(
            dead_letter(*originals["old"], (images, 1, 3), "decode", "not_an_image", "no")[1], 3
        ),
        "index": dead_letter_for_refused_doc("f" * 64, '{"id": "ff"}', "bad field", settings)[1],
        "empty": dead_letter(b"e" * 64, b"", (images, 0, 13), "avro", "empty", "no value")[1],
        "junk": b"not an avro message",
    }
    keys: dict[str, bytes | None] = {name: key for name, (key, _) in originals.items()}
    keys |= {"index": b"f" * 64, "empty": b"e" * 64, "junk": None}

    producer = _transactional_producer(settings)
    producer.begin_transaction()
    reports = {name: _write(producer, topic, keys[name], value) for name, value in values.items()}
    producer.commit_transaction(30)
    producer.begin_transaction()
    aborted = dead_letter(*originals["aborted"], (images, 0, 14), "decode", "not_an_image", "")
    _write(producer, topic, aborted[0], aborted[1])
    producer.flush(30)
    producer.abort_transaction(30)

    found: dict[str, Letter] = {}
    for name, [msg] in reports.items():
        original = originals.get(name)
        found[name] = Letter(
            name,
            original[0] if original else None,
            original[1] if original else b"",
            int(msg.partition()),
            int(msg.offset()),
        )
    return found


def _input_records(settings: Settings, timeout_s: float = 30) -> list[Any]:
    """Every committed message of the input topic (key, value and headers), start to end."""
    consumer = Consumer(
        settings.kafka.client_config()
        | {
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    topic = settings.kafka.topic_images
    try:
        partitions = set(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages: list[Any] = []
        ended: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while ended != partitions and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error() is None:
                    messages.append(msg)
                else:
                    ended.add(int(msg.partition() or 0))
        assert ended == partitions, "input topic not read to its end"
        return messages
    finally:
        consumer.close()


def _replay_cli(
    settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, dict[str, Any]]:
    args = cli.build_parser().parse_args(["dlq", "replay", *argv, "--json"])
    capsys.readouterr()
    code = dlq.run(args, settings)
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _header(settings: Settings, letter: Letter) -> bytes:
    return f"{settings.kafka.topic_dlq}:{letter.partition}:{letter.offset}".encode()


def _groups(summary: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """{(stage, reason): (matched, replayable, sent, skipped)}"""
    return {
        (g["stage"], g["reason"]): (g["matched"], g["replayable"], g["sent"], g["skipped"])
        for g in summary["groups"]
    }


def test_dry_run_counts_and_sends_nothing(
    isolated_settings: Settings, letters: dict[str, Letter], capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary = _replay_cli(isolated_settings, capsys, "--dry-run")
    assert code == 0
    assert summary["dry_run"] is True
    assert (summary["read"], summary["not_dead_letters"], summary["filtered_out"]) == (7, 1, 0)
    assert (summary["matched"], summary["replayable"], summary["sent"]) == (6, 4, 0)
    assert summary["skipped_by_why"] == {"index_document": 1, "empty_value": 1}
    assert _groups(summary) == {
        ("avro", "empty"): (1, 0, 0, 1),
        ("decode", "not_an_image"): (3, 3, 0, 0),
        ("index", "solr_refused"): (1, 0, 0, 1),
        ("limits", "too_many_pixels"): (1, 1, 0, 0),
    }
    assert _input_records(isolated_settings) == []


def test_filters_choose_what_is_sent_byte_for_byte_with_the_replay_header(
    isolated_settings: Settings, letters: dict[str, Letter], capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary = _replay_cli(
        isolated_settings, capsys, "--reason", "not_an_image", "--stage", "decode", "--since", "1d"
    )
    assert code == 0
    assert (summary["read"], summary["filtered_out"], summary["not_dead_letters"]) == (7, 4, 1)
    assert _groups(summary) == {("decode", "not_an_image"): (2, 2, 2, 0)}
    assert (summary["sent"], summary["failed"]) == (2, 0)

    sent = _input_records(isolated_settings)
    assert sorted((m.key(), m.value(), m.headers()) for m in sent) == sorted(
        (
            letters[name].key,
            letters[name].value,
            [(REPLAY_HEADER, _header(isolated_settings, letters[name]))],
        )
        for name in ("a", "b")
    )
    # The values are the original ImageEvents, unchanged: the stream decodes them as before.
    for msg in sent:
        event = AvroDeserializer("ImageEvent")(msg.value())
        assert event["id"].encode() == msg.key()


def test_everything_replayable_twice_and_the_table(
    isolated_settings: Settings, letters: dict[str, Letter], capsys: pytest.CaptureFixture[str]
) -> None:
    first = replay_dead_letters(isolated_settings, ReplayOptions())
    second = replay_dead_letters(isolated_settings, ReplayOptions())
    assert first.as_dict()["groups"] == second.as_dict()["groups"]
    assert (first.total("sent"), first.total("failed"), first.read) == (4, 0, 7)

    sent = _input_records(isolated_settings)
    assert len(sent) == 8
    by_header: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for msg in sent:
        [(name, value)] = msg.headers()
        assert name == REPLAY_HEADER
        by_header.setdefault(value, []).append((msg.key(), msg.value()))
    # Each letter twice under the same header (so the stream de-duplicates the second), and
    # never the aborted one, the index document, the empty value or the junk record.
    expected = {
        _header(isolated_settings, letters[n]): [(letters[n].key, letters[n].value)] * 2
        for n in ("a", "b", "c", "old")
    }
    assert by_header == expected

    table = dlq.format_summary(second)
    print("\n" + table)
    assert "index_document" in table and "the image bytes are in the archive" in table
    total = next(line for line in table.splitlines() if line.startswith("total"))
    assert total.split()[1:4] == ["6", "4", "0"]


def test_delivery_failures_make_the_exit_code_non_zero(
    isolated_settings: Settings, letters: dict[str, Letter], capsys: pytest.CaptureFixture[str]
) -> None:
    """An input topic whose brokers refuse messages over 2 KB: every ImageEvent (~3.3 KB) fails."""
    del letters
    name = f"t_tiny_{uuid.uuid4().hex[:8]}"
    admin = AdminClient(dict(isolated_settings.kafka.client_config()))
    admin.create_topics([NewTopic(name, 1, 1, config={"max.message.bytes": "2048"})])[name].result()
    try:
        tiny = isolated_settings.derive(kafka={"topic_images": name})
        code, summary = _replay_cli(tiny, capsys, "--stage", "limits")
        assert code == 1
        assert (summary["replayable"], summary["sent"], summary["failed"]) == (1, 0, 1)
        assert summary["failed_by_reason"] == {"MSG_SIZE_TOO_LARGE": 1}
    finally:
        admin.delete_topics([name])[name].result()


def test_an_empty_dead_letter_topic_replays_nothing(
    isolated_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary = _replay_cli(isolated_settings, capsys)
    assert (code, summary["read"], summary["sent"], summary["groups"]) == (0, 0, 0, [])


def test_a_missing_topic_is_a_service_error(isolated_settings: Settings) -> None:
    missing = isolated_settings.derive(kafka={"topic_dlq": f"no_such_{uuid.uuid4().hex[:8]}"})
    with pytest.raises(ServiceError, match="no topic no_such_"):
        replay_dead_letters(missing, ReplayOptions(dry_run=True))


def test_the_command_prints_a_table(
    isolated_settings: Settings, letters: dict[str, Letter]
) -> None:
    """The real `imagetag dlq replay` entry point, in a child process."""
    del letters
    result = subprocess.run(
        [str(IMAGETAG), "dlq", "replay", "--dry-run", "--since", "2h"],
        capture_output=True,
        text=True,
        env=isolated_settings.child_env(),
        cwd=REPO,
        timeout=120,
    )
    print("\n" + result.stdout)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0].endswith("(dry run: nothing sent)")
    assert lines[1] == "read 7 records: 5 matched the filters, 1 filtered out, 1 not DeadLetters"
    assert any(line.split()[:4] == ["decode", "not_an_image", "2", "2"] for line in lines)
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1:3] == ["5", "3"]
    assert "failed" not in lines[3]  # the header: nothing is sent in a dry run


def test_unreachable_kafka_is_one_line_naming_kafka_and_the_address(settings: Settings) -> None:
    nowhere = settings.derive(kafka={"bootstrap_servers": "127.0.0.1:1"})
    with pytest.raises(ServiceError, match=r"^kafka at 127\.0\.0\.1:1: not reachable"):
        replay_dead_letters(nowhere, ReplayOptions())
    result = subprocess.run(
        [str(IMAGETAG), "dlq", "replay"],
        capture_output=True,
        text=True,
        env=nowhere.child_env(),
        cwd=REPO,
        timeout=120,
    )
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.splitlines()  # librdkafka's retries are not printed
    assert line.startswith("imagetag dlq: kafka at 127.0.0.1:1: not reachable")
