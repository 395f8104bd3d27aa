"""Solr documents and the batching Solr writer.

``to_solr_doc`` turns one tagged row (a mapping as produced by ``tag_batch``) into a Solr
document; ``SolrWriter`` sends documents in batches to the collection alias with
``commitWithin``. The image id is the document id, so every write is an idempotent upsert and a
retried or replayed batch never duplicates anything.

Faults: while Solr is unreachable, overloaded or still loading (anything but a refused document) the
writer retries with capped exponential backoff *without giving up*: the micro-batch stalls and
the stream's offsets do not advance until Solr has accepted the batch. A document Solr refuses
is isolated by retrying the batch one document at a time and returned as rejected, so one
bad document never blocks the stream and never silently disappears. A document is refused
when Solr answers HTTP 400 naming it (``ERROR: [doc=...] ...``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pysolr

from imagetag.settings import Settings

log = logging.getLogger(__name__)
logging.getLogger("pysolr").setLevel(logging.CRITICAL)  # we log outages ourselves, once per try

# Dimension of the `vector` field in solr_config (Lucene's HNSW limit is 1024). Longer model
# vectors are reduced by a fixed Gaussian random projection (seeded, so every process and every
# model with the same input dimension projects identically; cosine similarity is preserved in
# expectation, Johnson-Lindenstrauss); shorter ones are zero-padded.
VECTOR_DIM = 256
_PROJECTION_SEED = 20261122
_projections: dict[int, np.ndarray] = {}

_SLUG = re.compile(r"[^a-z0-9]+")


def vote_field(label: str) -> str:
    """Solr field holding the vote fraction of one class: ``vote_<slug>``."""
    return "vote_" + (_SLUG.sub("_", label.lower()).strip("_") or "x")


def project_vector(vector: Sequence[float] | np.ndarray) -> list[float] | None:
    """The model's encoded vector as a VECTOR_DIM vector for Solr's kNN field.

    Returns None for an all-zero vector (cosine similarity is undefined for it).
    """
    values = np.asarray(vector, dtype=np.float32).ravel()
    n = values.shape[0]
    if n == 0:
        return None
    if n <= VECTOR_DIM:
        out = np.zeros(VECTOR_DIM, dtype=np.float32)
        out[:n] = values
    else:
        matrix = _projections.get(n)
        if matrix is None:
            rng = np.random.default_rng(_PROJECTION_SEED + n)
            matrix = (rng.standard_normal((n, VECTOR_DIM)) / np.sqrt(VECTOR_DIM)).astype(np.float32)
            _projections[n] = matrix
        out = values @ matrix
    norm = float(np.linalg.norm(out))
    if norm == 0.0 or not np.isfinite(norm):
        return None
    return [round(float(x), 6) for x in out / norm]


def _iso(value: Any) -> str | None:
    """A timestamp (datetime, pandas Timestamp, or epoch milliseconds) as Solr's ISO format."""
    if value is None:
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        if np.isnan(float(value)):
            return None
        value = dt.datetime.fromtimestamp(float(value) / 1000.0, tz=dt.UTC)
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    return value


def to_solr_doc(row: Mapping[str, Any]) -> dict[str, Any]:
    """One tagged image (a row of ``tag_batch``'s ``tagged`` frame) as a Solr document."""
    doc: dict[str, Any] = {"id": str(row["id"])}
    for name in ("source", "top_tag", "model_version", "format", "phash", "thumbnail", "label"):
        value = row.get(name)
        if value is not None and value == value:  # skips None and NaN
            doc[name] = str(value)
    for name in ("width", "height", "size"):
        if row.get(name) is not None:
            doc[name] = int(row[name])
    if row.get("confidence") is not None:
        doc["confidence"] = float(row["confidence"])
    doc["tags"] = [str(t) for t in _plain(row.get("tags")) or []]
    colors = _plain(row.get("colors"))
    if colors:
        doc["colors"] = [str(c) for c in colors]
    votes = row.get("votes") or {}
    items = votes.items() if isinstance(votes, Mapping) else votes  # dict or [(k, v), ...]
    for label, fraction in items:
        doc[vote_field(str(label))] = float(fraction)
    for name in ("ingested_at", "tagged_at"):
        stamp = _iso(row.get(name))
        if stamp:
            doc[name] = stamp
    vector = row.get("vector")
    if vector is not None and len(vector):
        projected = project_vector(vector)
        if projected is not None:
            doc["vector"] = projected
    return doc


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


_STATUS = re.compile(r"\(HTTP (\d{3})\)")


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
        while True:
            try:
                self.client.add(batch, commitWithin=self.commit_within)
                return
            except pysolr.SolrError as exc:
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
                delay = min(delay * 2, self.max_backoff_s)
