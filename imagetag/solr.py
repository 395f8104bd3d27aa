"""The Solr client and the batching Solr writer.

``SolrWriter`` sends documents (built by ``imagetag.documents.to_solr_doc``) in batches to the
collection alias with ``commitWithin``. The image id is the document id, so every write is an idempotent upsert and a
retried or replayed batch never duplicates anything.

Faults: while Solr is unreachable, overloaded or still loading (anything but a refused document) the
writer retries with capped exponential backoff *without giving up*: the micro-batch stalls and
the stream's offsets do not advance until Solr has accepted the batch. A document Solr refuses
is isolated by retrying the batch one document at a time and returned as rejected, so one
bad document never blocks the stream and never silently disappears. A document is refused
when Solr answers HTTP 400 naming it (``ERROR: [doc=...] ...``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pysolr

from imagetag.errors import ServiceError
from imagetag.settings import Settings

log = logging.getLogger(__name__)
logging.getLogger("pysolr").setLevel(logging.CRITICAL)  # we log outages ourselves, once per try


def solr_client(settings: Settings, collection: str | None = None) -> pysolr.Solr:
    """A client of the collection (default: the alias in the settings).

    With ``solr.zk_hosts`` set, live nodes are read from ZooKeeper (pysolr's SolrCloud);
    otherwise ``solr.url`` (any node of the cluster) is used.
    """
    solr = settings.solr
    name = collection or solr.collection
    auth = (solr.username, solr.password.get_secret_value()) if solr.password else None
    if solr.zk_hosts:
        zookeeper = pysolr.ZooKeeper(solr.zk_hosts)
        return pysolr.SolrCloud(zookeeper, name, timeout=solr.timeout_s, auth=auth)
    return pysolr.Solr(f"{solr.url.rstrip('/')}/{name}", timeout=solr.timeout_s, auth=auth)


@dataclass
class WriteResult:
    """What a write did: documents accepted, documents Solr refused (with its reason)."""

    accepted: int = 0
    rejected: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    retries: int = 0
    stalled_s: float = 0.0  # seconds waited for an unavailable Solr


_STATUS = re.compile(r"\(HTTP (\d{3})\)")


def refusal(settings: Settings, status: int, operation: str) -> str | None:
    """The one line for an authentication (401) or authorization (403) refusal, naming the
    user and the operation; None for any other status. Not worth retrying: a password or a
    permission does not fix itself."""
    user = settings.solr.username or "anonymous"
    if status == 401:
        return (
            f"user {user!r} is not authenticated for {operation} (HTTP 401: wrong or no password)"
        )
    if status == 403:
        return f"user {user!r} may not {operation} (HTTP 403: no permission)"
    return None


def _is_transient(error: pysolr.SolrError) -> bool:
    """Only a document Solr refuses (HTTP 400 naming a ``[doc=...]``) is not worth waiting for.

    Everything else is the service, not the data: connection refused, timeouts, 5xx, 429, and
    the 404 / 400 "no active replica" answers of a node whose cores are still loading after a
    restart. Those stall the batch until Solr is back.
    """
    match = _STATUS.search(str(error))
    if match is None:
        return True
    return not (int(match.group(1)) == 400 and "[doc=" in str(error))


class SolrWriter:
    """Sends documents to Solr in batches, retrying while Solr is unavailable.

    ``max_backoff_s`` caps the wait between tries; ``give_up_after_s`` (None = never) bounds
    the total stall, for callers that prefer failing to waiting.
    """

    def __init__(
        self,
        settings: Settings,
        collection: str | None = None,
        *,
        max_backoff_s: float = 10.0,
        give_up_after_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.client = solr_client(settings, collection)
        self.batch_size = settings.solr.batch_size
        self.commit_within = settings.solr.commit_within_ms
        self.max_backoff_s = max_backoff_s
        self.give_up_after_s = give_up_after_s
        self._sleep = sleep

    def write(self, docs: Iterable[dict[str, Any]]) -> WriteResult:
        """Upsert all ``docs``; returns once Solr accepted every one it does not refuse."""
        result = WriteResult()
        batch: list[dict[str, Any]] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                self._write_batch(batch, result)
                batch = []
        if batch:
            self._write_batch(batch, result)
        return result

    def _write_batch(self, batch: list[dict[str, Any]], result: WriteResult) -> None:
        try:
            self._send_with_retry(batch, result)
            result.accepted += len(batch)
        except pysolr.SolrError as exc:
            if len(batch) == 1:
                result.rejected.append((batch[0], str(exc)[:500]))
                return
            # Find the refused documents; the others go in one at a time.
            for doc in batch:
                self._write_batch([doc], result)

    def _send_with_retry(self, batch: list[dict[str, Any]], result: WriteResult) -> None:
        """Raises SolrError only for a refusal (4xx); waits out everything else."""
        delay = 0.5
        started = time.monotonic()
        waited_before = False
        while True:
            try:
                self.client.add(batch, commitWithin=self.commit_within)
                if waited_before:
                    result.stalled_s += time.monotonic() - started
                return
            except pysolr.SolrError as exc:
                status = _STATUS.search(str(exc))
                denied = refusal(self.settings, int(status.group(1)), "update") if status else None
                if denied is not None:
                    raise ServiceError("solr", self.settings.solr.url, denied) from exc
                if not _is_transient(exc):
                    raise
                waited = time.monotonic() - started
                if self.give_up_after_s is not None and waited >= self.give_up_after_s:
                    raise
                result.retries += 1
                log.warning(
                    "solr at %s unavailable (%s); retrying %d docs in %.1fs (stalled %.0fs)",
                    self.settings.solr.url,
                    str(exc).splitlines()[0][:160],
                    len(batch),
                    delay,
                    waited,
                )
                self._sleep(delay)
                waited_before = True
                delay = min(delay * 2, self.max_backoff_s)
