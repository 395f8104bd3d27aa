"""The streaming tagging job: Kafka ``images`` -> tag_batch -> Solr / ``images.review`` / ``images.dlq``.

Two Structured Streaming queries read the ``images`` topic, each with its own checkpoint:

* **tag**: de-duplicates by image id within ``spark.dedupe_window`` (Kafka key = sha256 of the
  bytes), then in ``foreachBatch``: runs ``tag_batch`` in ``mapInPandas`` with the current model
  (broadcast once per model version), upserts the tagged images into Solr (the batch stalls while
  Solr is down), writes the undecided ones to ``images.review`` and the undecodable ones to
  ``images.dlq``. Spark records the batch's offsets as done only after ``foreachBatch``
  returned, i.e. after Solr and Kafka accepted everything.
* **archive**: appends every valid ImageEvent to Parquet under ``archive_dir``, partitioned by
  ingest date: the historical corpus the backfill reads.

``run()`` supervises both: a query that fails (Kafka or Solr gone for longer than the clients
wait) is restarted from its checkpoint with capped backoff, so an outage stalls the stream and
it resumes by itself. SIGTERM stops the queries between micro-batches, and the process within
``spark.stop_timeout_seconds`` whatever it is waiting for (an unfinished batch is re-run).

``imagetag stream`` runs it (``imagetag submit stream`` on a cluster: ``imagetag.cluster``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd

from imagetag.contracts import ARCHIVE_SCHEMA, KAFKA_COLUMNS
from imagetag.pipeline import CurrentModel, fault_summary, kafka_options, tag_rows, write_outputs
from imagetag.records import REPLAY_HEADER
from imagetag.settings import Settings
from imagetag.sinks import TransactionalSink

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("imagetag.stream")

TAG_QUERY = "imagetag-tag"
ARCHIVE_QUERY = "imagetag-archive"


# -- executor side: pure functions over pandas batches -------------------------------------


def archive_partition(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body of the archive query: keep the records that are valid ImageEvents."""
    from imagetag.records import archive_rows

    for rows in batches:
        yield archive_rows(rows)


# -- driver side -------------------------------------------------------------------------


