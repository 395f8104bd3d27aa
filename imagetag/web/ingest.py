"""What the web app writes: uploads sent to ingest through ``ImageProducer`` (its validation,
its Avro contract, its id), and corrections (an atomic update of Solr's ``label`` as the
indexer, and the image sent again with its label so the archive, hence the retrain corpus,
keeps it).

:class:`Sender` is the protocol the app uses (the unit tests hand it a fake that records what
would be sent: no Kafka there); :class:`ProducerSender` is the real one, one long-lived
producer for the app, created on first use.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from imagetag.errors import ServiceError
from imagetag.settings import Settings

log = logging.getLogger(__name__)


class Sender(Protocol):
    def validate(self, data: bytes) -> str:
        """The refusal reason and detail as ``reason: detail`` when the producer would refuse
        ``data``, else ''."""

    def send(self, data: bytes, label: str | None, metadata: Mapping[str, str], source: str) -> str:
        """Send one image, wait for its delivery; returns its id. ServiceError if Kafka did
        not take it."""


def refusal(data: bytes, settings: Settings) -> str:
    """Why ``ImageProducer`` would refuse ``data`` ("reason: detail"), or "" if it would send
    it: the producer's own checks (``validate_image``), with no Kafka client."""
    from producers.producer import ImageRefused, validate_image

    try:
        validate_image(data, settings.limits.max_bytes)
    except ImageRefused as exc:
        return f"{exc.reason}: {exc.detail.removeprefix('bytes: ')}"
    return ""


class ProducerSender:
    """:class:`Sender` over one ``ImageProducer`` for the app's life."""

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._producer: Any = None
        self._results: dict[str, str | None] = {}

    def _get(self) -> Any:
        from producers.producer import ImageProducer

        with self._lock:
            if self._producer is None:
                self._producer = ImageProducer(
                    self.settings,
                    check_timeout_s=10.0,
                    flush_timeout_s=self.timeout_s,
                    on_delivery=self._delivered,
                )
            return self._producer

    def _delivered(self, image_id: str, error: str | None) -> None:
        self._results[image_id] = error

    def validate(self, data: bytes) -> str:
        return refusal(data, self.settings)

    def send(self, data: bytes, label: str | None, metadata: Mapping[str, str], source: str) -> str:
        producer = self._get()
        image_id: str = producer.send(data, label=label, metadata=dict(metadata), source=source)
        producer.flush(self.timeout_s)
        error = self._results.pop(image_id, "not delivered in time")
        if error is not None:
            raise ServiceError("kafka", self.settings.kafka.bootstrap_servers, error)
        return image_id

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close()
                self._producer = None


class LabelWriter(Protocol):
    def set_label(self, image_id: str, label: str) -> None: ...


class SolrLabelWriter:
    """The one Solr write the app makes: ``label`` of one document, an atomic update, as the
    indexer (``web.label_username``), never the searcher the pages read as."""

    def __init__(self, settings: Settings) -> None:
        web = settings.web
        changes: dict[str, Any] = {}
        if web.label_username is not None:
            changes = {"username": web.label_username, "password": web.label_password}
        self.settings = settings.derive(solr=changes) if changes else settings

    def set_label(self, image_id: str, label: str) -> None:
        import pysolr

        from imagetag.solr import solr_client

        try:
            solr_client(self.settings).add(
                [{"id": image_id, "label": label}],
                fieldUpdates={"label": "set"},
                commit=False,
                commitWithin=self.settings.solr.commit_within_ms,
            )
        except pysolr.SolrError as exc:
            raise ServiceError(
                "solr", self.settings.solr.url, str(exc).splitlines()[0][:300]
            ) from exc


def iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")
