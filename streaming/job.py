"""The streaming tagging job: Kafka ``images`` -> tag_batch -> Solr / ``images.review`` / ``images.dlq``.

Two Structured Streaming queries read the ``images`` topic, each with its own checkpoint:

* **tag**, in ``foreachBatch``: runs ``tag_batch`` in ``mapInPandas`` with the current model
  (broadcast once per model version) and upserts the tagged images into Solr from the same
  tasks (the batch stalls while Solr is down); then, on the driver, leaves out the repeats of an
  image id passed within ``spark.dedupe_window`` (Kafka key = sha256 of the bytes;
  ``streaming.seen``: a repeat's upsert by id was harmless, its letters and counts are not) and
  writes the undecided images to ``images.review`` and the undecodable ones to ``images.dlq``
  in one Kafka transaction. Spark records the batch's offsets as done only after
  ``foreachBatch`` returned, i.e. after Solr and Kafka accepted everything.
* **archive**: appends every valid ImageEvent to Parquet under ``archive_dir``, partitioned by
  ingest date: the historical corpus the backfill reads.

``run()`` supervises both: a query that fails (Kafka or Solr gone for longer than the clients
wait) is restarted from its checkpoint with capped backoff, so an outage stalls the stream and
it resumes by itself. SIGTERM stops the queries between micro-batches, and the process within
``spark.stop_timeout_seconds`` whatever it is waiting for (an unfinished batch is re-run).

``imagetag stream`` runs it (``imagetag submit stream`` on a cluster: ``imagetag.cluster``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd

from imagetag.contracts import ARCHIVE_SCHEMA, KAFKA_COLUMNS
from imagetag.durations import parse_duration
from imagetag.hadoop import is_uri
from imagetag.kafka_admin import GroupOffsets
from imagetag.metrics import OUTCOMES, PHASES, StreamMetrics
from imagetag.pipeline import (
    CurrentModel,
    Written,
    coords,
    fault_summary,
    kafka_options,
    tag_rows,
    write_outputs,
)
from imagetag.records import REPLAY_HEADER
from imagetag.settings import Settings
from imagetag.sinks import TransactionalSink
from streaming.seen import Record, SeenKeys, files_at

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("imagetag.stream")

TAG_QUERY = "imagetag-tag"
ARCHIVE_QUERY = "imagetag-archive"


# -- executor side: pure functions over pandas batches -------------------------------------


def archive_partition(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body of the archive query: keep the records that are valid ImageEvents.

    The archive decodes with the tag query's own decoder (``records.decode_events``). Decoding
    in the JVM instead (spark-avro's ``from_avro`` per known writer schema, re-encoded with
    ``to_avro`` to find bytes after the record, ``sha2`` of the image against the id, the
    timestamp's range and valid UTF-8 in SQL) was built, tested record kind by record kind
    against this one, and measured: 8000 Fashion-MNIST records cost the JVM and the workers
    0.52-0.55 CPU s either way (0.07 ms a record, about 1% of what tagging one costs), and the
    stream's bench did not move beyond its noise. Not kept: one decoder is one set of rules."""
    from imagetag.records import archive_rows

    for rows in batches:
        yield archive_rows(rows)


# -- driver side -------------------------------------------------------------------------


class BatchStats:
    """What each micro-batch wrote: recorded by foreachBatch into the metrics (served on
    ``/metrics``) and kept until the ``ProgressReporter`` logs the batch's line."""

    def __init__(self, metrics: StreamMetrics | None = None) -> None:
        self.lock = threading.Lock()
        self.metrics = metrics or StreamMetrics()
        self.by_batch: dict[int, Written] = {}
        self.totals: dict[str, int] = {"tagged": 0, "review": 0, "dead": 0}

    def record(self, batch_id: int, written: Written) -> None:
        self.metrics.batch_written(written)
        with self.lock:
            self.by_batch[batch_id] = written
            for kind, n in written.counts.items():
                self.totals[kind] = self.totals.get(kind, 0) + n

    def pop(self, batch_id: int) -> Written | None:
        with self.lock:
            return self.by_batch.pop(batch_id, None)


