"""Blue/green re-indexing: rebuild the Solr index in a new collection, then move the alias.

    imagetag reindex [--drop-old] [SOURCE]
    imagetag submit reindex [--drop-old]           # through spark-submit

``run(settings, ReindexOptions(...))`` is the job (``imagetag.commands.reindex`` turns the
command line into the options); ``reindex`` does it in a Spark session the caller owns.

For a changed schema (``solr_config/``) or a full rebuild with the current model:

1. upload the configset (so the new collection gets the new schema);
2. create ``<alias>_<n+1>`` next to the collection the alias points at (the *blue* one, which
   keeps serving every query meanwhile);
3. backfill it from the archive (default) with the current model, Solr only: the review and
   dead-letter topics already hold what a rebuild would append again;
4. commit it, check it is not emptier than expected, then ``CREATEALIAS`` the alias onto it:
   one request, so a query sees the whole old index or the whole new one, never a half-built
   one;
5. keep the old collection (roll back by pointing the alias back) or, with ``--drop-old``,
   delete it.

An interrupted rebuild is resumed: the newest ``<alias>_<n>`` that the alias does not point at
and that has a backfill state folder is filled further (``--fresh`` deletes it and starts
over).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.backfill import BackfillOptions, BackfillSummary, run_backfill
from imagetag.errors import ConfigError, ImagetagError, check_minimums
from imagetag.settings import Settings
from imagetag.solr_admin import SolrAdmin

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("imagetag.reindex")


class ReindexError(ImagetagError):
    """The new collection is not fit to serve: the alias was left where it was."""


@dataclass(frozen=True)
class ReindexOptions:
    """What to rebuild the index from and what to do around the switch.

    ``min_fraction``: switch only if the new collection holds at least this fraction of the
    old one's documents (0: whatever it holds). ``max_splits`` / ``progress`` are passed to the
    backfill that fills the new collection. Raises ConfigError for a ``min_fraction`` outside
    [0, 1] or a negative ``max_splits``.
    """

    source: str = "archive"
    drop_old: bool = False
    fresh: bool = False
    min_fraction: float = 0.9
    max_splits: int | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.min_fraction <= 1:
            raise ConfigError(f"min_fraction must be in [0, 1], got {self.min_fraction}")
        check_minimums(self, {"max_splits": 0})


@dataclass
class ReindexResult:
    alias: str
    old: list[str]
    new: str
    documents: int
    switched: bool
    resumed: bool
    dropped: list[str] = field(default_factory=list)
    backfill: BackfillSummary | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backfill"] = self.backfill.as_dict() if self.backfill else None
        return data

    def format(self) -> str:
        state = "switched" if self.switched else "NOT switched (the rebuild is unfinished)"
        lines = [
            f"alias:     {self.alias} -> {self.new} ({state})",
            f"old:       {', '.join(self.old) or '-'}"
            + (f" (dropped: {', '.join(self.dropped)})" if self.dropped else " (kept)"),
            f"documents: {self.documents} in {self.new}" + (" (resumed)" if self.resumed else ""),
        ]
        if self.backfill is not None:
            lines.append(self.backfill.format())
        return "\n".join(lines)


def collection_count(settings: Settings, collection: str) -> int:
    """numFound of ``*:*`` in ``collection`` (after a hard commit)."""
    from imagetag.solr import solr_client

    client = solr_client(settings, collection)
    client.commit()
    return int(client.search("*:*", rows=0).hits)


def _generation(name: str, alias: str) -> int:
    suffix = name[len(alias) + 1 :]
    return int(suffix) if name.startswith(f"{alias}_") and suffix.isdigit() else -1


def reindex(
    spark: SparkSession,
    settings: Settings,
    *,
    source: str = "archive",
    drop_old: bool = False,
    fresh: bool = False,
    min_fraction: float = 0.0,
    backfill_options: BackfillOptions | None = None,
) -> ReindexResult:
    """Rebuild the alias's index into a new collection and switch the alias to it.

    The alias is moved only when the backfill finished every split and the new collection
    holds at least ``min_fraction`` of the old one's documents; otherwise ReindexError (or, for
    a run stopped by ``max_splits``, a result with ``switched=False``) and the old collection
    keeps serving.
    """
    admin = SolrAdmin(settings)
    solr = settings.solr
    alias = solr.collection
    admin.upload_configset(solr.configset)
    old = [c for c in admin.aliases().get(alias, "").split(",") if c]
    state_root = Path(settings.checkpoint_dir) / "reindex" / alias
    candidates = sorted(
        (c for c in admin.collections() if _generation(c, alias) >= 0 and c not in old),
        key=lambda c: _generation(c, alias),
    )
    newest_old = max((_generation(c, alias) for c in old), default=-1)
    unfinished = [
        c for c in candidates if _generation(c, alias) > newest_old and (state_root / c).exists()
    ]
    resumed = bool(unfinished) and not fresh
    if unfinished and fresh:
        for name in unfinished:
            log.info("dropping the unfinished rebuild %s (--fresh)", name)
            admin.delete_collection(name)
            shutil.rmtree(state_root / name, ignore_errors=True)
    if resumed:
        new = unfinished[-1]
        log.info("resuming the rebuild of %s into %s", alias, new)
    else:
        new = admin.next_collection_name(alias)
        log.info(
            "rebuilding %s into a new collection %s (configset %s)", alias, new, solr.configset
        )
        (state_root / new).mkdir(parents=True, exist_ok=True)
        admin.create_collection(new, solr.configset)
    target = settings.derive(solr={"collection": new})
    base = backfill_options or BackfillOptions()
    options = BackfillOptions(
        **{
            **asdict(base),
            "source": source,
            "retag": None,
            "state_dir": str(state_root / new / "backfill"),
            "archive": False,
            "kafka_sinks": False,
        }
    )
    summary = run_backfill(spark, target, options)
    documents = collection_count(target, new)
    result = ReindexResult(alias, old, new, documents, False, resumed, backfill=summary)
    if summary.splits_remaining:
        log.info("%d splits left: the alias stays on %s", summary.splits_remaining, old)
        return result
    previous = sum(collection_count(settings, c) for c in old)
    if previous and documents < min_fraction * previous:
        raise ReindexError(
            f"{new} holds {documents} documents, fewer than {min_fraction:.0%} of the "
            f"{previous} in {', '.join(old)}: the alias stays on the old collection"
        )
    admin.point_alias(alias, new)
    result.switched = True
    log.info("alias %s -> %s (was %s)", alias, new, ", ".join(old) or "-")
    shutil.rmtree(state_root / new, ignore_errors=True)
    if drop_old:
        for name in old:
            admin.delete_collection(name)
            result.dropped.append(name)
    return result


def run(settings: Settings, options: ReindexOptions) -> ReindexResult:
    """The reindex job in its own Spark session (stopped at the end): what ``imagetag
    reindex`` runs. Raises as ``reindex`` does."""
    from imagetag.spark import spark_session

    spark = spark_session(settings, "imagetag-reindex")
    try:
        return reindex(
            spark,
            settings,
            source=options.source,
            drop_old=options.drop_old,
            fresh=options.fresh,
            min_fraction=options.min_fraction,
            backfill_options=BackfillOptions(
                max_splits=options.max_splits, progress=options.progress
            ),
        )
    finally:
        with contextlib.suppress(Exception):
            spark.stop()
