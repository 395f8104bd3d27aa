"""Nothing stops the stream: odd and hostile input, a poisoned batch, a Kafka restart.

Every test runs `imagetag stream` (or `imagetag backfill`) as a real process on the real stack
and accounts for every record it sent: each ends in exactly one of Solr, the review topic and
the dead-letter topic, and the stream never restarts a query for anything a record holds.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from imagetag.avro import AvroDeserializer, AvroSerializer
from imagetag.pipeline import POISON_ENV
from imagetag.settings import Settings
from imagetag.stack import KafkaService
from imagetag.testing.corpus import ALIVE, DEAD, mixed_corpus
from imagetag.testing.samples import fashion_images
from imagetag.testing.services import solr_docs, topic_records
from producers import ImageProducer
from tests.e2e.conftest import (
    StreamProcess,
    accounted,
    assert_exact,
    raw_send,
    run_imagetag,
    sha256,
    wait_until,
)

RESTART = "restarting from the checkpoint"


def event(data: bytes, source: str, produced_at: int | None = None) -> bytes:
    """An ImageEvent as a producer that skips validation would send it."""
    return AvroSerializer("ImageEvent")(
        {
            "id": sha256(data),
            "image": data,
            "content_type": "application/octet-stream",
            "source": source,
            "produced_at": int(time.time() * 1000) if produced_at is None else produced_at,
        }
    )


def garbage(count: int, seed: int = 5) -> list[tuple[bytes | None, bytes]]:
    """Records that are not ImageEvents, or lie: random bytes, an unknown schema fingerprint,
    a cut-off event, a wrong id, a producer time no timestamp column holds, no key at all."""
    rng = random.Random(seed)
    good = event(b"\x89PNG\r\n\x1a\n" + bytes(64), "test://garbage")
    makers: list[Callable[[int], bytes]] = [
        lambda i: rng.randbytes(rng.randint(1, 300)),
        lambda i: b"\xc3\x01" + rng.randbytes(8) + rng.randbytes(40),
        lambda i: good[: rng.randint(10, len(good) - 1)],
        lambda i: AvroSerializer("ImageEvent")(
            {
                "id": "0" * 64,
                "image": f"lie {i}".encode(),
                "content_type": "image/png",
                "source": "test://lie",
                "produced_at": 0,
            }
        ),
        lambda i: event(f"far future {i}".encode(), "test://future", produced_at=2**62),
    ]
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(count):
        key = None if i % 7 == 0 else f"garbage-{i}".encode()
        out.append((key, makers[i % len(makers)](i)))
    return out


def outcomes(settings: Settings) -> Counter[str]:
    """Where each key went: one count per Solr document, review record and dead letter."""
    places: Counter[str] = Counter()
    for doc in solr_docs(settings, fl="id"):
        places[doc["id"]] += 1
    for key, _ in topic_records(settings, settings.kafka.topic_review):
        places[(key or b"").decode()] += 1
    letter = AvroDeserializer("DeadLetter")
    for _, value in topic_records(settings, settings.kafka.topic_dlq):
        dead = letter(value)
        key = dead["key"]
        where = f"@{dead['partition']}:{dead['offset']}"
        places[key.decode(errors="replace") if key else where] += 1
    return places


def dead_letters(settings: Settings) -> dict[bytes, dict]:
    """Dead letters by their original Kafka key."""
    letter = AvroDeserializer("DeadLetter")
    return {
        (d["key"] or b""): d
        for d in (letter(v) for _, v in topic_records(settings, settings.kafka.topic_dlq))
    }


def total_outcomes(settings: Settings) -> int:
    return sum(outcomes(settings).values())


def test_a_mixed_corpus_of_1000_records_never_stops_the_stream(
    stream_settings: Settings, stream_factory: Callable[..., StreamProcess]
) -> None:
    items = mixed_corpus(950)
    images = [(sha256(data).encode(), event(data, f"test://{name}")) for name, data, _ in items]
    bad = garbage(60)
    stream = stream_factory(stream_settings).start()
    raw_send(stream_settings, images + bad)
    sent = len(images) + len(bad)
    wait_until(lambda: total_outcomes(stream_settings) >= sent, 900, "every record's outcome")
    time.sleep(3)  # anything counted twice would show up now

    places = outcomes(stream_settings)
    assert sum(places.values()) == sent
    assert all(n == 1 for n in places.values()), "a record ended in two places"
    letters = dead_letters(stream_settings)
    sent_values = dict(images)
    for name, data, expected in items:
        key = sha256(data).encode()
        assert places[key.decode()] == 1, name
        assert (key in letters) == (expected == DEAD), (name, letters.get(key))
        if expected == DEAD:
            assert letters[key]["value"] == sent_values[key]  # the original record
    assert RESTART not in stream.log(), "a query restarted"
    assert "Traceback" not in stream.log()
    reasons = Counter(d["reason"] for d in letters.values())
    review = len(topic_records(stream_settings, stream_settings.kafka.topic_review))
    dead = len(topic_records(stream_settings, stream_settings.kafka.topic_dlq))
    print(
        f"{len(items)} images + {len(bad)} garbage: {sent - dead - review} in Solr,"
        f" {review} in review, {dead} dead ({dict(reasons)} among those with a key)"
    )
    assert stream.stop() == 0


def test_backfill_of_the_same_corpus_exits_0_with_the_same_accounting(
    stream_settings: Settings, tmp_path: Path
) -> None:
    settings = stream_settings
    items = mixed_corpus(950)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, data, _ in items:
        (folder / name).write_bytes(data)
    result = run_imagetag(settings, "backfill", str(folder), "--json", timeout_s=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        "backfill of the corpus folder:",
        {k: summary[k] for k in ("images", "tagged", "review", "dead", "quarantined", "seconds")},
    )
    assert summary["images"] == len(items)
    assert summary["tagged"] + summary["review"] + summary["dead"] == len(items)
    assert summary["quarantined"] == 0

    places = outcomes(settings)
    assert sum(places.values()) == len(items)
    letters = dead_letters(settings)
    for name, data, expected in items:
        key = sha256(data)
        assert places[key] == 1, name
        assert (key.encode() in letters) == (expected == DEAD), name
    assert summary["dead"] == sum(1 for _, _, expected in items if expected == DEAD)
    assert sum(1 for _, _, e in items if e == ALIVE) == summary["tagged"] + summary["review"]


def test_a_poisoned_record_is_quarantined_and_the_stream_goes_on(
    stream_settings: Settings, stream_factory: Callable[..., StreamProcess]
) -> None:
    marker = "poison-in-an-e2e-test"
    stream = stream_factory(stream_settings, env={POISON_ENV: marker}).start()
    images = fashion_images(150, start=4000)
    with ImageProducer(stream_settings) as producer:
        ids = {producer.send(data, label=label, source="test://fashion") for data, label in images}
        poison_png, _ = fashion_images(1, start=4500)[0]
        poison = producer.send(poison_png, metadata={"note": marker}, source="test://poison")
    assert producer.stats.failed == 0
    wait_until(lambda: total_outcomes(stream_settings) >= len(ids) + 1, 600, "every outcome")
    time.sleep(3)

    places = outcomes(stream_settings)
    assert sum(places.values()) == len(ids) + 1 and all(n == 1 for n in places.values())
    letters = dead_letters(stream_settings)
    assert set(letters) == {poison.encode()}
    letter = letters[poison.encode()]
    assert (letter["stage"], letter["reason"]) == ("tag", "poison")
    assert AvroDeserializer("ImageEvent")(letter["value"])["image"] == poison_png
    assert "quarantined 1 poison record(s)" in stream.log()
    assert RESTART not in stream.log(), "a query restarted"
    assert stream.stop() == 0


def test_a_kafka_restart_with_records_arriving_is_survived(
    stream_settings: Settings,
    stream_factory: Callable[..., StreamProcess],
    settings: Settings,
) -> None:
    """A producer opened before the outage keeps sending while the broker is down: its client
    buffers, and the records arrive the moment the broker is back, while it is still loading
    its coordinators. The stream resumes by itself and accounts for every image once."""
    stream = stream_factory(stream_settings).start()
    producer = ImageProducer(stream_settings)
    first = {
        producer.send(data, label=label, source="test://before")
        for data, label in fashion_images(200, start=5000)
    }
    producer.flush()
    wait_until(accounted(stream_settings, len(first), 0), 300, "the images sent before")
    kafka = KafkaService(settings, settings.stack.home.resolve())
    kafka.stop()
    stopped = time.monotonic()
    try:
        second = {
            producer.send(data, label=label, source="test://during")
            for data, label in fashion_images(300, start=5200)
        }
        time.sleep(30)
        assert stream.process is not None and stream.process.poll() is None, "stream died"
    finally:
        pid = kafka.start()
        kafka.wait_ready(pid, time.monotonic() + 120)
    stats = producer.close()
    assert stats.failed == 0
    wait_until(accounted(stream_settings, len(first | second), 0), 600, "the images sent during")
    recovered = time.monotonic() - stopped
    time.sleep(3)
    assert_exact(stream_settings, first | second, dead=0)
    print(f"kafka down 30s; every image accounted for {recovered:.0f}s after the stop")
    assert stream.process is not None and stream.process.poll() is None
    assert stream.stop() == 0
