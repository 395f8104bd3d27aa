"""The backfill job: ``Backfill`` (plan, then read, archive, tag and write round by round)
and its entry points ``run_backfill`` (in the caller's Spark session) and ``run`` (in its
own). See the ``batch.backfill`` package docstring for what a run does."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.backfill.options import (
    DEFAULT_SPLIT_RECORDS,
    BackfillError,
    BackfillOptions,
    BackfillSummary,
    Split,
)
from batch.backfill.planning import (
    kafka_watermarks,
    list_folder,
    plan_file_groups,
    plan_kafka_ranges,
    plan_parquet,
    plan_record_ranges,
    rounds,
    sniff_kind,
    source_path,
)
from batch.backfill.readers import (
    archive_event_rows,
    archive_split_rows,
    event_row,
    expand_splits,
    folder_rows,
    parquet_rows,
    rows_frame,
)
from batch.backfill.retag import review_ids_frame, solr_delete_partition, solr_ids_partition
from batch.backfill.state import BackfillState, round_token, state_hash, token_splits
from imagetag.contracts import (
    ARCHIVE_EVENT_COLUMNS,
    BACKFILL_ARCHIVE_SCHEMA,
    KAFKA_COLUMNS,
    KAFKA_SCHEMA,
)
from imagetag.errors import NoModelError
from imagetag.hadoop import archive_roots, canonical, file_uri, from_hadoop, spark_path
from imagetag.metrics import BackfillMetrics
from imagetag.records import now_ms
from imagetag.settings import Settings
from imagetag.sourceformats import FORMATS, SourceKind, parts

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from imagetag.pipeline import SharedModel, Written
    from imagetag.sinks import TransactionalSink

log = logging.getLogger("imagetag.backfill")


class Backfill:
    """One backfill run: plan, then tag and write round by round (see ``batch.backfill``)."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        options: BackfillOptions,
        metrics: BackfillMetrics | None = None,
    ) -> None:
        self.spark = spark
        self.settings = settings
        self.options = options
        self.metrics = metrics or BackfillMetrics()
        self.kind = options.kind or sniff_kind(options.source)
        if options.retag is not None and self.kind is not SourceKind.ARCHIVE:
            raise BackfillError("--retag re-tags from the archive: SOURCE must be 'archive'")
        self.path = source_path(options.source, self.kind, settings)
        self.topic_label = f"backfill:{self.kind}"
        self.archive_output = (
            options.archive
            if options.archive is not None
            else self.kind not in (SourceKind.ARCHIVE, SourceKind.KAFKA)
        )
        self.current: str | None = None
        if options.retag:
            from imagetag.bundle import ModelStore

            self.current = ModelStore(settings.model_store, spark).current_version()
            if self.current is None:
                raise NoModelError(settings.model_store, "nothing to re-tag")
        identity = {
            "kind": self.kind,
            "source": self.path,
            "since": options.since,
            "retag": options.retag,
            "current": self.current,
            "glob": options.glob,
            "bytes_column": options.bytes_column,
            "label_column": options.label_column,
            "split_size": options.split_size,
            "split_bytes": options.split_bytes,
            "collection": settings.solr.collection,
        }
        self.state = BackfillState(
            options.state_dir
            or f"{settings.checkpoint_dir.rstrip('/')}/backfill/{state_hash(identity)}"
        )
        self.manifest = self.state.open(
            {"source": self.path, "kind": self.kind, "options": identity, "started_ms": now_ms()},
            fresh=options.fresh,
        )
        self.stamp_ms = int(self.manifest["started_ms"])
        self.sink: TransactionalSink | None = None
        self.summary = BackfillSummary(
            source=self.path, kind=self.kind, state_dir=str(self.state.folder), retag=options.retag
        )

    # -- planning --------------------------------------------------------------------------
    def plan(self) -> list[Split]:
        kind, opts = self.kind, self.options
        size = opts.split_size or DEFAULT_SPLIT_RECORDS.get(kind, 5000)
        if FORMATS[kind].indexable:  # idx, CIFAR, Tiny Images: record ranges
            return plan_record_ranges(kind, self.path, size)
        match kind:
            case SourceKind.SEQUENCEFILE:  # one file per split: read from its start
                files = [str(f) for f in parts(kind, Path(self.path))]
                return plan_file_groups(kind, [(f, Path(f).stat().st_size) for f in files], 1)
            case SourceKind.FOLDER:
                files = list_folder(self.spark, self.path, opts.glob)
                return plan_file_groups(kind, [(f, 0) for f in files], max_files=size)
            case SourceKind.PARQUET:
                return plan_parquet(self.spark, kind, [self.path], opts.split_bytes, opts.since)
            case SourceKind.ARCHIVE:
                roots = archive_roots(self.settings, self.path)
                return plan_parquet(self.spark, kind, roots, opts.split_bytes, opts.since)
            case SourceKind.KAFKA:
                watermarks = kafka_watermarks(self.settings, self.path)
                return plan_kafka_ranges(self.path, watermarks, size)
        raise BackfillError(f"unknown source format {kind}")  # pragma: no cover

    # -- reading ---------------------------------------------------------------------------
    def read(self, splits: Sequence[Split]) -> DataFrame:
        """The round's records as Kafka-shaped rows (KAFKA_SCHEMA): files through Spark's
        binaryFile source, tables through its Parquet reader, Kafka through its connector,
        every other format by the registry's reader inside the executors."""
        match self.kind:
            case SourceKind.FOLDER:
                return self._read_folder(splits)
            case SourceKind.PARQUET:
                return self._read_parquet(splits)
            case SourceKind.ARCHIVE:
                return self._read_archive(splits)
            case SourceKind.KAFKA:
                return self._read_kafka(splits)
        return self._read_on_executors(splits)

    def _read_on_executors(self, splits: Sequence[Split]) -> DataFrame:
        topic, stamp, size = self.topic_label, self.stamp_ms, self.options.batch_size
        max_bytes = self.settings.limits.max_bytes
        descriptors = self.spark.sparkContext.parallelize(
            [(s.to_json(),) for s in splits], len(splits)
        )
        return self.spark.createDataFrame(descriptors, "split string").mapInPandas(
            lambda it: expand_splits(it, topic, stamp, size, max_bytes), KAFKA_SCHEMA
        )

    def _read_folder(self, splits: Sequence[Split]) -> DataFrame:
        from pyspark.sql import functions as F

        places = {
            path: (split.index, offset)
            for split in splits
            for offset, path in enumerate(split.paths)
        }
        files = self.spark.read.format("binaryFile").load(
            [spark_path(p) for s in splits for p in s.paths]
        )
        max_bytes = self.settings.limits.max_bytes
        listing = files.select("path", "length").collect()  # no content read
        oversize = [row for row in listing if row.length > max_bytes]
        for row in oversize:
            log.warning("%s: %d bytes over limits.max_bytes, not read", row.path, row.length)
        self.summary.refused += len(oversize)
        root, topic, stamp = self.path, self.topic_label, self.stamp_ms
        by_folder = self.options.label_from_folder
        rows = files.where(F.col("length") <= max_bytes).mapInPandas(
            lambda it: folder_rows(it, places, root, topic, stamp, by_folder), KAFKA_SCHEMA
        )
        # Spark's file scans skip empty files; they are records too (dead letters, `empty`).
        present = {from_hadoop(row.path) for row in listing}
        empty = [
            event_row(
                b"",
                source=file_uri(path),
                label=None,
                metadata={"dataset": "folder", "name": path},
                produced_at_ms=stamp,
                topic=topic,
                partition=index,
                offset=offset,
                timestamp_ms=stamp,
            )
            for path, (index, offset) in places.items()
            if path not in present
        ]
        if empty:
            rows = rows.unionByName(self.spark.createDataFrame(rows_frame(empty), KAFKA_SCHEMA))
        return rows

    def _read_parquet(self, splits: Sequence[Split]) -> DataFrame:
        from pyspark.sql import functions as F

        opts = self.options
        places = {p: s.index for s in splits for p in s.paths}
        frame = self.spark.read.parquet(*[spark_path(p) for s in splits for p in s.paths])
        if opts.bytes_column not in frame.columns:
            raise BackfillError(
                f"no column {opts.bytes_column!r} in {self.path} (columns: "
                f"{', '.join(frame.columns)}): pass --bytes-column"
            )
        columns = [F.col(opts.bytes_column).alias("image")]
        if opts.label_column:
            columns.append(F.col(opts.label_column).cast("string").alias("label"))
        columns += [F.col("_metadata.file_path"), F.col("_metadata.row_index")]
        max_bytes = self.settings.limits.max_bytes
        selected = frame.select(*columns)
        too_big = selected.where(F.length("image") > max_bytes).count()
        if too_big:
            log.warning("%d records over limits.max_bytes, not read", too_big)
        self.summary.refused += too_big
        topic, stamp, has_label = self.topic_label, self.stamp_ms, bool(opts.label_column)
        return selected.where(F.length("image") <= max_bytes).mapInPandas(
            lambda it: parquet_rows(it, places, topic, stamp, has_label), KAFKA_SCHEMA
        )

    def _read_archive(self, splits: Sequence[Split]) -> DataFrame:
        from pyspark.sql import functions as F

        places = {p: s.index for s in splits for p in s.paths}
        stream_root, backfill_root = archive_roots(self.settings, self.path)
        backfill_key = backfill_root.rstrip("/") + "/"
        by_root: dict[str, list[str]] = {stream_root: [], backfill_root: []}
        for split in splits:
            for p in split.paths:
                by_root[backfill_root if p.startswith(backfill_key) else stream_root].append(p)
        frames = []
        for root, paths in by_root.items():
            if not paths:
                continue
            frame = (
                self.spark.read.option("basePath", spark_path(root))
                .parquet(*[spark_path(p) for p in paths])
                .select(
                    *ARCHIVE_EVENT_COLUMNS,
                    "ingested_at",
                    F.col("_metadata.file_path").alias("file_path"),
                    F.col("_metadata.row_index").alias("row_index"),
                )
            )
            frames.append(frame)
        archived = frames[0]
        for frame in frames[1:]:
            archived = archived.unionByName(frame)
        if self.options.retag:
            ids = self.spark.read.parquet(spark_path(canonical(str(self.state.ids_dir))))
            archived = archived.join(ids, "id", "left_semi").dropDuplicates(["id"])
        topic = self.topic_label
        return archived.mapInPandas(lambda it: archive_event_rows(it, places, topic), KAFKA_SCHEMA)

    def _read_kafka(self, splits: Sequence[Split]) -> DataFrame:
        from imagetag.pipeline import kafka_options

        frames = []
        for split in splits:
            topic, part = split.paths[0], str(split.part)
            end = split.start + (split.count or 0)
            frames.append(
                self.spark.read.format("kafka")
                .options(**kafka_options(self.settings))
                .option("assign", json.dumps({topic: [split.part]}))
                .option("startingOffsets", json.dumps({topic: {part: split.start}}))
                .option("endingOffsets", json.dumps({topic: {part: end}}))
                .option("failOnDataLoss", "false")
                .option(
                    "kafka.max.partition.fetch.bytes", str(self.settings.limits.max_bytes + 2**20)
                )
                .load()
                .selectExpr(*KAFKA_COLUMNS)
            )
        rows = frames[0]
        for frame in frames[1:]:
            rows = rows.union(frame)
        return rows

    # -- re-tag ids --------------------------------------------------------------------------
    def collect_retag_ids(self) -> int:
        """Write the ids to re-tag under ``state/ids`` (once per state); returns how many."""
        from pyspark.sql import functions as F

        ids_dir = self.state.ids_dir
        target = spark_path(canonical(str(ids_dir)))
        if not (ids_dir / "_SUCCESS").exists():
            assert self.current is not None
            mode = self.options.retag
            parts: list[DataFrame] = []
            if mode in ("older", "all"):
                settings_json, current = self.settings.for_executors(), self.current
                older = self.spark.sparkContext.parallelize([0], 1).mapPartitions(
                    lambda _: ((i,) for i in solr_ids_partition(settings_json, current))
                )
                parts.append(self.spark.createDataFrame(older, "id string"))
            if mode in ("review", "all"):
                from imagetag.pipeline import kafka_options

                review = (
                    self.spark.read.format("kafka")
                    .options(**kafka_options(self.settings))
                    .option("subscribe", self.settings.kafka.topic_review)
                    # only committed transactions: never an aborted attempt (imagetag.sinks)
                    .option("kafka.isolation.level", "read_committed")
                    .option("startingOffsets", "earliest")
                    .option("endingOffsets", "latest")
                    .option("failOnDataLoss", "false")
                    .load()
                    .select("value")
                    .mapInPandas(review_ids_frame, "id string, model_version string")
                    .groupBy("id")
                    .agg(F.max((F.col("model_version") == self.current).cast("int")).alias("now"))
                    .where("now = 0")
                    .select("id")
                )
                parts.append(review)
            ids = parts[0]
            for part in parts[1:]:
                ids = ids.union(part)
            ids.distinct().write.mode("overwrite").parquet(target)
        return int(self.spark.read.parquet(target).count())

    # -- running -----------------------------------------------------------------------------
    def run(self) -> BackfillSummary:
        """Plan, then tag and write round by round; returns the summary."""
        conf = "spark.sql.execution.arrow.maxRecordsPerBatch"
        previous = self.spark.conf.get(conf, None)
        self.spark.conf.set(conf, str(self.options.batch_size))  # bounds tag_batch's memory
        try:
            with self.state.lock():
                return self._run()
        finally:
            if self.sink is not None:
                self.sink.close()
                self.sink = None
            if previous is None:
                self.spark.conf.unset(conf)
            else:
                self.spark.conf.set(conf, previous)

    def _run(self) -> BackfillSummary:
        from imagetag.pipeline import CurrentModel

        opts, summary = self.options, self.summary
        started = time.monotonic()
        if opts.retag:
            if self.state.complete_marker.exists():
                # A re-tag is a query ("what is not on CURRENT now"): once a run of it finished,
                # the next run asks again instead of finding everything done.
                log.info("the previous re-tag finished: collecting the ids again")
                self.state.reset_progress()
            summary.retag_ids = self.collect_retag_ids()
            log.info("%d documents to re-tag with %s", summary.retag_ids, self.current)
        splits = self.plan() if not opts.retag or summary.retag_ids else []
        done = self.state.done_keys()
        pending = [s for s in splits if s.key not in done]
        summary.splits_total = len(splits)
        summary.splits_skipped = len(splits) - len(pending)
        self.metrics.planned.set(len(splits))
        self.metrics.done.set(summary.splits_skipped)
        if opts.max_splits is not None:
            pending = pending[: opts.max_splits]
        per_round = opts.splits_per_round or max(1, self.spark.sparkContext.defaultParallelism)
        log.info(
            "backfill %s %s: %d splits, %d done before, %d to do now (state %s)",
            self.kind,
            self.path,
            len(splits),
            summary.splits_skipped,
            len(pending),
            self.state.folder,
        )
        models = CurrentModel(self.spark, self.settings) if pending else None
        bar = _progress_bar(len(splits), summary.splits_skipped, opts.progress)
        try:
            for round_splits, token in self._rounds(pending, per_round):
                assert models is not None
                model = models.get()
                if models.version and models.version not in summary.model_versions:
                    summary.model_versions.append(models.version)
                if models.version:
                    self.metrics.model_in_use(models.version)
                round_started = time.monotonic()
                written = self._run_round(round_splits, token, model)
                self._measure(written, time.monotonic() - round_started, len(round_splits))
                counts = written.counts
                for split in round_splits:
                    self.state.finish(split, counts)
                summary.splits_done += len(round_splits)
                for kind in ("tagged", "review", "dead", "quarantined"):
                    setattr(summary, kind, getattr(summary, kind) + counts.get(kind, 0))
                summary.images += sum(counts.get(k, 0) for k in ("tagged", "review", "dead"))
                summary.seconds = time.monotonic() - started
                bar.update(len(round_splits))
                bar.set_postfix_str(
                    f"{summary.images} img, {summary.images_per_s:.0f} img/s", refresh=True
                )
        finally:
            bar.close()
            summary.seconds = time.monotonic() - started
        if summary.splits_done:
            self._commit()
        if summary.splits_remaining == 0:
            self.state.complete_marker.touch()
        return summary

    def _rounds(
        self, pending: Sequence[Split], per_round: int
    ) -> Iterator[tuple[Sequence[Split], str]]:
        """The rounds to run, each with its sink token. Splits the ledger's last committed round
        wrote, but whose progress records a crash prevented, come first, as one round under
        that round's token: Solr gets the same documents again (idempotent) and the review /
        dead-letter records, already committed, are not appended again."""
        if pending and self.sink is None:
            from imagetag.sinks import TransactionalSink

            self.sink = TransactionalSink(self.settings, self.state.sink_id())
        last = self.sink.last_token() if self.sink is not None else None
        written = token_splits(last)
        recovered = [s for s in pending if s.key in written]
        if recovered:
            assert last is not None
            log.info("%d splits of the last round were written before the crash", len(recovered))
            yield recovered, last
        for round_splits in rounds([s for s in pending if s.key not in written], per_round):
            yield round_splits, round_token(round_splits)

    def _measure(self, written: Written, seconds: float, splits: int) -> None:
        self.metrics.batch_written(written)
        self.metrics.batch_seconds.observe(seconds)
        self.metrics.done.inc(splits)

    def _run_round(self, splits: Sequence[Split], token: str, model: SharedModel) -> Written:
        """Read, archive, tag and write one round; a round that fails deterministically is
        narrowed down and its poison records dead-lettered (``pipeline.tag_rows``)."""
        from pyspark import StorageLevel

        from imagetag.pipeline import tag_rows, write_outputs

        rows = self.read(splits)
        if self.archive_output:
            rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
            self._archive(rows, splits)
        try:
            started = time.monotonic()
            tagged = tag_rows(rows, model, self.settings, f"round {token[:60]}", upsert=True)
            try:
                assert self.sink is not None
                tag_s = time.monotonic() - started
                written = write_outputs(
                    self.settings, tagged, self.sink, token, appends=self.options.kafka_sinks
                )
                written.phases["tag"] = tag_s
                if self.options.retag:
                    settings_json = self.settings.for_executors()
                    tagged.out.where("kind != 'tagged' AND id != ''").select(
                        "id"
                    ).rdd.mapPartitions(solr_delete_partition(settings_json)).collect()
            finally:
                tagged.unpersist()
        finally:
            if self.archive_output:
                rows.unpersist()
        return written

    def _archive(self, rows: DataFrame, splits: Sequence[Split]) -> None:
        """Append the round's valid ImageEvents to ``archive_dir/_backfill`` (one partition per
        split, replaced when a split is re-done), in the stream's archive columns."""
        kafka = self.kind is SourceKind.KAFKA
        table = [(s.part if kafka else s.index, s.start, s.count, s.key) for s in splits]

        def split_of(partition: int, offset: int) -> str:
            for part, start, count, key in table:
                if part == partition and (not kafka or start <= offset < start + (count or 0)):
                    return key
            return "unknown"

        (
            rows.mapInPandas(lambda it: archive_split_rows(it, split_of), BACKFILL_ARCHIVE_SCHEMA)
            .write.mode("overwrite")
            .option("partitionOverwriteMode", "dynamic")
            .partitionBy("ingest_date", "split")
            .parquet(spark_path(archive_roots(self.settings)[1]))
        )

    def _commit(self) -> None:
        """One hard commit at the end, so that what the summary counts is searchable now."""
        from imagetag.solr import solr_client

        try:
            solr_client(self.settings).commit()
        except Exception as exc:  # commitWithin makes it visible shortly anyway
            log.warning(
                "final Solr commit failed (%s); documents become visible by commitWithin", exc
            )


def _progress_bar(total: int, initial: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="split",
        desc="backfill",
        file=sys.stderr,
        disable=None if enabled is None else not enabled,
        dynamic_ncols=True,
    )


def run_backfill(
    spark: SparkSession, settings: Settings, options: BackfillOptions
) -> BackfillSummary:
    """Plan, tag and write in ``spark``; returns the summary. Raises BackfillError for a source
    it cannot read or a state folder of another source, NoModelError when the model store has
    no CURRENT model, ServiceError when Kafka or Solr cannot be reached."""
    return Backfill(spark, settings, options).run()


def run(settings: Settings, options: BackfillOptions) -> BackfillSummary:
    """The backfill job in its own Spark session (stopped at the end): what ``imagetag
    backfill`` runs. Raises as ``run_backfill`` does."""
    from imagetag.spark import spark_session

    spark = spark_session(settings, "imagetag-backfill")
    metrics = BackfillMetrics()
    metrics.serve(settings.metrics.host, settings.metrics.backfill_port)
    try:
        return Backfill(spark, settings, options, metrics).run()
    finally:
        metrics.close()
        with contextlib.suppress(Exception):
            spark.stop()
