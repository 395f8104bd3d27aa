"""The plain consumer loop a user would write instead of the Spark stream: the bench's baseline.

One process, one loop, the stream's own pieces around a confluent-kafka consumer::

    consume(max_batch) -> Kafka-shaped frame -> tag_kafka_rows (same model, same code as the
    stream's executors) -> SolrWriter.write (same writer) -> review and dead letters through a
    plain idempotent producer, flushed -> consumer.commit(asynchronous=False)

**At-least-once.** The batch's offsets are committed only after Solr accepted its documents
and the producer's flush confirmed every review and dead-letter record; a crash in between
re-reads the batch on restart. Solr upserts are idempotent (the id is the content hash), but
review and dead-letter records may then be appended twice: there is no transaction here (the
stream's ``TransactionalSink`` is what prevents that), no de-duplication by image id (the stream
drops repeats within ``spark.dedupe_window``), no archive, no model hot swap (the model is the
store's CURRENT at start) and no quarantine of a batch that fails outside the per-record
isolation: a Kafka or Solr fault that outlasts the clients' retries ends the process with the
batch uncommitted. That is the price of being this short; the bench measures what it buys.

Tagging runs on one core: OpenCV single-threaded (``cv2.setNumThreads(1)``); start it with
``OMP_NUM_THREADS=1`` (``bench_stream.py`` does) so numpy's BLAS is single-threaded too, as in
the stream's Spark executors. That is what "images/s per core" compares.

Settings come from the environment (``IMAGETAG_*``) and ``imagetag.yaml``, as the ``imagetag``
CLI loads them (``Settings.load()``). SIGTERM or SIGINT stops it after the current batch (a
second signal at once). Each batch is one log line and, with ``--stats FILE``, one JSON line
(:class:`BatchStats`) appended to FILE::

    python -m bench.peer --group GROUP [--stats FILE] [--max-batch 500] [--poll-seconds 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import pandas as pd

from imagetag.contracts import KAFKA_COLUMNS
from imagetag.errors import ServiceError
from imagetag.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer

    from imagetag.solr import SolrWriter

log = logging.getLogger("bench.peer")

READY_LINE = "consuming "  # the log line bench_stream waits for
# librdkafka's default fetch.max.bytes (50 MB): a fetch is never smaller than that.
_FETCH_MAX_BYTES = 50 * 1024 * 1024


class KafkaMessage(Protocol):
    """What the frame needs of a ``confluent_kafka.Message``."""

    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def timestamp(self) -> tuple[int, int]: ...


def kafka_frame(messages: Sequence[KafkaMessage]) -> pd.DataFrame:
    """Consumed messages -> the Kafka-shaped frame ``tag_kafka_rows`` takes (the columns and
    types of Spark's Kafka source, ``contracts.KAFKA_SCHEMA``): key and value bytes (None
    stays None), topic, partition (int32), offset (int64) and timestamp as a UTC datetime
    (NaT when the broker gave none: ``TIMESTAMP_NOT_AVAILABLE``, type 0)."""
    stamps = [m.timestamp() for m in messages]
    return pd.DataFrame(
        {
            "key": pd.Series([m.key() for m in messages], dtype=object),
            "value": pd.Series([m.value() for m in messages], dtype=object),
            "topic": pd.Series([m.topic() for m in messages], dtype=object),
            "partition": pd.Series([m.partition() for m in messages], dtype="int32"),
            "offset": pd.Series([m.offset() for m in messages], dtype="int64"),
            "timestamp": pd.to_datetime(
                [ms if kind != 0 else None for kind, ms in stamps], unit="ms", utc=True
            ),
        },
        columns=list(KAFKA_COLUMNS),
    )


def consumer_config(settings: Settings, group: str) -> dict[str, Any]:
    """The consumer's configuration: the settings' client options, ``group``, manual commits,
    from the earliest offset of a new group, and fetches that take the largest image
    (``limits.max_bytes`` plus the envelope, as the topics' ``max.message.bytes``).
    ``isolation.level`` stays librdkafka's default (``read_committed``)."""
    from imagetag.kafka_admin import message_limit

    limit = message_limit(settings)
    fetch = max(limit, _FETCH_MAX_BYTES)
    return settings.kafka.client_config() | {
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "max.partition.fetch.bytes": limit,
        "fetch.max.bytes": fetch,
        "receive.message.max.bytes": fetch + 1024 * 1024,
    }


def producer_config(settings: Settings) -> dict[str, Any]:
    """A plain idempotent producer (no transactions) that takes the largest dead letter."""
    from imagetag.kafka_admin import message_limit

    return settings.kafka.client_config() | {
        "enable.idempotence": True,
        "message.max.bytes": message_limit(settings),
    }


@dataclass(frozen=True)
class BatchStats:
    """One batch of the peer, one JSON line of ``--stats``. Seconds: ``consume`` waiting in
    ``consume()`` (fetching, or idle up to ``--poll-seconds``), then from its return to the
    commit: ``batch`` in all, of which ``tag`` (``tag_kafka_rows``), ``solr`` (the documents
    parsed and written) and ``kafka`` (produce, flush and the offset commit)."""

    at: float  # time.time() at the end of the batch
    rows: int
    tagged: int
    review: int
    dead: int
    consume_s: float
    tag_s: float
    solr_s: float
    kafka_s: float
    batch_s: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class Peer:
    """The loop's state: one consumer, one producer, one Solr writer and the model, for the
    process's life (nothing of that per batch)."""

    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        producer: Producer,
        writer: SolrWriter,
        model: Any,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.writer = writer
        self.model = model
        self._failed: list[str] = []

    def process(self, messages: Sequence[Any], consume_s: float) -> BatchStats:
        """Tag one consumed batch, write it, commit it. Raises ServiceError when a review or
        dead-letter record is not delivered (then nothing is committed); KafkaException when
        the commit fails; SolrWriter waits out an unavailable Solr."""
        from imagetag.records import dead_letter_for_refused_doc, tag_kafka_rows

        started = time.perf_counter()
        out = tag_kafka_rows(kafka_frame(messages), self.model, self.settings)
        tagged_at = time.perf_counter()
        kinds = out["kind"]
        docs = [json.loads(doc) for doc in out.loc[kinds == "tagged", "doc"]]
        result = self.writer.write(docs)
        solr_at = time.perf_counter()
        topics = {"review": self.settings.kafka.topic_review, "dead": self.settings.kafka.topic_dlq}
        appended = out[kinds != "tagged"]
        for kind, key, value in zip(
            appended["kind"], appended["key"], appended["value"], strict=True
        ):
            self._produce(topics[kind], key, value)
        for doc, reason in result.rejected:
            key, value = dead_letter_for_refused_doc(
                str(doc["id"]), json.dumps(doc), reason, self.settings
            )
            self._produce(self.settings.kafka.topic_dlq, key, value)
        self._flush()
        self.consumer.commit(asynchronous=False)
        done = time.perf_counter()
        counts = kinds.value_counts()
        refused = len(result.rejected)
        return BatchStats(
            at=time.time(),
            rows=len(messages),
            tagged=int(counts.get("tagged", 0)) - refused,
            review=int(counts.get("review", 0)),
            dead=int(counts.get("dead", 0)) + refused,
            consume_s=consume_s,
            tag_s=tagged_at - started,
            solr_s=solr_at - tagged_at,
            kafka_s=done - solr_at,
            batch_s=done - started,
        )

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        def report(error: Any, _message: Any) -> None:
            if error is not None:
                self._failed.append(str(error))

        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=report)
                self.producer.poll(0)
                return
            except BufferError:  # local queue full: let deliveries drain (back-pressure)
                self.producer.poll(0.1)

    def _flush(self) -> None:
        left = self.producer.flush(60)
        failed, self._failed = self._failed, []
        if left or failed:
            reason = f"{left} record(s) not delivered in 60s" if left else failed[0]
            raise ServiceError("kafka", self.settings.kafka.bootstrap_servers, reason)

    def run(
        self, stop: threading.Event, max_batch: int, poll_s: float, stats: IO[str] | None
    ) -> int:
        """Consume, process and commit batches until ``stop`` is set; returns the batch count.
        A consumer error is logged and skipped unless it is fatal (then KafkaException)."""
        from confluent_kafka import KafkaException

        batches = 0
        while not stop.is_set():
            started = time.perf_counter()
            consumed = self.consumer.consume(num_messages=max_batch, timeout=poll_s)
            consume_s = time.perf_counter() - started
            messages = []
            for message in consumed:
                error = message.error()
                if error is None:
                    messages.append(message)
                elif error.fatal():
                    raise KafkaException(error)
                else:
                    log.warning("consumer: %s", error)
            if not messages:
                continue
            batch = self.process(messages, consume_s)
            batches += 1
            log.info(
                "batch %d: input=%d tagged=%d review=%d dead=%d duration=%.0fms "
                "(tag %.0fms solr %.0fms kafka %.0fms) consume=%.0fms",
                batches,
                batch.rows,
                batch.tagged,
                batch.review,
                batch.dead,
                batch.batch_s * 1000,
                batch.tag_s * 1000,
                batch.solr_s * 1000,
                batch.kafka_s * 1000,
                batch.consume_s * 1000,
            )
            if stats is not None:
                stats.write(batch.to_json() + "\n")
                stats.flush()
        return batches


def stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set (the loop ends after its batch); a second one kills."""
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    return stop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument("--stats", type=Path, help="append one JSON line per batch to this file")
    parser.add_argument("--max-batch", type=int, default=500, help="messages per consume()")
    parser.add_argument(
        "--poll-seconds", type=float, default=1.0, help="consume() timeout (its wait when idle)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    import cv2
    from confluent_kafka import Consumer, Producer

    from imagetag.bundle import load_current
    from imagetag.solr import SolrWriter

    cv2.setNumThreads(1)
    settings = Settings.load()
    stop = stop_on_signals()
    model = load_current(settings.model_store)
    consumer = Consumer(consumer_config(settings, args.group))
    producer = Producer(producer_config(settings))
    peer = Peer(settings, consumer, producer, SolrWriter(settings), model)
    consumer.subscribe([settings.kafka.topic_images])
    log.info(
        "%s%s as group %s (model %s) -> solr %s/%s, review %s, dlq %s",
        READY_LINE,
        settings.kafka.topic_images,
        args.group,
        getattr(model, "version", "?"),
        settings.solr.url,
        settings.solr.collection,
        settings.kafka.topic_review,
        settings.kafka.topic_dlq,
    )
    stats = open(args.stats, "a") if args.stats else None  # noqa: SIM115 (closed below)
    try:
        batches = peer.run(stop, args.max_batch, args.poll_seconds, stats)
    finally:
        consumer.close()
        producer.flush(30)
        if stats is not None:
            stats.close()
    log.info("peer stopped after %d batches", batches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
