"""The secured local stack (``stack.secure``): Solr with BasicAuth and rule-based authorization.

A stack of its own (its own ports and home), since the session's test stack is open. Each
component authenticates as the least-privileged user it needs; everything else is refused
with one line naming the service, the user and the operation.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from imagetag.errors import ServiceError
from imagetag.secure_stack import StackCredentials, kafka_client_options
from imagetag.settings import Settings
from imagetag.solr import SolrWriter, solr_client
from imagetag.testing.services import as_component, secured_stack
from producers import ImageProducer

ROOT = Path(__file__).resolve().parents[2]
IMAGETAG = str(Path(sys.executable).with_name("imagetag"))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with secured_stack(tmp_path_factory.mktemp("secure-stack")) as settings:
        yield settings


def imagetag(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMAGETAG, *args],
        env=settings.child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_each_component_gets_what_its_user_may_and_nothing_else(secured: Settings) -> None:
    admin = as_component(secured, "admin")
    init = imagetag(admin, "init")
    assert init.returncode == 0, init.stdout + init.stderr

    base = secured.solr.url
    alias = secured.solr.collection
    doc = {"id": "a" * 64, "tags": ["Bag"], "top_tag": "Bag", "confidence": 0.9}
    # Anonymous: no update, no query.
    assert requests.post(f"{base}/{alias}/update", json=[doc], timeout=10).status_code == 401
    assert (
        requests.get(f"{base}/{alias}/select", params={"q": "*:*"}, timeout=10).status_code == 401
    )

    # The searcher reads but may not update: one line naming the user and the operation.
    searcher = as_component(secured, "search")
    with pytest.raises(ServiceError, match="user 'searcher' may not update"):
        SolrWriter(searcher).write([doc])

    # The indexer (the stream's user) writes; the searcher then finds it, CLI included.
    indexer = as_component(secured, "stream")
    assert SolrWriter(indexer).write([doc]).accepted == 1
    solr_client(indexer).commit()
    assert solr_client(searcher).search("*:*").hits == 1
    search = imagetag(searcher, "search", "Bag")
    assert search.returncode == 0, search.stdout + search.stderr
    assert "a" * 12 in search.stdout

    # The stream's users may not administer collections or topics; a wrong password is named.
    refused = imagetag(indexer, "init", "--skip-kafka")
    assert refused.returncode == 2
    assert "solr at" in refused.stderr and "user 'indexer' may not" in refused.stderr
    refused = imagetag(indexer, "init", "--skip-solr")
    assert refused.returncode == 2
    assert (
        "kafka at" in refused.stderr and "user 'stream' may not configure topic" in refused.stderr
    )
    wrong = secured.derive(solr={"username": "indexer", "password": "not-it"})
    with pytest.raises(ServiceError, match="user 'indexer' is not authenticated"):
        SolrWriter(wrong).write([doc])


def from_the_start(topic: str, partitions: int) -> list[Any]:
    """Every partition at its first offset: no committed offsets to fetch first."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]


def first_answer(consumer: Any, timeout_s: float = 30.0) -> Any:
    """The first record, or the first refusal, a consumer gets: errors of a group coordinator
    still loading on a fresh broker (NOT_COORDINATOR, ...) are passed over."""
    from confluent_kafka import KafkaError

    refusals = (KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = consumer.poll(1)
        if message is None:
            continue
        error = message.error()
        if error is None or error.code() in refusals:
            return message
    return None


def test_kafka_lets_each_user_do_its_part_only(secured: Settings) -> None:
    from confluent_kafka import Consumer, KafkaError, Producer

    admin = as_component(secured, "admin")
    assert imagetag(admin, "init", "--skip-solr").returncode == 0
    topic = secured.kafka.topic_images

    # No credentials: the broker is not even reachable in plaintext.
    anonymous = Producer({"bootstrap.servers": secured.kafka.bootstrap_servers})
    anonymous.produce(topic, b"x")
    assert anonymous.flush(5) == 1  # still queued: never delivered

    # A wrong password: one line naming the user, at once (no retrying a login).
    wrong = as_component(secured, "produce").derive(
        kafka={"client": {**kafka_client_options("producer", "not-it")}}
    )
    with pytest.raises(ServiceError, match="user 'producer' is not authenticated"):
        ImageProducer(wrong)

    producer_settings = as_component(secured, "produce")
    producer = Producer(producer_settings.kafka.client_config())
    errors: list[KafkaError | None] = []
    producer.produce(topic, b"an image", on_delivery=lambda err, _: errors.append(err))
    assert producer.flush(30) == 0 and errors == [None]

    # The producer may write the input, not read it.
    consumer = Consumer(
        producer_settings.kafka.client_config()
        | {"group.id": "imagetag-acl-test", "auto.offset.reset": "earliest"}
    )
    consumer.assign(from_the_start(topic, secured.kafka.partitions))
    message = first_answer(consumer)
    consumer.close()
    error = message.error() if message is not None else None
    # librdkafka looks its group coordinator up whenever group.id is set: refused at the group
    # (the producer has none) or at the topic, whichever answers first. Either is a refusal.
    denied = (KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    assert error is not None and error.code() in denied

    # The stream reads the input.
    stream = Consumer(
        as_component(secured, "stream").kafka.client_config()
        | {"group.id": "imagetag-acl-test", "auto.offset.reset": "earliest"}
    )
    stream.assign(from_the_start(topic, secured.kafka.partitions))
    record = first_answer(stream)
    stream.close()
    assert record is not None and record.error() is None and record.value() == b"an image"


def test_credentials_reach_no_log(secured: Settings) -> None:
    credentials = StackCredentials.load_or_create(secured.stack.home)
    passwords = [*credentials.solr.values(), *credentials.kafka.values()]
    logs = "".join(p.read_text(errors="replace") for p in (secured.stack.home / "logs").glob("*"))
    assert logs and not any(password in logs for password in passwords)
    printed = imagetag(secured, "stack", "credentials", "search")
    assert printed.returncode == 0
    assert "IMAGETAG_SOLR__USERNAME=searcher" in printed.stdout
