"""Kafka topic administration: the three topics with partitions, replication and size limits."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from imagetag.errors import ServiceError
from imagetag.settings import Settings

log = logging.getLogger(__name__)


def message_limit(settings: Settings) -> int:
    """``max.message.bytes`` for our topics: the image limit plus room for the Avro envelope
    and metadata (a dead letter carries the original key and value plus its reason)."""
    return settings.limits.max_bytes + 1024 * 1024


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({**settings.kafka.client_config(), "log_level": 3})


def topic_names(settings: Settings) -> list[str]:
    k = settings.kafka
    return [k.topic_images, k.topic_dlq, k.topic_review, k.topic_ledger]


def topic_layout(settings: Settings, name: str) -> tuple[int, dict[str, str]]:
    """(partitions, config) a topic is created with. The sink ledger (``imagetag.sinks``) has
    one partition and is compacted: only the last record of each sink is needed, and it is read
    from the start, so compaction keeps that read short."""
    config = {"max.message.bytes": str(message_limit(settings))}
    if name == settings.kafka.topic_ledger:
        config |= {
            "cleanup.policy": "compact",
            "segment.ms": str(10 * 60 * 1000),
            "min.cleanable.dirty.ratio": "0.1",
        }
        return 1, config
    return settings.kafka.partitions, config


def ensure_topics(
    settings: Settings,
    names: list[str] | None = None,
    timeout_s: float = 30.0,
    configure_existing: bool = True,
) -> dict[str, bool]:
    """Create the topics that do not exist; make sure existing ones accept large messages
    (unless ``configure_existing`` is False: a job that only needs a topic to exist asks no
    more than to see it, so its Kafka user needs no right to alter topic configs).

    Returns {topic: created?}. Raises ServiceError when the brokers cannot be reached.
    """
    names = names or topic_names(settings)
    admin = admin_client(settings)
    address = settings.kafka.bootstrap_servers
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise ServiceError("kafka", address, failure_line(settings, "list topics", exc)) from exc
    limit = str(message_limit(settings))
    missing = [
        NewTopic(
            name,
            num_partitions=topic_layout(settings, name)[0],
            replication_factor=settings.kafka.replication_factor,
            config=topic_layout(settings, name)[1],
        )
        for name in names
        if name not in existing
    ]
    created = {name: False for name in names}
    if missing:
        for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
            try:
                future.result()
                created[name] = True
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise ServiceError(
                        "kafka", address, failure_line(settings, f"create topic {name}", exc)
                    ) from exc
    present = [name for name in names if not created[name]]
    if present and configure_existing:
        resources = [
            ConfigResource(
                ConfigResource.Type.TOPIC,
                name,
                incremental_configs=[
                    ConfigEntry(
                        "max.message.bytes",
                        limit,
                        incremental_operation=AlterConfigOpType.SET,
                    )
                ],
            )
            for name in present
        ]
        for resource, future in admin.incremental_alter_configs(resources).items():
            try:
                future.result()
            except KafkaException as exc:
                raise ServiceError(
                    "kafka",
                    address,
                    failure_line(settings, f"configure topic {resource.name}", exc),
                ) from exc
    return created


def failure_line(settings: Settings, operation: str, exc: Exception) -> str:
    """One line for a failed Kafka operation (a librdkafka ``KafkaException``): a refused login
    or a missing permission names the user and the operation, anything else says what failed."""
    error = exc.args[0] if exc.args else None
    name = str(error.name()) if error is not None and hasattr(error, "name") else ""
    user = settings.kafka.client_config().get("sasl.username", "anonymous")
    if name in ("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED"):
        return f"user {user!r} is not authenticated to {operation} (SASL: wrong or no password)"
    if "AUTHORIZATION_FAILED" in name:
        return f"user {user!r} may not {operation} ({name})"
    return f"cannot {operation}: {exc}"


def delete_topics(settings: Settings, names: list[str], timeout_s: float = 30.0) -> None:
    """Delete topics (tests use it to clean up after themselves); missing ones are ignored."""
    admin = admin_client(settings)
    for name, future in admin.delete_topics(names, request_timeout=timeout_s).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                log.warning("could not delete topic %s: %s", name, exc)


def read_topic(
    settings: Settings, topic: str, timeout_s: float = 60.0
) -> list[tuple[bytes | None, bytes]]:
    """Every committed (key, value) record of ``topic``, from the beginning to its current end.

    Reads with ``isolation.level=read_committed`` and stops at each partition's end-of-partition
    event, not at the high watermark: the review and dead-letter topics are written in
    transactions (``imagetag.sinks``), whose commit markers take offsets no record has, and
    whose aborted attempts must not be counted. Raises ServiceError if the end is not reached
    within ``timeout_s`` (an open transaction holds read_committed readers back).
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        settings.kafka.client_config()
        | {
            "group.id": f"imagetag-reader-{time.time_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise ServiceError("kafka", settings.kafka.bootstrap_servers, f"no topic {topic}")
        partitions = set(found.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records: list[tuple[bytes | None, bytes]] = []
        ended: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while ended != partitions:
            if time.monotonic() > deadline:
                raise ServiceError(
                    "kafka",
                    settings.kafka.bootstrap_servers,
                    f"{topic} not read to its end in {timeout_s:.0f}s "
                    f"(partitions {sorted(partitions - ended)})",
                )
            for message in consumer.consume(1000, timeout=1.0):
                error = message.error()
                if error is None:
                    records.append((message.key(), message.value() or b""))
                elif error.code() == KafkaError._PARTITION_EOF:
                    ended.add(int(message.partition() or 0))
        return records
    finally:
        consumer.close()


def count_records(settings: Settings, topic: str) -> int:
    """Committed records in ``topic`` (not the watermark difference, which counts markers)."""
    return len(read_topic(settings, topic))


class GroupOffsets:
    """Commits a consumer group's offsets from outside a consumer (the admin API), so that
    Kafka's lag tools (``kafka-consumer-groups.sh``, Burrow) see a job that keeps its offsets
    elsewhere: the stream commits each finished micro-batch's end offsets here. One admin
    client for the job's life."""

    def __init__(self, settings: Settings, group: str) -> None:
        self.settings = settings
        self.group = group
        self.admin = admin_client(settings)

    def commit(self, topic: str, offsets: dict[int, int], timeout_s: float = 10.0) -> None:
        """Set the group's committed offset of each partition of ``topic`` (the next offset to
        read, as a consumer commits it). Raises KafkaException when Kafka refuses."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        if not offsets:
            return
        request = ConsumerGroupTopicPartitions(
            self.group, [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())]
        )
        (future,) = self.admin.alter_consumer_group_offsets(
            [request], request_timeout=timeout_s
        ).values()
        for part in future.result().topic_partitions:
            if part.error is not None:
                raise KafkaException(part.error)


def group_lag(
    settings: Settings, group: str, topic: str, timeout_s: float = 10.0
) -> dict[int, tuple[int | None, int]]:
    """{partition: (the group's committed offset or None, the partition's end offset)} of
    ``topic``: what ``kafka-consumer-groups.sh --describe`` shows. Raises KafkaException when
    Kafka refuses, ServiceError when the topic does not exist."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = admin_client(settings)
    found = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if found is None or found.error is not None:
        raise ServiceError("kafka", settings.kafka.bootstrap_servers, f"no topic {topic}")
    parts = [TopicPartition(topic, p) for p in sorted(found.partitions)]
    ends = {
        tp.partition: int(future.result().offset)
        for tp, future in admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in parts}, request_timeout=timeout_s
        ).items()
    }
    (future,) = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, parts)], request_timeout=timeout_s
    ).values()
    committed = {
        tp.partition: (int(tp.offset) if tp.offset >= 0 else None)
        for tp in future.result().topic_partitions
    }
    return {p: (committed.get(p), end) for p, end in sorted(ends.items())}