# Spark's Kafka source reads a micro-batch's offset range, known to exist, with a consumer that
# seeks and polls; with the Java client's default fetch.max.wait.ms (500) each task waited up to
# half a second on the broker for an idle batch of one image (measured: a one-record read took
# 919 ms, 334 ms with 10). A fetch that can return nothing sooner costs one more request, never a
# record. ``kafka.client`` may set it otherwise.
SOURCE_FETCH = {"kafka.fetch.max.wait.ms": "10"}


def read_images(spark: SparkSession, settings: Settings) -> DataFrame:
    """The ``images`` topic as a stream of raw Kafka records."""
    return (
        spark.readStream.format("kafka")
        .options(**(SOURCE_FETCH | kafka_options(settings)))
        .option("subscribe", settings.kafka.topic_images)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(settings.spark.max_offsets_per_trigger))
        # Retention may delete data a stopped stream never read; say so and go on.
        .option("failOnDataLoss", "false")
        .option("kafka.max.partition.fetch.bytes", str(settings.limits.max_bytes + 2**20))
        .option("includeHeaders", "true")
        .load()
        .selectExpr(*KAFKA_COLUMNS, "headers")
    )


# The de-duplication's key: the Kafka key (the image id) and, for a dead letter sent again by
# `imagetag dlq replay`, the letter's own coordinates from its header (a replayed letter is not a
# duplicate of the original, but the same letter replayed twice is). No key: never a duplicate.
DEDUPE_KEY = (
    "IF(key IS NULL, NULL, concat_ws('|', hex(key), concat_ws(',', transform("
    f"filter(headers, h -> h.key = '{REPLAY_HEADER}'), h -> cast(h.value AS string)))))"
)
# Computed in the stream's own projection, planned once when the query starts: as a selectExpr
# in foreachBatch, the lambdas were parsed and analysed again for every micro-batch (30-70 ms).
DEDUPE_COLUMNS = (f"{DEDUPE_KEY} AS dedupe_key", "unix_millis(timestamp) AS ms")
# ... and passed through the tagging job to come back with each record's outcome.
DEDUPE_FIELDS = {"dedupe_key": "string", "ms": "long"}


class BatchWriter:
    """The foreachBatch function of the tag query.

    Review and dead-letter records go through a ``TransactionalSink`` named after the query's
    id, which Spark keeps in the checkpoint: the same id after a restart or a crash (so a
    zombie's transaction is fenced and a replayed batch is recognised), a new one when the
    checkpoint is new. ``bind`` is called once the query started and its id is known.
    """

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        stats: BatchStats,
        reporter: ProgressReporter | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.reporter = reporter
        self.models = CurrentModel(spark, settings)
        self.sink: TransactionalSink | None = None
        self.query: StreamingQuery | None = None
        self.bound = threading.Event()
        window_ms = int(parse_duration(settings.spark.dedupe_window) * 1000)
        self.seen = SeenKeys(files_at(f"{tag_checkpoint(settings)}/dedupe", spark), window_ms)

    def bind(self, query: StreamingQuery) -> None:
        self.query = query
        self.sink = TransactionalSink(self.settings, f"imagetag-stream-{query.id}")
        self.bound.set()

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        if not self.bound.wait(120) or self.sink is None:
            raise RuntimeError("the tag query never reported its id")
        started = time.monotonic()
        if self.reporter is not None and self.query is not None:
            self.reporter.poll(self.query)  # the previous batch's progress, Spark's by now
        model = self.models.get()
        if self.models.version is not None:
            self.stats.metrics.model_in_use(self.models.version)
        # One Spark job: every record is tagged, and its tagged document upserted (by id, so a
        # repeat's upsert replaces the document with the same tags), before the driver knows
        # which records are repeats; their review and dead letters and counts are left out.
        tagged = tag_rows(
            batch, model, self.settings, f"batch {batch_id}", upsert=True, keep=DEDUPE_FIELDS
        )
        try:
            tag_s = time.monotonic() - started
            records = [Record(m.dedupe_key, m.ms, *coords(m)) for m in tagged.meta]
            duplicates, new = self.seen.split(batch_id, records)
            tagged = tagged.ignoring((d.topic, d.partition, d.offset) for d in duplicates)
            written = write_outputs(self.settings, tagged, self.sink, str(batch_id))
            written.phases["tag"] = tag_s
        finally:
            tagged.unpersist()
        if duplicates:
            written.counts["duplicate"] = len(duplicates)
        self.seen.commit(batch_id, new)  # before Spark records the batch as done
        self.stats.record(batch_id, written)


