"""Solr administration over SolrCloud's HTTP APIs: configset upload, collections, aliases.

Everything goes through the Configsets and Collections APIs of any node, so it works the same
on the local single-node SolrCloud and on a production cluster. Readers and writers always use
the alias (``settings.solr.collection``); the collections behind it are ``<alias>_<n>``, which
is what makes a blue/green rebuild an alias switch.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from pathlib import Path
from typing import Any

import requests

from imagetag.errors import ServiceError
from imagetag.settings import Settings
from imagetag.solr import refusal

log = logging.getLogger(__name__)

CONFIGSET_DIR = Path(__file__).resolve().parent.parent / "solr_config" / "imagetag" / "conf"


class SolrAdmin:
    """A thin client of the Configsets and Collections APIs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = settings.solr.url.rstrip("/")
        self.session = requests.Session()
        if settings.solr.username and settings.solr.password:
            self.session.auth = (settings.solr.username, settings.solr.password.get_secret_value())

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        params = {"wt": "json", **kwargs.pop("params", {})}
        try:
            response = self.session.request(
                method, url, params=params, timeout=self.settings.solr.timeout_s, **kwargs
            )
        except requests.RequestException as exc:
            raise ServiceError("solr", self.base_url, f"not reachable: {exc}") from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {}
        denied = refusal(self.settings, response.status_code, f"{method} {path}")
        if denied is not None:
            raise ServiceError("solr", self.base_url, denied)
        if response.status_code >= 400 or body.get("error"):
            message = body.get("error", {}).get("msg") or response.text[:300]
            raise ServiceError("solr", self.base_url, f"{path} failed: {message}")
        return body

    def collections_api(self, action: str, **params: Any) -> dict[str, Any]:
        return self._request("GET", "/admin/collections", params={"action": action, **params})

    # -- configsets --------------------------------------------------------------------------
    def upload_configset(self, name: str, folder: Path = CONFIGSET_DIR) -> None:
        """Upload (or replace) a configset from a local folder."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
        self._request(
            "POST",
            "/admin/configs",
            params={"action": "UPLOAD", "name": name, "overwrite": "true", "cleanup": "true"},
            data=buffer.getvalue(),
            headers={"Content-Type": "application/octet-stream"},
        )

    # -- collections and aliases -------------------------------------------------------------
    def collections(self) -> list[str]:
        return list(self.collections_api("LIST").get("collections", []))

    def aliases(self) -> dict[str, str]:
        return dict(self.collections_api("LISTALIASES").get("aliases", {}))

    def create_collection(self, name: str, configset: str) -> None:
        solr = self.settings.solr
        try:
            self.collections_api(
                "CREATE",
                name=name,
                numShards=solr.shards,
                replicationFactor=solr.replication_factor,
                **{"collection.configName": configset},
                waitForFinalState="true",
            )
        except ServiceError:
            # Do not leave a half-created collection behind to be mistaken for a good one.
            if name in self.collections():
                self.delete_collection(name)
            raise

    def reload_collection(self, name: str) -> None:
        self.collections_api("RELOAD", name=name)

    def wait_ready(self, name: str, timeout_s: float = 120.0) -> None:
        """Wait until the collection answers a query: after a node restarts, its cores load
        (and after a RELOAD, reload) in the background, and until then requests get a 404."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                response = self.session.get(
                    f"{self.base_url}/{name}/select",
                    params={"q": "*:*", "rows": "0", "wt": "json"},
                    timeout=self.settings.solr.timeout_s,
                )
                if response.status_code == 200:
                    return
                reason = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                reason = str(exc)
            if time.monotonic() > deadline:
                raise ServiceError(
                    "solr",
                    self.base_url,
                    f"collection {name} not ready in {timeout_s:.0f}s: {reason}",
                )
            time.sleep(0.5)

    def delete_collection(self, name: str) -> None:
        self.collections_api("DELETE", name=name)

    def point_alias(self, alias: str, collection: str) -> None:
        """Create or move an alias in one step: readers see the old or the new collection."""
        self.collections_api("CREATEALIAS", name=alias, collections=collection)

    def delete_alias(self, alias: str) -> None:
        self.collections_api("DELETEALIAS", name=alias)

    def next_collection_name(self, alias: str) -> str:
        """``<alias>_<n+1>`` where n is the highest generation that exists."""
        prefix = f"{alias}_"
        generations = [
            int(name[len(prefix) :])
            for name in self.collections()
            if name.startswith(prefix) and name[len(prefix) :].isdigit()
        ]
        return f"{prefix}{max(generations, default=0) + 1}"

    def ensure_collection(self, alias: str | None = None) -> tuple[str, bool]:
        """Upload the configset, then make sure ``alias`` points at a collection.

        An existing collection is reloaded (so a changed configset takes effect); otherwise
        ``<alias>_1`` is created and the alias pointed at it. Returns (collection, created?).
        """
        solr = self.settings.solr
        alias = alias or solr.collection
        self.upload_configset(solr.configset)
        current = self.aliases().get(alias)
        if current:
            for name in current.split(","):
                self.reload_collection(name)
                self.wait_ready(name)
            return current, False
        collection = self.next_collection_name(alias)
        self.create_collection(collection, solr.configset)
        self.point_alias(alias, collection)
        return collection, True
