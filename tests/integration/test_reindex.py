"""Blue/green re-indexing on the real stack: the alias moves in one step; a query loop running
through the whole rebuild only ever sees the complete old index or the complete new one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from batch.backfill import BackfillOptions, run_backfill
from batch.reindex import reindex
from imagetag.settings import Settings
from imagetag.solr_admin import SolrAdmin
from imagetag.testing.services import solr_docs
from tests.integration.backfill_helpers import hand_model, images, png, write_archive

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.integration


class QueryLoop:
    """Queries the alias as fast as it answers, recording (numFound, {model_version: count})."""

    def __init__(self, settings: Settings) -> None:
        self.url = f"{settings.solr.url}/{settings.solr.collection}/select"
        self.seen: list[tuple[int, dict[str, int]]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        params = {
            "q": "*:*",
            "rows": "0",
            "facet": "true",
            "facet.field": "model_version",
            "facet.mincount": "1",
            "wt": "json",
        }
        while not self.stop.is_set():
            try:
                body = requests.get(self.url, params=params, timeout=30).json()
                flat = body["facet_counts"]["facet_fields"]["model_version"]
                versions = dict(zip(flat[::2], flat[1::2], strict=True))
                self.seen.append((int(body["response"]["numFound"]), versions))
            except Exception as exc:  # a failed query is a finding, not a crash of the loop
                self.errors.append(repr(exc))

    def __enter__(self) -> QueryLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


@pytest.fixture
def reindex_settings(isolated_settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    settings = isolated_settings.derive(
        model_store=str(tmp_path / "models"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        archive_dir=str(tmp_path / "archive"),
    )
    yield settings
    admin = SolrAdmin(settings)  # the old generations the fixture does not know about
    for name in admin.collections():
        if name.startswith(settings.solr.collection + "_"):
            serving = admin.aliases().get(settings.solr.collection, "").split(",")
            if name not in serving:
                admin.delete_collection(name)


def test_rebuild_switches_the_alias_atomically(
    spark: SparkSession, reindex_settings: Settings
) -> None:
    settings = reindex_settings
    alias = settings.solr.collection
    admin = SolrAdmin(settings)
    blue = admin.aliases()[alias]
    pngs = [png(i) for i in images(1200, seed=21)]
    write_archive(spark, settings, [(d, None) for d in pngs[:600]])
    write_archive(spark, settings, [(d, None) for d in pngs[600:]])  # a second day's files
    old = hand_model(settings.model_store, pngs[:60])
    run_backfill(spark, settings, BackfillOptions(source="archive", progress=False))
    before = solr_docs(settings)
    assert before and {d["model_version"] for d in before} == {old}
    new_model = hand_model(settings.model_store, pngs[:60], seed=5)  # a new CURRENT

    with QueryLoop(settings) as loop:
        # Interrupted after one split: the alias must not move to a half-built collection.
        partial = reindex(
            spark,
            settings,
            min_fraction=0.9,
            backfill_options=BackfillOptions(split_bytes=1, max_splits=1, progress=False),
        )
        assert not partial.switched and partial.new != blue
        assert admin.aliases()[alias] == blue
        assert 0 < partial.documents < len(before) + 1200

        done = reindex(spark, settings, min_fraction=0.9, drop_old=True)
        assert done.switched and done.resumed and done.new == partial.new
        assert done.old == [blue] and done.dropped == [blue]
        loop_done_at = len(loop.seen)
        while len(loop.seen) < loop_done_at + 5:  # a few queries after the switch too
            threading.Event().wait(0.05)

    assert admin.aliases()[alias] == done.new
    assert blue not in admin.collections()
    after = solr_docs(settings)
    assert {d["model_version"] for d in after} == {new_model}
    assert done.documents == len(after)

    # Every answer was the whole blue index or the whole green one: never empty, never a mix.
    complete = {(len(before), old), (len(after), new_model)}
    states: list[Any] = [(n, next(iter(v))) if len(v) == 1 else (n, v) for n, v in loop.seen]
    assert loop.errors == []
    assert len(loop.seen) > 20
    assert set(states) <= complete, {s for s in states if s not in complete}
    assert states[0] == (len(before), old) and states[-1] == (len(after), new_model)