def source_offsets(progress_json: str | None) -> dict[str, dict[int, int]]:
    """A Kafka source's offsets as a progress event writes them (``{"topic": {"0": 12}}``)."""
    if not progress_json:
        return {}
    try:
        parsed = json.loads(progress_json)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {
        str(topic): {int(p): int(o) for p, o in partitions.items()}
        for topic, partitions in parsed.items()
        if isinstance(partitions, dict)
    }


def batch_line(batch_id: int, rows: int, written: Written | None, ms: int, lag: int) -> str:
    """The one log line of a micro-batch: what it wrote, how long it and its phases took."""
    counts = written.counts if written else {}
    phases = written.phases if written else {}
    quarantined = counts.get("quarantined", 0)
    duplicates = counts.get("duplicate", 0)
    return (
        f"batch {batch_id}: input={rows} tagged={counts.get('tagged', 0)} "
        f"review={counts.get('review', 0)} dead={counts.get('dead', 0)}"
        + (f" (quarantined={quarantined})" if quarantined else "")
        + (f" duplicates={duplicates}" if duplicates else "")
        + f" duration={ms}ms ("
        + " ".join(f"{phase} {phases.get(phase, 0.0) * 1000:.0f}ms" for phase in PHASES)
        + f") lag={lag}"
    )


class ProgressReporter:
    """What the tag query's progress feeds: the batch's log line, the input lag gauge, and the
    consumer group's committed offsets (``kafka.stream_group``) for Kafka's own lag tools.

    ``poll`` reads the query's last progress (one JSON document from the JVM) and reports it
    once: at the start of each micro-batch (Spark records a batch's progress before it starts
    the next) and from the supervisor's loop every second (the last batch before the stream
    goes idle). It replaced a Python ``StreamingQueryListener``: PySpark converts each of that
    listener's events (both queries', idle ones too) field by field over py4j, which kept the
    JVM's listener thread busy (4-5 CPU s in 30 s at 55 images/s; on the bench at half load
    the JVM's CPU per image went from 10.3 to 9.0 ms without it).

    The group is written after Spark recorded the batch in its checkpoint (the progress
    follows the batch's commit), for visibility only: the checkpoint stays the source of
    truth on restart. A failed commit is logged and retried with the next progress."""

    def __init__(self, settings: Settings, stats: BatchStats) -> None:
        self.settings = settings
        self.stats = stats
        self.committed: dict[str, dict[int, int]] = {}
        self._group: GroupOffsets | None = None
        self._warned = False
        self._lock = threading.Lock()
        self._last: tuple[int, str] | None = None

    def poll(self, query: StreamingQuery) -> None:
        """Report the query's last progress if it was not reported yet; never raises."""
        with self._lock:
            try:
                progress = query.lastProgress
                if progress is None or (progress.batchId, progress.timestamp) == self._last:
                    return
                self._last = (progress.batchId, progress.timestamp)
                self.progress(progress)
            except Exception:  # a report is never worth failing a batch or the supervisor over
                log.exception("reporting the stream's progress failed")

    def progress(self, progress: Any) -> None:
        written = self.stats.pop(progress.batchId)
        ends: dict[str, dict[int, int]] = {}
        lag: dict[str, int] = {}
        for source in progress.sources:
            end = source_offsets(source.endOffset)
            latest = source_offsets(source.latestOffset)
            for topic, offsets in end.items():
                ends.setdefault(topic, {}).update(offsets)
                for partition, offset in offsets.items():
                    behind = latest.get(topic, {}).get(partition, offset) - offset
                    lag[str(partition)] = max(0, behind)
        self.stats.metrics.input_lag(lag)
        if progress.numInputRows:
            ms = int(progress.durationMs.get("triggerExecution", 0))
            self.stats.metrics.batch_seconds.observe(ms / 1000)
            for step, step_ms in progress.durationMs.items():
                if step != "triggerExecution":
                    self.stats.metrics.spark_steps.labels(step).observe(int(step_ms) / 1000)
            # Spark counts the records each job of the batch read (a quarantined batch's probes
            # read them again); every record has one outcome, so the outcomes count it once.
            rows = progress.numInputRows
            if written is not None:
                rows = sum(written.counts.get(k, 0) for k in (*OUTCOMES, "duplicate"))
            log.info(batch_line(progress.batchId, rows, written, ms, sum(lag.values())))
            log.debug("batch %d durations: %s", progress.batchId, dict(progress.durationMs))
        self.commit_group(ends)

    def commit_group(self, ends: dict[str, dict[int, int]]) -> None:
        from confluent_kafka import KafkaException

        for topic, offsets in ends.items():
            if self.committed.get(topic) == offsets:
                continue
            try:
                if self._group is None:
                    self._group = GroupOffsets(self.settings, self.settings.kafka.stream_group)
                self._group.commit(topic, offsets)
                self.committed[topic] = dict(offsets)
                self._warned = False
            except (KafkaException, RuntimeError) as exc:
                if not self._warned:  # once per failure spell, not once per batch
                    log.warning(
                        "could not commit the stream's offsets to group %s (lag tools will "
                        "lag behind; the checkpoint is unaffected): %s",
                        self.settings.kafka.stream_group,
                        exc,
                    )
                self._warned = True


