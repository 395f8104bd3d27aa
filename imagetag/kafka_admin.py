"""Kafka topic administration: the three topics with partitions, replication and size limits."""

from __future__ import annotations

import logging

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
    return [k.topic_images, k.topic_dlq, k.topic_review]


def ensure_topics(
    settings: Settings, names: list[str] | None = None, timeout_s: float = 30.0
) -> dict[str, bool]:
    """Create the topics that do not exist; make sure existing ones accept large messages.

    Returns {topic: created?}. Raises ServiceError when the brokers cannot be reached.
    """
    names = names or topic_names(settings)
    admin = admin_client(settings)
    address = settings.kafka.bootstrap_servers
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise ServiceError("kafka", address, f"cannot list topics: {exc}") from exc
    limit = str(message_limit(settings))
    missing = [
        NewTopic(
            name,
            num_partitions=settings.kafka.partitions,
            replication_factor=settings.kafka.replication_factor,
            config={"max.message.bytes": limit},
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
                    raise ServiceError("kafka", address, f"cannot create {name}: {exc}") from exc
    present = [name for name in names if not created[name]]
    if present:
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
                    "kafka", address, f"cannot configure {resource.name}: {exc}"
                ) from exc
    return created


def delete_topics(settings: Settings, names: list[str], timeout_s: float = 30.0) -> None:
    """Delete topics (tests use it to clean up after themselves); missing ones are ignored."""
    admin = admin_client(settings)
    for name, future in admin.delete_topics(names, request_timeout=timeout_s).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                log.warning("could not delete topic %s: %s", name, exc)
