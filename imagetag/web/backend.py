"""What the web app reads: Solr (as the least-privileged user the settings give it), the
model store's current model and its plots, and originals from the raw archive.

Each reader is a small class with the few calls the pages make, so the unit tests hand the app
a fake Solr answer instead of a server (:class:`Searcher` is the protocol).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from imagetag.bundle import CONFUSION_PLOT, THRESHOLD_PLOT, BundleError, ModelBundle, ModelStore
from imagetag.bundle import is_local as is_local_store
from imagetag.errors import ServiceError
from imagetag.settings import Settings

log = logging.getLogger(__name__)

PLOTS = (CONFUSION_PLOT, THRESHOLD_PLOT)
_STATUS = re.compile(r"\(HTTP (\d{3})\)")


class Searcher(Protocol):
    """One ``/select`` request: the main query and the other parameters (lists repeat a
    parameter); returns Solr's JSON answer. Raises ServiceError when Solr cannot answer."""

    def select(self, q: str, params: dict[str, Any]) -> dict[str, Any]: ...


class SolrSearcher:
    """:class:`Searcher` over ``imagetag.solr.solr_client`` (SolrCloud or a node's URL, the
    settings' user: the searcher on a secured stack), one client per server thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            from imagetag.solr import solr_client

            client = self._local.client = solr_client(self.settings)
        return client

    def select(self, q: str, params: dict[str, Any]) -> dict[str, Any]:
        import pysolr

        from imagetag.solr import refusal

        try:
            answer: dict[str, Any] = self._client().search(q, **params).raw_response
            return answer
        except pysolr.SolrError as exc:
            text = str(exc)
            status = _STATUS.search(text)
            denied = refusal(self.settings, int(status.group(1)), "read") if status else None
            reason = denied or text.splitlines()[0][:300]
            raise ServiceError("solr", self.settings.solr.url, reason) from exc


class ModelSource:
    """The model store's CURRENT model, loaded once per version (a promotion is picked up
    within ``recheck_s``), its class names and its plots. Only a local store is read: one on
    a Hadoop filesystem needs Spark, which the web app does not start."""

    def __init__(self, store: str, recheck_s: float = 5.0) -> None:
        self.store = store
        self.recheck_s = recheck_s
        self._lock = threading.Lock()
        self._checked = 0.0
        self._version: str | None = None
        self._manifest: dict[str, Any] = {}
        self._bundle: ModelBundle | None = None
        self._plots: dict[tuple[str, str], bytes | None] = {}  # read or drawn once

    def _store(self) -> ModelStore:
        if not is_local_store(self.store):
            raise BundleError(f"model store {self.store}: the web app reads only a local store")
        return ModelStore(self.store)

    def version(self) -> str | None:
        """The CURRENT version (re-read at most every ``recheck_s``), None when there is none
        or the store cannot be read."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= self.recheck_s:
                self._checked = now
                try:
                    store = self._store()
                    current = store.current_version()
                    if current != self._version:
                        self._manifest = store.manifest(current) if current else {}
                        self._version, self._bundle = current, None
                except (BundleError, OSError, ValueError) as exc:
                    log.warning("model store %s: %s", self.store, exc)
                    self._version, self._manifest, self._bundle = None, {}, None
            return self._version

    def manifest(self) -> dict[str, Any]:
        self.version()
        return self._manifest

    def classes(self) -> list[str]:
        """The current model's class names (none without a model)."""
        return [str(c) for c in self.manifest().get("classes", [])]

    def bundle(self) -> ModelBundle:
        """The current model, loaded on first use. Raises BundleError when there is none."""
        version = self.version()
        if version is None:
            raise BundleError(f"model store {self.store}: no CURRENT model (run `imagetag train`)")
        with self._lock:
            if self._bundle is None or self._bundle.version != version:
                self._bundle = self._store().load(version)
            return self._bundle

    def plot(self, version: str, name: str) -> bytes | None:
        """A plot of ``version`` (``confusion.png`` or ``threshold.png``): the file training
        wrote next to the manifest, else drawn from the manifest's metrics (models trained
        before the plots existed); None when neither is there."""
        if name not in PLOTS:
            return None
        key = (version, name)
        if self._plots.get(key) is None:  # a plot written later is found then
            self._plots[key] = self._read_plot(version, name)
        return self._plots[key]

    def _read_plot(self, version: str, name: str) -> bytes | None:
        try:
            store = self._store()
            path = Path(store.path(version, name))
            if path.is_file():
                return path.read_bytes()
            metrics = store.manifest(version).get("metrics", {})
        except (BundleError, OSError, ValueError):
            return None
        from imagetag import plots

        try:
            if name == CONFUSION_PLOT and "confusion" in metrics:
                confusion = metrics["confusion"]
                return plots.confusion_png(confusion["classes"], confusion["matrix"])
            if name == THRESHOLD_PLOT and "threshold_curve" in metrics:
                return plots.threshold_png(
                    metrics["threshold_curve"], float(metrics.get("threshold", 0.4))
                )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("model %s: cannot draw %s: %s", version, name, exc)
        return None


def archived_original(archive_dir: str, image_id: str, ingested_at: str | None) -> bytes | None:
    """The original bytes of ``image_id`` from the stream's raw archive (Parquet under
    ``archive_dir``, partitioned by ``ingest_date``), looked up in the one partition of its
    ingest day; None when the archive is not local, or has no such partition or record."""
    if ingested_at is None or "://" in archive_dir:
        return None
    try:
        day = dt.datetime.fromisoformat(ingested_at.replace("Z", "+00:00")).astimezone(dt.UTC)
    except ValueError:
        return None
    folder = Path(archive_dir) / f"ingest_date={day:%Y-%m-%d}"
    if not folder.is_dir():
        return None
    import pyarrow.dataset as ds

    try:
        table = ds.dataset(folder, format="parquet").to_table(
            columns=["image"], filter=ds.field("id") == image_id
        )
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        log.warning("archive %s: %s", folder, exc)
        return None
    if table.num_rows == 0:
        return None
    value = table.column("image")[0].as_py()
    return bytes(value) if value is not None else None
