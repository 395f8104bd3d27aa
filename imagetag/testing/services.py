"""Kafka and Solr helpers for the tests and the benches that run on a real stack.

- :func:`isolated_settings`: settings with their own topics and their own Solr collection
  behind their own alias, created as ``imagetag init`` creates them and removed afterwards;
- :func:`solr_docs`, :func:`solr_ids`, :func:`solr_count`: what a collection holds;
- :func:`topic_records`, :func:`topic_values`, :func:`review_ids`: what a topic holds;
- :func:`secured_stack`, :func:`as_component`: a secured stack and its components' settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from imagetag.avro import AvroDeserializer
from imagetag.kafka_admin import delete_topics, ensure_topics, read_topic, topic_names
from imagetag.settings import KafkaSettings, Settings
from imagetag.solr_admin import SolrAdmin

_TOPIC_FIELDS = [name for name in KafkaSettings.model_fields if name.startswith("topic_")]


@contextmanager
def isolated_settings(settings: Settings, base: str, **changes: Any) -> Iterator[Settings]:
    """``settings`` with every topic renamed ``<base>.<what>`` (``<base>.images``,
    ``<base>.dlq``, ...) and the Solr alias ``base``, plus ``changes`` (as
    :meth:`Settings.derive` takes them), whose topics (all of ``topic_names``) and collection
    exist while the block runs: created as ``imagetag init`` creates them (partitions,
    ``max.message.bytes``, the configset, ``<base>_1`` behind the alias ``base``), then deleted,
    with every collection the alias points at by then. Raises ServiceError (or a requests
    error) when Kafka or Solr refuses; ValueError if a topic would not be renamed (deleting it
    afterwards would delete the shared one)."""
    derived = settings.derive(
        kafka={
            **{name: f"{base}.{name.removeprefix('topic_')}" for name in _TOPIC_FIELDS},
            "stream_group": f"{base}.stream",
        },
        solr={"collection": base},
        **changes,
    )
    topics = topic_names(derived)
    shared = set(topics) & set(topic_names(settings))
    if shared:
        raise ValueError(f"topics not isolated: {sorted(shared)}")
    ensure_topics(derived, topics)
    admin = SolrAdmin(derived)
    admin.ensure_collection()
    try:
        yield derived
    finally:
        delete_topics(derived, topics)
        collections = admin.aliases().get(base, "")
        admin.delete_alias(base)
        for collection in filter(None, collections.split(",")):
            admin.delete_collection(collection)


def _collection_url(settings: Settings, collection: str | None) -> str:
    return f"{settings.solr.url}/{collection or settings.solr.collection}"


def _auth(settings: Settings) -> tuple[str, str] | None:
    """Basic auth of the settings' Solr user, when they name one."""
    solr = settings.solr
    return (
        (solr.username, solr.password.get_secret_value())
        if solr.username and solr.password
        else None
    )


def solr_docs(
    settings: Settings, fl: str = "id,model_version", collection: str | None = None
) -> list[dict[str, Any]]:
    """Every document of ``collection`` (default: the settings' alias) with the fields ``fl``,
    after a hard commit, paged with cursorMark in id order. Raises requests.HTTPError when
    the commit is refused."""
    url = _collection_url(settings, collection)
    auth = _auth(settings)
    requests.get(
        f"{url}/update", params={"commit": "true"}, auth=auth, timeout=60
    ).raise_for_status()
    docs: list[dict[str, Any]] = []
    cursor = "*"
    while True:
        body = requests.get(
            f"{url}/select",
            params={
                "q": "*:*",
                "fl": fl,
                "rows": "1000",
                "sort": "id asc",
                "cursorMark": cursor,
                "facet": "false",
                "wt": "json",
            },
            auth=auth,
            timeout=60,
        ).json()
        docs.extend(body["response"]["docs"])
        if body["nextCursorMark"] == cursor:
            return docs
        cursor = body["nextCursorMark"]


def solr_ids(settings: Settings, collection: str | None = None) -> list[str]:
    """The ids of :func:`solr_docs`."""
    return [d["id"] for d in solr_docs(settings, fl="id", collection=collection)]


def solr_count(settings: Settings, collection: str | None = None) -> int:
    """How many documents ``collection`` (default: the settings' alias) holds, as searchers
    see it now (no commit). Raises requests.RequestException when Solr does not answer 200."""
    response = requests.get(
        f"{_collection_url(settings, collection)}/select",
        params={"q": "*:*", "rows": "0", "facet": "false", "wt": "json"},
        auth=_auth(settings),
        timeout=30,
    )
    response.raise_for_status()
    return int(response.json()["response"]["numFound"])


def topic_records(
    settings: Settings, topic: str, timeout_s: float = 60.0
) -> list[tuple[bytes | None, bytes]]:
    """All committed (key, value) records of ``topic``, from the beginning to its current end
    (``read_committed``; see :func:`imagetag.kafka_admin.read_topic`, which raises
    ServiceError after ``timeout_s``)."""
    return read_topic(settings, topic, timeout_s=timeout_s)


def topic_values(settings: Settings, topic: str, timeout_s: float = 120.0) -> list[bytes]:
    """The values of :func:`topic_records` (waiting up to ``timeout_s`` for the end)."""
    return [value for _, value in topic_records(settings, topic, timeout_s=timeout_s)]


def review_ids(settings: Settings) -> list[str]:
    """Image ids of the TagResults in the review topic (with repeats, if any)."""
    deserialize = AvroDeserializer("TagResult")
    return [deserialize(v)["id"] for v in topic_values(settings, settings.kafka.topic_review)]


# -- the secured stack ------------------------------------------------------------------------

# Its ports: the test stack's + 10000, so both run side by side.
SECURE_PORTS = {"kafka": 29092, "kafka_controller": 29093, "solr": 28983}


@contextmanager
def secured_stack(home: Path) -> Iterator[Settings]:
    """A secured local stack (``stack.secure``) of its own under ``home``, up while the block
    runs; yields its settings without credentials (see :func:`as_component`)."""
    from imagetag.stack import LocalStack

    settings = Settings.load(
        kafka={"bootstrap_servers": f"127.0.0.1:{SECURE_PORTS['kafka']}"},
        solr={"url": f"http://127.0.0.1:{SECURE_PORTS['solr']}/solr", "commit_within_ms": 200},
        stack={
            "home": str(home),
            "kafka_controller_port": SECURE_PORTS["kafka_controller"],
            "secure": True,
        },
    )
    stack = LocalStack(settings)
    try:
        stack.up()
        yield settings
    finally:
        stack.down()


def as_component(settings: Settings, component: str) -> Settings:
    """The settings of a secured stack's ``component`` (``imagetag.secure_stack.COMPONENTS``):
    the Solr and Kafka users it runs as, as ``imagetag stack credentials`` prints them."""
    from imagetag.secure_stack import COMPONENTS, StackCredentials, kafka_client_options

    credentials = StackCredentials.load_or_create(settings.stack.home)
    solr_user, kafka_user = COMPONENTS[component]
    derived = settings
    if solr_user is not None:
        user, password = credentials.solr_user(component)
        derived = derived.derive(solr={"username": user, "password": password})
    if kafka_user is not None:
        client = kafka_client_options(*credentials.kafka_user(component))
        derived = derived.derive(kafka={"client": client})
    return derived