CHECKPOINT_MANAGER_CONF = "spark.sql.streaming.checkpointFileManagerClass"


def local_checkpoint_manager(settings: Settings) -> str | None:
    """The checkpoint file manager for checkpoints and an archive on the local file system.

    Spark's default, FileContext's, forks a process per ``readlink`` on the local file system
    (Hadoop without its native library resolves links that way, and each rename resolves both
    of its paths): about 20 processes a micro-batch, for offset and commit logs of a few
    hundred bytes (measured, one image a batch: walCommit 136 ms and commitOffsets 162 ms;
    with this manager 30 and 43 ms). Its rename is ``File.renameTo``, atomic on one local file
    system; it checks that the target is absent before renaming, which only two writers of
    the same checkpoint at once could race, and one checkpoint belongs to one stream.
    ``hdfs://`` or ``s3a://`` paths keep Spark's default (None)."""
    if is_uri(settings.checkpoint_dir) or is_uri(settings.archive_dir):
        return None
    return "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager"


def tag_checkpoint(settings: Settings) -> str:
    return f"{settings.checkpoint_dir.rstrip('/')}/tag"


def start_queries(
    spark: SparkSession, settings: Settings, writer: BatchWriter
) -> list[StreamingQuery]:
    """Start the tag and archive queries; returns them running."""
    checkpoint = settings.checkpoint_dir.rstrip("/")
    trigger = f"{settings.spark.trigger_seconds} seconds"
    images = read_images(spark, settings)
    tag_query = (
        images.selectExpr(*KAFKA_COLUMNS, *DEDUPE_COLUMNS)
        .writeStream.queryName(TAG_QUERY)
        .foreachBatch(writer)
        .option("checkpointLocation", tag_checkpoint(settings))
        .trigger(processingTime=trigger)
        .start()
    )
    writer.bind(tag_query)
    archive_query = (
        images.drop("headers")
        .mapInPandas(archive_partition, ARCHIVE_SCHEMA)
        .writeStream.queryName(ARCHIVE_QUERY)
        .format("parquet")
        .option("path", settings.archive_dir)
        .option("checkpointLocation", f"{checkpoint}/archive")
        .partitionBy("ingest_date")
        .trigger(processingTime=f"{max(settings.spark.trigger_seconds, 10.0)} seconds")
        .start()
    )
    for query in (tag_query, archive_query):
        log.info("query %s started (id %s)", query.name, query.id)
    return [tag_query, archive_query]


