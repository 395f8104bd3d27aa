"""The transactional review / dead-letter sink on the real broker: a batch is written once, a
process killed mid-transaction leaves nothing a read_committed reader sees, and the batch it
was writing is written exactly once by its successor."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

from imagetag.kafka_admin import read_topic
from imagetag.settings import Settings
from imagetag.sinks import TransactionalSink


def records(settings: Settings, batch: str, n: int) -> list[tuple[str, bytes | None, bytes]]:
    review, dlq = settings.kafka.topic_review, settings.kafka.topic_dlq
    return [(review if i % 3 else dlq, f"{batch}-{i}".encode(), b"v" * 100) for i in range(n)]


def keys(settings: Settings) -> list[bytes | None]:
    return [
        key
        for topic in (settings.kafka.topic_review, settings.kafka.topic_dlq)
        for key, _ in read_topic(settings, topic)
    ]


def test_a_batch_is_written_once_and_the_ledger_names_the_last(
    isolated_settings: Settings,
) -> None:
    sink = TransactionalSink(isolated_settings, f"test-{uuid.uuid4().hex}")
    try:
        assert not sink.done("0")
        assert sink.write("0", records(isolated_settings, "b0", 30)) == 30
        assert sink.done("0") and not sink.done("1")
        assert sink.write("1", records(isolated_settings, "b1", 5)) == 5
        assert sink.last_token() == "1"
        assert sink.write("2", []) == 0  # an empty batch still moves the ledger
        assert sink.done("2")
    finally:
        sink.close()
    found = keys(isolated_settings)
    assert len(found) == 35 == len(set(found))


def test_a_killed_writer_leaves_nothing_and_its_batch_is_written_once(
    isolated_settings: Settings,
) -> None:
    """A child process writes batch 0, then dies (os._exit) in the middle of batch 1's
    transaction, records already sent to the broker. Its successor fences it, sees batch 1 is
    not done, writes it: every record appears exactly once, none of the dead attempt's."""
    transactional_id = f"test-{uuid.uuid4().hex}"
    child = textwrap.dedent(
        f"""
        import os
        from imagetag.settings import Settings
        from imagetag.sinks import TransactionalSink
        settings = Settings.from_executors({isolated_settings.for_executors()!r})
        sink = TransactionalSink(settings, {transactional_id!r})
        sink.write("0", [(settings.kafka.topic_review, b"b0-%d" % i, b"v") for i in range(10)])
        producer = sink._open_producer()
        producer.begin_transaction()
        for i in range(10):
            producer.produce(settings.kafka.topic_review, key=b"b1-%d" % i, value=b"zombie")
        assert producer.flush(30) == 0  # on the broker, in an open transaction
        os._exit(9)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert result.returncode == 9, result.stderr.decode()[-2000:]

    sink = TransactionalSink(isolated_settings, transactional_id)
    try:
        assert sink.done("0")
        assert not sink.done("1")  # opening the producer aborted the zombie's transaction
        sink.write(
            "1", [(isolated_settings.kafka.topic_review, b"b1-%d" % i, b"v") for i in range(10)]
        )
        assert sink.done("1")
    finally:
        sink.close()
    found = read_topic(isolated_settings, isolated_settings.kafka.topic_review)
    assert sorted(k or b"" for k, _ in found) == sorted(
        [b"b0-%d" % i for i in range(10)] + [b"b1-%d" % i for i in range(10)]
    )
    assert all(value == b"v" for _, value in found)