class BatchStats:
    """Counts per micro-batch, written by foreachBatch and logged by the progress listener."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_batch: dict[int, dict[str, int]] = {}
        self.totals: dict[str, int] = {"tagged": 0, "review": 0, "dead": 0}
        self.latencies_ms: list[int] = []

    def record(self, batch_id: int, counts: dict[str, int], latencies: list[int]) -> None:
        with self.lock:
            self.by_batch[batch_id] = counts
            for kind, n in counts.items():
                self.totals[kind] = self.totals.get(kind, 0) + n
            self.latencies_ms.extend(latencies)
            del self.latencies_ms[:-100_000]

    def pop(self, batch_id: int) -> dict[str, int]:
        with self.lock:
            return self.by_batch.pop(batch_id, {})


def read_images(spark: SparkSession, settings: Settings) -> DataFrame:
    """The ``images`` topic as a stream of raw Kafka records."""
    return (
        spark.readStream.format("kafka")
        .options(**kafka_options(settings))
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


class BatchWriter:
    """The foreachBatch function of the tag query.

    Review and dead-letter records go through a ``TransactionalSink`` named after the query's
    id, which Spark keeps in the checkpoint: the same id after a restart or a crash (so a
    zombie's transaction is fenced and a replayed batch is recognised), a new one when the
    checkpoint is new. ``bind`` is called once the query started and its id is known.
    """

    def __init__(self, spark: SparkSession, settings: Settings, stats: BatchStats) -> None:
        self.settings = settings
        self.stats = stats
        self.models = CurrentModel(spark, settings)
        self.sink: TransactionalSink | None = None
        self.bound = threading.Event()

    def bind(self, query_id: str) -> None:
        self.sink = TransactionalSink(self.settings, f"imagetag-stream-{query_id}")
        self.bound.set()

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        if not self.bound.wait(120) or self.sink is None:
            raise RuntimeError("the tag query never reported its id")
        tagged = tag_rows(batch, self.models.get(), self.settings, f"batch {batch_id}")
        try:
            written = write_outputs(self.settings, tagged, self.sink, str(batch_id))
            self.stats.record(batch_id, written.counts, written.latencies_ms)
        finally:
            tagged.unpersist()


def progress_listener(stats: BatchStats) -> Any:
    """One log line per micro-batch of the tag query."""
    from pyspark.sql.streaming import StreamingQueryListener

    class ProgressLog(StreamingQueryListener):
        def onQueryStarted(self, event: Any) -> None:
            log.info("query %s started (id %s)", event.name, event.id)

        def onQueryProgress(self, event: Any) -> None:
            progress = event.progress
            if progress.name != TAG_QUERY or progress.numInputRows == 0:
                return
            counts = stats.pop(progress.batchId)
            lag = 0
            for source in progress.sources:
                metrics = source.metrics or {}
                lag = max(lag, int(float(metrics.get("maxOffsetsBehindLatest", 0) or 0)))
            duration = progress.durationMs.get("triggerExecution", 0)
            log.debug("batch %d durations: %s", progress.batchId, dict(progress.durationMs))
            quarantined = counts.get("quarantined", 0)
            log.info(
                "batch %d: input=%d tagged=%d review=%d dead=%d%s duration=%dms lag=%d",
                progress.batchId,
                progress.numInputRows,
                counts.get("tagged", 0),
                counts.get("review", 0),
                counts.get("dead", 0),
                f" (quarantined={quarantined})" if quarantined else "",
                duration,
                lag,
            )

        def onQueryIdle(self, event: Any) -> None:
            del event

        def onQueryTerminated(self, event: Any) -> None:
            if event.exception:
                log.error("query %s failed: %s", event.id, fault_summary(str(event.exception)))

    return ProgressLog()


def start_queries(
    spark: SparkSession, settings: Settings, writer: BatchWriter
) -> list[StreamingQuery]:
    """Start the tag and archive queries; returns them running."""
    from pyspark.sql import functions as F

    checkpoint = settings.checkpoint_dir.rstrip("/")
    trigger = f"{settings.spark.trigger_seconds} seconds"
    images = read_images(spark, settings)

    # Duplicates of an image (same key = same bytes) within the window are tagged once.
    # Records without a key are kept apart by their coordinates. A dead letter sent again by
    # `imagetag dlq replay` carries the letter's own coordinates in a header: it is not a
    # duplicate of the original, but the same letter replayed twice is.
    dedupe_key = F.concat_ws(
        "|",
        F.coalesce(
            F.hex("key"), F.concat_ws(":", "topic", F.col("partition").cast("string"), "offset")
        ),
        F.expr(
            f"concat_ws(',', transform(filter(headers, h -> h.key = '{REPLAY_HEADER}'),"
            " h -> cast(h.value AS string)))"
        ),
    )
    deduped = (
        images.withColumn("dedupe_key", dedupe_key)
        .withWatermark("timestamp", settings.spark.dedupe_window)
        .dropDuplicatesWithinWatermark(["dedupe_key"])
        .drop("dedupe_key", "headers")
    )
    tag_query = (
        deduped.writeStream.queryName(TAG_QUERY)
        .foreachBatch(writer)
        .option("checkpointLocation", f"{checkpoint}/tag")
        .trigger(processingTime=trigger)
        .start()
    )
    writer.bind(str(tag_query.id))
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

    spark = spark_session(settings, "imagetag-stream")
    stopper = Stopper(settings.spark.stop_timeout_seconds)
    stopper.install()
    stats = BatchStats()
    spark.streams.addListener(progress_listener(stats))
    backoff = 1.0
    restarts = 0
    while not stopper.event.is_set():
        queries: list[StreamingQuery] = []
        writer = BatchWriter(spark, settings, stats)
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
            if max_restarts is not None and restarts > max_restarts:
                log.error("stream failed (%s); giving up after %d restarts", exc, max_restarts)
                return 1
            log.error("stream failed (%s); restarting from the checkpoint in %.0fs", exc, backoff)
            stopper.event.wait(backoff)
            backoff = min(backoff * 2, 30.0)
        finally:
            writer.close()
    log.info("stream stopped; totals %s", stats.totals)
    spark.stop()
    return 0