class Stopper:
    """SIGTERM / SIGINT: finish the running micro-batch, then stop; within a bounded time.

    The first signal asks the queries to stop after their running micro-batch and starts a
    deadline: if the process is still alive ``timeout_s`` later (a batch stuck on a service
    that went away), it exits at once, as a kill would. That is safe by design: offsets and
    sink ledger entries are written only for finished batches, so the unfinished one is simply
    re-run by the next start. A second signal exits at once too.
    """

    def __init__(self, timeout_s: float) -> None:
        self.event = threading.Event()
        self.timeout_s = timeout_s

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.event.is_set():
            self._exit(f"signal {signum} again")
        self.event.set()
        timer = threading.Timer(self.timeout_s, self._exit, [f"{self.timeout_s:.0f}s passed"])
        timer.daemon = True
        timer.start()

    @staticmethod
    def _exit(why: str) -> None:
        log.error("stopping now (%s): the unfinished micro-batch is re-run by the next start", why)
        logging.shutdown()
        os._exit(EXIT_STOPPED_HARD)


# Exit status when the stop deadline passed (128 + SIGTERM, what a shell reports for a kill).
EXIT_STOPPED_HARD = 143


def _stop_gracefully(queries: list[StreamingQuery], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for query in queries:
        while (
            query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        query.stop()


def run(settings: Settings, *, max_restarts: int | None = None) -> int:
    """Run the stream until SIGTERM; restart failed queries from their checkpoints."""
    from imagetag.spark import spark_session

    spark = spark_session(settings, "imagetag-stream", c1_only=True)
    # One micro-batch per arriving batch of images, none without data (the queries keep no
    # state that a batch without data would move on).
    if "spark.sql.streaming.noDataMicroBatches.enabled" not in settings.spark.conf:
        spark.conf.set("spark.sql.streaming.noDataMicroBatches.enabled", "false")
    manager = local_checkpoint_manager(settings)
    if manager and CHECKPOINT_MANAGER_CONF not in settings.spark.conf:
        spark.conf.set(CHECKPOINT_MANAGER_CONF, manager)
    stopper = Stopper(settings.spark.stop_timeout_seconds)
    stopper.install()
    stats = BatchStats()
    stats.metrics.serve(settings.metrics.host, settings.metrics.stream_port)
    reporter = ProgressReporter(settings, stats)
    backoff = 1.0
    restarts = 0
    while not stopper.event.is_set():
        queries: list[StreamingQuery] = []
        writer = BatchWriter(spark, settings, stats, reporter)
        try:
            queries = start_queries(spark, settings, writer)
            log.info(
                "streaming %s -> solr %s/%s, review %s, dlq %s; archive %s",
                settings.kafka.topic_images,
                settings.solr.url,
                settings.solr.collection,
                settings.kafka.topic_review,
                settings.kafka.topic_dlq,
                settings.archive_dir,
            )
            while not stopper.event.is_set():
                for query in queries:
                    error = query.exception()
                    if error is not None:
                        raise RuntimeError(fault_summary(str(error)))
                    if not query.isActive:
                        raise RuntimeError(f"query {query.name} stopped")
                reporter.poll(queries[0])
                stopper.event.wait(1.0)
                backoff = 1.0
            _stop_gracefully(queries, settings.spark.stop_timeout_seconds / 2)
        except Exception as exc:  # the supervisor's job: log, back off, restart
            for query in queries:
                try:
                    query.stop()
                except Exception:  # already dead
                    log.debug("stopping %s failed", query.name, exc_info=True)
            restarts += 1
            stats.metrics.restarts.inc()
            if max_restarts is not None and restarts > max_restarts:
                log.error("stream failed (%s); giving up after %d restarts", exc, max_restarts)
                stats.metrics.close()
                return 1
            log.error("stream failed (%s); restarting from the checkpoint in %.0fs", exc, backoff)
            stopper.event.wait(backoff)
            backoff = min(backoff * 2, 30.0)
        finally:
            writer.close()
    log.info("stream stopped; totals %s", stats.totals)
    stats.metrics.close()
    spark.stop()
    return 0
