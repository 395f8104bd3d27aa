"""`imagetag produce` and ImageProducer against the real broker, with both client libraries."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from imagetag import cli
from imagetag.avro import AvroDeserializer, AvroSerializer
from imagetag.errors import ServiceError
from imagetag.settings import Settings
from producers import ImageProducer
from producers.producer import HEADER_CONTENT_TYPE, HEADER_SCHEMA_FINGERPRINT

REPO = Path(__file__).resolve().parents[2]
IMAGETAG = Path(sys.executable).with_name("imagetag")
CLIENTS = ["confluent", "kafka-python"]


def _generate(root: Path, count: int, seed: int = 0) -> dict[str, str]:
    """``count`` distinct images (90% 32×32 PNG, 10% 64×64 JPEG) in two labelled folders.
    Returns {sha256 hex: label}."""
    rng = np.random.default_rng(seed)
    expected: dict[str, str] = {}
    for i in range(count):
        label = "even" if i % 2 == 0 else "odd"
        (root / label).mkdir(parents=True, exist_ok=True)
        if i % 10 == 9:
            ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            name = f"img_{i:04d}.jpg"
        else:
            ok, buf = cv2.imencode(".png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            name = f"img_{i:04d}.png"
        assert ok
        data = buf.tobytes()
        (root / label / name).write_bytes(data)
        expected[hashlib.sha256(data).hexdigest()] = label
    assert len(expected) == count
    return expected


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("thousand")
    return root, _generate(root, 1000)


def _consume(settings: Settings, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    """Read ``expected`` messages from the start of ``topic`` with a fresh consumer group."""
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            messages.append(msg)
        # a moment more: nothing beyond what was expected
        extra = consumer.poll(1.0)
        assert extra is None or extra.error() is not None, "more messages than expected"
    finally:
        consumer.close()
    return messages


def _produce_cli(
    settings: Settings, *argv: str, client: str = "confluent"
) -> tuple[int, dict[str, Any]]:
    """Run the real `imagetag produce` entry point against the test stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETAG_")}
    env["IMAGETAG_KAFKA__BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers
    env["IMAGETAG_KAFKA__CLIENT_LIBRARY"] = client
    env["IMAGETAG_LIMITS__MAX_BYTES"] = str(settings.limits.max_bytes)
    result = subprocess.run(
        [str(IMAGETAG), "produce", *argv, "--json", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def _produce_in_process(
    settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, dict[str, Any]]:
    args = cli.build_parser().parse_args(["produce", *argv, "--json", "--no-progress"])
    from imagetag.commands import produce

    capsys.readouterr()
    code = produce.run(args, settings)
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _check_messages(messages: list[Any], expected: dict[str, str]) -> None:
    """Our consumer: key = sha256 of the image in the value, headers, Avro, labels."""
    deserialize = AvroDeserializer("ImageEvent")
    fingerprint = AvroSerializer("ImageEvent").fingerprint.hex().encode()
    keys = []
    for msg in messages:
        event = deserialize(msg.value())
        key = msg.key().decode()
        assert key == event["id"] == hashlib.sha256(event["image"]).hexdigest()
        headers = dict(msg.headers())
        assert headers[HEADER_SCHEMA_FINGERPRINT] == fingerprint
        assert headers[HEADER_CONTENT_TYPE].decode() == event["content_type"]
        assert event["label"] == expected[key]
        assert event["source"].startswith("file:///")
        keys.append(key)
    assert sorted(keys) == sorted(expected)


# -- the done-when of issue 3 ----------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_produce_a_folder_of_1000_images(
    settings: Settings, topic: str, thousand: tuple[Path, dict[str, str]], client: str
) -> None:
    root, expected = thousand
    code, summary = _produce_cli(
        settings, str(root), "--label-from", "folder", "--topic", topic, client=client
    )
    assert code == 0
    assert (summary["sent"], summary["refused"], summary["failed"]) == (1000, 0, 0)
    print(f"\n{client}: {summary}")
    _check_messages(_consume(settings, topic, 1000), expected)


def test_kcat_reads_back_keys_equal_to_sha256(
    settings: Settings, topic: str, thousand: tuple[Path, dict[str, str]]
) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (Debian package `kcat`; `make setup` installs it)")
    root, expected = thousand
    code, summary = _produce_cli(settings, str(root), "--topic", topic)
    assert (code, summary["sent"]) == (0, 1000)
    result = subprocess.run(
        [
            kcat,
            "-b",
            settings.kafka.bootstrap_servers,
            "-C",
            "-t",
            topic,
            "-e",
            "-q",
            "-f",
            "%k %S %h\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1000
    keys = [line.split(" ", 1)[0] for line in lines]
    assert sorted(keys) == sorted(expected)
    assert all("schema-fingerprint=" in line and "content-type=image/" in line for line in lines)


def test_same_folder_twice_gives_the_same_keys(
    settings: Settings,
    topic: str,
    thousand: tuple[Path, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, expected = thousand
    first = _produce_in_process(settings, capsys, str(root), "--topic", topic)
    second = _produce_in_process(settings, capsys, str(root), "--topic", topic)
    assert first[0] == second[0] == 0
    assert first[1]["sent"] == second[1]["sent"] == 1000
    keys = Counter(msg.key().decode() for msg in _consume(settings, topic, 2000))
    assert set(keys) == set(expected)
    assert set(keys.values()) == {2}  # every image twice, under one key: idempotent downstream


@pytest.mark.parametrize("client", CLIENTS)
def test_refused_inputs_are_counted_and_the_run_continues(
    settings: Settings, topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], client: str
) -> None:
    expected = _generate(tmp_path / "photos", 10, seed=1)
    bad = tmp_path / "photos" / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.jpg").write_text("text that claims to be a JPEG")
    rng = np.random.default_rng(2)
    ok, big = cv2.imencode(".png", rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    assert ok and len(big) > 50_000
    (bad / "big.png").write_bytes(big.tobytes())
    (bad / "gone.png").symlink_to(tmp_path / "deleted.png")
    limited = settings.derive(limits={"max_bytes": 50_000}, kafka={"client_library": client})

    code, summary = _produce_in_process(
        limited,
        capsys,
        str(tmp_path / "photos"),
        str(tmp_path / "missing.png"),
        "--label-from",
        "folder",
        "--topic",
        topic,
    )
    assert code == 0  # refusals never reached Kafka: not a delivery failure
    assert summary["sent"] == 10
    assert summary["refused_by_reason"] == {
        "empty": 1,
        "not_an_image": 1,
        "too_many_bytes": 1,
        "unreadable": 2,
    }
    assert summary["failed"] == 0
    _check_messages(_consume(settings, topic, 10), expected)


def test_delivery_failures_make_the_exit_code_non_zero(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A topic whose brokers refuse messages over 2 KB: every delivery fails, exit code 1."""
    name = f"t_tiny_{uuid.uuid4().hex[:8]}"
    admin = AdminClient(dict(settings.kafka.client_config()))
    admin.create_topics([NewTopic(name, 1, 1, config={"max.message.bytes": "2048"})])[name].result()
    try:
        _generate(tmp_path, 3, seed=3)  # ~3.3 KB each
        code, summary = _produce_in_process(settings, capsys, str(tmp_path), "--topic", name)
        assert code == 1
        assert (summary["sent"], summary["failed"]) == (0, 3)
        assert summary["failed_by_reason"] == {"MSG_SIZE_TOO_LARGE": 3}
    finally:
        admin.delete_topics([name])[name].result()


# -- the producer API ------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_back_pressure_waits_instead_of_failing(
    settings: Settings, topic: str, client: str
) -> None:
    """A local queue of 5 messages and 300 sends: send() waits for room, nothing is lost."""
    expected = {}
    fallback = settings.derive(kafka={"client_library": client})
    with ImageProducer(
        fallback, topic=topic, client_config={"queue.buffering.max.messages": 5}
    ) as producer:
        for i in range(300):
            pixels = np.zeros((8, 8), np.uint8)
            pixels[0, :2] = divmod(i, 256)  # distinct bytes, distinct keys
            ok, buf = cv2.imencode(".png", pixels)
            assert ok
            expected[producer.send(buf.tobytes(), label="x", metadata={"i": str(i)})] = "x"
    assert (producer.stats.sent, producer.stats.failed, producer.stats.pending) == (300, 0, 0)
    messages = _consume(settings, topic, 300)
    assert sorted(m.key().decode() for m in messages) == sorted(expected)


@pytest.mark.parametrize("client", CLIENTS)
def test_missing_topic_is_a_clear_service_error(settings: Settings, client: str) -> None:
    fallback = settings.derive(kafka={"client_library": client})
    with pytest.raises(ServiceError, match="does not exist"):
        ImageProducer(fallback, topic=f"no_such_topic_{uuid.uuid4().hex[:8]}", check_timeout_s=5)
    # The check must not have created it (a broker may auto-create topics it is asked about).
    admin = AdminClient(dict(settings.kafka.client_config()))
    created = [t for t in admin.list_topics(timeout=10).topics if t.startswith("no_such_topic_")]
    if created:
        for future in admin.delete_topics(created).values():
            future.result()
    assert created == []


def test_large_jpeg_near_the_limit_is_delivered(settings: Settings, topic: str) -> None:
    """An image just under limits.max_bytes fits the topic's max.message.bytes with its envelope."""
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    data = buf.tobytes()
    limited = settings.derive(limits={"max_bytes": len(data)})
    with ImageProducer(limited, topic=topic) as producer:
        image_id = producer.send(data)
    assert producer.stats.sent == 1
    [msg] = _consume(settings, topic, 1)
    assert msg.key().decode() == image_id
    assert AvroDeserializer("ImageEvent")(msg.value())["image"] == data
