"""Exactly-once appends to the review and dead-letter topics.

Solr upserts are idempotent (the id is the content hash); Kafka appends are not. When a
micro-batch (or a backfill round) is re-run after a crash, its review and dead-letter records
must not be appended a second time, and a crash half-way through the writes must not leave half
of them behind to be written again.

So a batch's records go out in **one Kafka transaction** from the driver, together with a
*ledger entry*: an offset commit for the consumer group ``<transactional id>`` on partition 0 of
the review topic, whose metadata is the batch's token. Kafka commits the records and the ledger
entry atomically (the transactional offset commit of KIP-98, as Kafka Streams uses it), so:

* the ledger says the batch is done  <=>  its records are committed;
* a process killed mid-batch leaves an open transaction, which the next producer with the same
  ``transactional.id`` aborts when it starts (``init_transactions`` fences the zombie);
* consumers of ``images.review`` / ``images.dlq`` read with ``isolation.level=read_committed``
  (librdkafka's default; the Java client's must be set) and never see an aborted attempt.

The transactional id is stable per stream checkpoint (its query id) or per backfill state
folder, and the token is the micro-batch id (or the round's split keys): the only batch that
can be replayed is the last one, so "done" means "the ledger's last token is this batch's".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from imagetag.errors import ServiceError
from imagetag.kafka_admin import message_limit
from imagetag.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0


def _coordinator_moves() -> frozenset[int]:
    from confluent_kafka import KafkaError

    return frozenset(
        {
            KafkaError.NOT_COORDINATOR,
            KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
            KafkaError.COORDINATOR_NOT_AVAILABLE,
            KafkaError._TRANSPORT,
            KafkaError._TIMED_OUT,
        }
    )


class TransactionalSink:
    """Writes (topic, key, value) records batch by batch, each batch in one transaction."""

    def __init__(self, settings: Settings, transactional_id: str) -> None:
        self.settings = settings
        self.transactional_id = transactional_id
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        # The ledger offset as last read or committed by us (we are its only writer once our
        # producer fenced any other); None until read, and again after an error.
        self._ledger_offset: int | None = None

    # -- the ledger ------------------------------------------------------------------------
    def _ledger(self) -> tuple[str, int]:
        return self.settings.kafka.topic_review, 0

    def last_token(self) -> tuple[str | None, int]:
        """The token of the last committed batch (None before the first) and the ledger offset.

        Retries while the group coordinator moves or loads (a broker that just started)."""
        from confluent_kafka import KafkaException, TopicPartition

        topic, partition = self._ledger()
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                [committed] = self._open_consumer().committed(
                    [TopicPartition(topic, partition)], timeout=TIMEOUT_S
                )
                break
            except KafkaException as exc:
                if not exc.args[0].retriable() and exc.args[0].code() not in _coordinator_moves():
                    raise self._error("cannot read the sink ledger", exc) from exc
                if time.monotonic() > deadline:
                    raise self._error("cannot read the sink ledger", exc) from exc
                time.sleep(0.5)
        if committed.error or committed.offset < 0:
            self._ledger_offset = 0
            return None, 0
        self._ledger_offset = int(committed.offset)
        return (committed.metadata or None), self._ledger_offset

    def done(self, token: str) -> bool:
        """Were this batch's records committed already (by this process or a killed one)?"""
        self._open_producer()  # aborts a zombie's open transaction before we look
        return self.last_token()[0] == token

    # -- writing ---------------------------------------------------------------------------
    def write(self, token: str, records: Iterable[tuple[str, bytes | None, bytes]]) -> int:
        """Append the records and mark ``token`` done, atomically. Returns the record count.

        On any error the transaction is aborted, the producer discarded (a fenced or failed
        producer cannot be reused) and the error raised: the caller's batch fails and is re-run.
        """
        from confluent_kafka import KafkaException, TopicPartition

        producer = self._open_producer()
        consumer = self._open_consumer()
        topic, partition = self._ledger()
        offset = self._ledger_offset
        if offset is None:
            _, offset = self.last_token()
        count = 0
        try:
            producer.begin_transaction()
            for record_topic, key, value in records:
                while True:
                    try:
                        producer.produce(record_topic, key=key, value=value)
                        break
                    except BufferError:  # local queue full: wait for deliveries (back-pressure)
                        producer.poll(0.1)
                count += 1
                producer.poll(0)
            producer.send_offsets_to_transaction(
                [TopicPartition(topic, partition, offset + 1, metadata=token)],
                consumer.consumer_group_metadata(),
                TIMEOUT_S,
            )
            producer.commit_transaction(TIMEOUT_S)
            self._ledger_offset = offset + 1
        except KafkaException as exc:
            self._discard(abort=True)
            raise self._error("transaction failed", exc) from exc
        except BaseException:
            self._discard(abort=True)
            raise
        return count

    def close(self) -> None:
        self._discard(abort=False)

    def _error(self, what: str, exc: Exception) -> ServiceError:
        return ServiceError(
            "kafka",
            self.settings.kafka.bootstrap_servers,
            f"{what} ({self.transactional_id}): {exc.args[0] if exc.args else exc}",
        )

    # -- clients ---------------------------------------------------------------------------
    def _open_producer(self) -> Producer:
        if self._producer is None:
            from confluent_kafka import KafkaException, Producer

            config = self.settings.kafka.client_config() | {
                "transactional.id": self.transactional_id,
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "zstd",
                "linger.ms": 20,
                "message.max.bytes": message_limit(self.settings),
                "transaction.timeout.ms": 60_000,
            }
            producer = Producer(config)
            started = time.monotonic()
            try:
                producer.init_transactions(TIMEOUT_S)
            except KafkaException as exc:
                raise self._error("cannot start transactions", exc) from exc
            log.debug(
                "transactional producer %s ready in %.1fs",
                self.transactional_id,
                time.monotonic() - started,
            )
            self._producer = producer
        return self._producer

    def _open_consumer(self) -> Consumer:
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer(
                self.settings.kafka.client_config()
                | {
                    "group.id": self.transactional_id,
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                }
            )
        return self._consumer

    def _discard(self, abort: bool) -> None:
        self._ledger_offset = None
        producer, self._producer = self._producer, None
        if producer is not None:
            if abort:
                try:
                    producer.abort_transaction(10)
                except Exception:  # no transaction open, or the producer is fenced / fatal
                    log.debug("abort of %s failed", self.transactional_id, exc_info=True)
            producer.flush(10)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()
