from __future__ import annotations

import pytest

from imagetag import stack
from imagetag.errors import ServiceError
from imagetag.settings import Settings


def test_missing_java_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", "/nonexistent")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServiceError, match="Java not found"):
        stack.LocalStack(Settings.model_validate({})).up()


def test_refuses_to_start_a_non_loopback_address(tmp_path) -> None:
    settings = Settings.model_validate(
        {"kafka": {"bootstrap_servers": "kafka.prod.example:9092"}, "stack": {"home": tmp_path}}
    )
    with pytest.raises(ServiceError, match="only runs on loopback"):
        stack.KafkaService(settings, tmp_path).start()


@pytest.mark.parametrize(("heap", "initial"), [("1g", "512m"), ("512m", "256m"), ("64m", "64m")])
def test_initial_heap_is_half_the_maximum(heap: str, initial: str) -> None:
    assert stack.min_heap(heap) == initial


def test_a_kafka_cluster_id_never_starts_like_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """The id Kafka's storage tool reads after ``--cluster-id``: a UUID whose base64url starts
    with "-" (first byte 0xf8..0xfb) is drawn again, as Kafka's ``Uuid.randomUuid`` does."""
    import uuid

    dash = uuid.UUID(bytes=b"\xf8" + b"\x01" * 15)
    draws = iter([dash, uuid.UUID(bytes=b"\x10" * 16)])
    monkeypatch.setattr(stack.uuid, "uuid4", lambda: next(draws))
    assert stack.kafka_cluster_id() == "EBAQEBAQEBAQEBAQEBAQEA"  # the second draw
    monkeypatch.undo()
    ids = [stack.kafka_cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
