"""Exactly-once appends to the review and dead-letter topics.

Solr upserts are idempotent (the id is the content hash); Kafka appends are not. When a
micro-batch (or a backfill round) is re-run after a crash, its review and dead-letter records
must not be appended a second time, and a crash half-way through the writes must not leave half
of them behind to be written again.

So a batch's records go out in **one Kafka transaction** from the driver, together with a
*ledger record*: key = the sink's transactional id, value = the batch's token, on the
compacted ledger topic (``kafka.topic_ledger``, one partition). Kafka commits the records and
the ledger record atomically, so:

* the ledger's last record for this id names the batch  <=>  its records are committed;
* a process killed mid-batch leaves an open transaction, which the next producer with the same
  ``transactional.id`` aborts when it starts (``init_transactions`` fences the zombie, and
  completes a commit the zombie had already asked for);
* the ledger is read back with ``isolation.level=read_committed`` to its end, after that
  fencing, so what it says is final; consumers of ``images.review`` / ``images.dlq`` read
  with ``read_committed`` too (librdkafka's default; the Java client's must be set) and never
  see an aborted attempt.

The ledger is a record, not a transactional offset commit (``send_offsets_to_transaction``),
on purpose: that call needs the consumer-group coordinator, and librdkafka can wait for it
forever, ignoring its timeout, when the broker restarts (confluentinc/librdkafka #5456,
#5511). A record needs only the transaction coordinator and the partition leader, whose calls
keep their timeouts. Every blocking call is also run under a watchdog: a call that outlives
its timeout abandons the producer (the next one fences it) and raises, so the caller's batch
fails and is re-run instead of hanging.

The transactional id is stable per stream checkpoint (its query id) or per backfill state
folder, and the token is the micro-batch id (or the round's split keys): the only batch that
can be replayed is the last one, so "done" means "the ledger's last token is this batch's".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from imagetag.errors import ServiceError
from imagetag.kafka_admin import ensure_topics, message_limit
from imagetag.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka import Producer

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0
# How long past its own timeout a blocking client call may run before the watchdog gives up.
GRACE_S = 15.0

T = TypeVar("T")


class CallTimeout(Exception):
    """A Kafka client call did not return within its timeout plus the grace period."""


def bounded(call: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run ``call`` (a blocking client call given ``timeout_s``) and return its result, or raise
    :class:`CallTimeout` if it has not returned ``GRACE_S`` after that timeout. The call keeps
    running in its daemon thread: the caller must abandon the client it was made on."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name=f"kafka-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s + GRACE_S)
    if thread.is_alive():
        raise CallTimeout(f"{what} did not return in {timeout_s + GRACE_S:.0f}s")
    if error:
        raise error[0]
    return result[0]


class TransactionalSink:
    """Writes (topic, key, value) records batch by batch, each batch in one transaction."""

    def __init__(self, settings: Settings, transactional_id: str) -> None:
        self.settings = settings
        self.transactional_id = transactional_id
        self._producer: Producer | None = None
        # The ledger's last token for our id, as read after our producer fenced every other
        # (we are then its only writer) and as we committed since; unknown until read.
        self._last: str | None = None
        self._known = False

    # -- the ledger ------------------------------------------------------------------------
    def last_token(self) -> str | None:
        """The token of the last committed batch (None before the first)."""
        self._open_producer()  # fences a zombie first: its transaction is decided before we read
        if not self._known:
            self._last = self._read_ledger()
            self._known = True
        return self._last

    def done(self, token: str) -> bool:
        """Were this batch's records committed already (by this process or a killed one)?"""
        return self.last_token() == token

    def _read_ledger(self) -> str | None:
        """The last committed token for our id: the ledger partition read to its end."""
        from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

        topic = self.settings.kafka.topic_ledger
        me = self.transactional_id.encode()
        consumer = Consumer(
            self.settings.kafka.client_config()
            | {
                "group.id": f"{self.transactional_id}.ledger-reader",  # never joined or committed
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
        try:
            partition = TopicPartition(topic, 0)
            try:
                low, high = consumer.get_watermark_offsets(partition, timeout=TIMEOUT_S)
            except KafkaException as exc:
                raise self._error("cannot read the sink ledger", exc) from exc
            if high <= low:
                return None
            consumer.assign([TopicPartition(topic, 0, low)])
            last: str | None = None
            deadline = time.monotonic() + TIMEOUT_S * 1.5  # another sink's open transaction
            while time.monotonic() < deadline:  # ... holds us back at most its timeout
                for message in consumer.consume(1000, timeout=1.0):
                    error = message.error()
                    if error is None:
                        if message.key() == me:
                            last = (message.value() or b"").decode()
                        if (message.offset() or 0) + 1 >= high:
                            return last
                    elif error.code() == KafkaError._PARTITION_EOF:
                        if (message.offset() or 0) >= high:
                            return last
                    else:
                        raise self._error("cannot read the sink ledger", KafkaException(error))
            raise self._error(
                "cannot read the sink ledger", TimeoutError(f"{topic} not read to offset {high}")
            )
        finally:
            consumer.close()

    # -- writing ---------------------------------------------------------------------------
    def write(self, token: str, records: Iterable[tuple[str, bytes | None, bytes]]) -> int:
        """Append the records and mark ``token`` done, atomically. Returns the record count.

        On any error the transaction is aborted, the producer discarded (a fenced or failed
        producer cannot be reused) and the error raised: the caller's batch fails and is re-run.
        """
        from confluent_kafka import KafkaException

        producer = self._open_producer()
        count = 0
        try:
            producer.begin_transaction()
            for record_topic, key, value in records:
                self._produce(producer, record_topic, key, value)
                count += 1
            self._produce(
                producer,
                self.settings.kafka.topic_ledger,
                self.transactional_id.encode(),
                token.encode(),
            )
            bounded(lambda: producer.commit_transaction(TIMEOUT_S), TIMEOUT_S, "commit")
            self._last, self._known = token, True
        except CallTimeout as exc:
            self._discard(abort=False)  # the producer is stuck: leave it; the next one fences it
            raise self._error("transaction stuck", exc) from exc
        except KafkaException as exc:
            self._discard(abort=True)
            raise self._error("transaction failed", exc) from exc
        except BaseException:
            self._discard(abort=True)
            raise
        return count

    @staticmethod
    def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                producer.poll(0)
                return
            except BufferError:  # local queue full: wait for deliveries (back-pressure)
                producer.poll(0.1)

    def close(self) -> None:
        self._discard(abort=False)

    def _error(self, what: str, exc: BaseException) -> ServiceError:
        return ServiceError(
            "kafka",
            self.settings.kafka.bootstrap_servers,
            f"{what} ({self.transactional_id}): {exc.args[0] if exc.args else exc}",
        )

    # -- the producer ----------------------------------------------------------------------
    def _open_producer(self) -> Producer:
        if self._producer is None:
            from confluent_kafka import KafkaException, Producer

            ensure_topics(
                self.settings, [self.settings.kafka.topic_ledger], configure_existing=False
            )
            config = self.settings.kafka.client_config() | {
                "transactional.id": self.transactional_id,
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "zstd",
                "linger.ms": 20,
                "message.max.bytes": message_limit(self.settings),
                "transaction.timeout.ms": int(TIMEOUT_S * 1000),
            }
            producer = Producer(config)
            started = time.monotonic()
            try:
                bounded(lambda: producer.init_transactions(TIMEOUT_S), TIMEOUT_S, "init")
            except (KafkaException, CallTimeout) as exc:
                raise self._error("cannot start transactions", exc) from exc
            log.debug(
                "transactional producer %s ready in %.1fs",
                self.transactional_id,
                time.monotonic() - started,
            )
            self._producer = producer
            self._known = False  # read the ledger again: a zombie may have committed meanwhile
        return self._producer

    def _discard(self, abort: bool) -> None:
        self._known = False
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            if abort:
                bounded(lambda: producer.abort_transaction(10), 10, "abort")
            bounded(lambda: producer.flush(10), 10, "flush")
        except Exception:  # no transaction open, fenced, fatal or stuck: the next one fences it
            log.debug("closing %s failed", self.transactional_id, exc_info=True)
