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
it resumes by itself. SIGTERM stops the queries between micro-batches.

This module is also a ``spark-submit`` entry point: ``spark-submit streaming/job.py``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from imagetag.settings import Settings

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("imagetag.stream")

TAG_QUERY = "imagetag-tag"
ARCHIVE_QUERY = "imagetag-archive"

# What mapInPandas hands back to foreachBatch: one row per input record.
#   kind  = tagged | review | dead
#   id    = image id (or "" for records without one)
#   doc   = the Solr document as JSON (tagged)
#   key, value = the Kafka record to write (review: TagResult, dead: DeadLetter)
#   latency_ms = tagged_at - produced_at, for the progress line
OUTPUT_SCHEMA = "kind string, id string, doc string, key binary, value binary, latency_ms long"

ARCHIVE_SCHEMA = (
    "id string, image binary, content_type string, source string, produced_at timestamp, "
    "label string, metadata map<string,string>, kafka_partition int, kafka_offset long, "
    "ingested_at timestamp, ingest_date string"
)


# -- executor side: pure functions over pandas batches -------------------------------------


def tag_partition(
    batches: Iterable[pd.DataFrame], model_bc: Broadcast[Any], settings_json: str
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: Kafka rows -> decoded events -> tag_batch -> uniform output rows."""
    from streaming.records import tag_kafka_rows

    settings = Settings.model_validate_json(settings_json)
    model = model_bc.value  # unpickled once per Python worker per model version
    for rows in batches:
        yield tag_kafka_rows(rows, model, settings)


def archive_partition(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body of the archive query: keep the records that are valid ImageEvents."""
    from streaming.records import archive_rows

    for rows in batches:
        yield archive_rows(rows)


# -- driver side -------------------------------------------------------------------------


class CurrentModel:
    """The model bundle named by the store's CURRENT pointer, broadcast once per version.

    ``get()`` is called at every micro-batch; it reads only the pointer unless the version
    changed, in which case the new bundle is loaded and broadcast and the old broadcast freed.
    """

    def __init__(self, spark: SparkSession, settings: Settings) -> None:
        self.spark = spark
        self.settings = settings
        self.version: str | None = None
        self.broadcast: Broadcast[Any] | None = None

    def get(self) -> Broadcast[Any]:
        from imagetag.bundle import current_version, load_bundle

        version = current_version(self.settings.model_store)
        if version is None:
            raise RuntimeError(
                f"no model in {self.settings.model_store}: run `imagetag train` first"
            )
        if version != self.version or self.broadcast is None:
            model = load_bundle(self.settings.model_store, version)
            old = self.broadcast
            self.broadcast = self.spark.sparkContext.broadcast(model)
            if old is not None:
                old.unpersist()
            if self.version is not None:
                log.info("model swapped: %s -> %s", self.version, version)
            else:
                log.info("model %s loaded", version)
            self.version = version
        return self.broadcast


class SinkMarkers:
    """Which micro-batches already wrote their review / dead-letter records.

    Solr upserts are idempotent by id; Kafka appends are not. When Spark re-runs a batch after a
    crash (its offsets were not committed), the Kafka writes are skipped if this batch's marker
    exists, so a replay does not append the same review or dead-letter records twice.
    """

    def __init__(self, checkpoint: str) -> None:
        self.folder = Path(checkpoint) / "sinks"
        self.folder.mkdir(parents=True, exist_ok=True)

    def done(self, batch_id: int) -> bool:
        return (self.folder / str(batch_id)).exists()

    def mark(self, batch_id: int) -> None:
        (self.folder / str(batch_id)).touch()
        for old in self.folder.iterdir():  # keep the last 100
            if old.name.isdigit() and int(old.name) < batch_id - 100:
                old.unlink(missing_ok=True)


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


def kafka_options(settings: Settings) -> dict[str, str]:
    return {f"kafka.{k}": v for k, v in settings.kafka.client_config().items()}


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
        .load()
        .selectExpr("key", "value", "topic", "partition", "offset", "timestamp")
    )


def write_kafka(df: DataFrame, settings: Settings, topic: str) -> None:
    (
        df.select("key", "value")
        .write.format("kafka")
        .options(**kafka_options(settings))
        .option("kafka.enable.idempotence", "true")
        .option("kafka.acks", "all")
        .option("kafka.compression.type", "zstd")
        .option("kafka.max.request.size", str(settings.limits.max_bytes + 2**20))
        .option("topic", topic)
        .save()
    )


def solr_partition(
    settings_json: str,
) -> Callable[[Iterable[Any]], Iterator[tuple[str, str, str]]]:
    """mapPartitions body: upsert one partition's documents; yield the refused ones."""

    def write(rows: Iterable[Any]) -> Iterator[tuple[str, str, str]]:
        from imagetag.solr import SolrWriter

        settings = Settings.model_validate_json(settings_json)
        docs = [json.loads(row.doc) for row in rows]
        if not docs:
            return
        result = SolrWriter(settings).write(docs)
        for doc, reason in result.rejected:
            yield doc["id"], json.dumps(doc), reason

    return write


def make_batch_writer(
    spark: SparkSession, settings: Settings, stats: BatchStats, checkpoint: str
) -> Callable[[DataFrame, int], None]:
    """The foreachBatch function of the tag query."""
    from streaming.records import dead_letter_for_refused_doc

    models = CurrentModel(spark, settings)
    markers = SinkMarkers(checkpoint)
    settings_json = settings.model_dump_json()

    def process(batch: DataFrame, batch_id: int) -> None:
        model_bc = models.get()
        out = batch.mapInPandas(
            lambda it: tag_partition(it, model_bc, settings_json), OUTPUT_SCHEMA
        ).persist()
        try:
            counts = {
                row["kind"]: int(row["count"]) for row in out.groupBy("kind").count().collect()
            }
            # 1. Solr first: this stalls (retrying) while Solr is unavailable.
            refused = (
                out.where("kind = 'tagged'")
                .select("doc")
                .rdd.mapPartitions(solr_partition(settings_json))
                .collect()
            )
            # 2. Then the Kafka side topics, once per batch even if the batch is replayed.
            if not markers.done(batch_id):
                if counts.get("review"):
                    write_kafka(out.where("kind = 'review'"), settings, settings.kafka.topic_review)
                if counts.get("dead"):
                    write_kafka(out.where("kind = 'dead'"), settings, settings.kafka.topic_dlq)
                if refused:
                    letters = [
                        dead_letter_for_refused_doc(image_id, doc, reason, settings)
                        for image_id, doc, reason in refused
                    ]
                    write_kafka(
                        spark.createDataFrame(letters, "key binary, value binary"),
                        settings,
                        settings.kafka.topic_dlq,
                    )
                markers.mark(batch_id)
            counts["tagged"] = counts.get("tagged", 0) - len(refused)
            counts["dead"] = counts.get("dead", 0) + len(refused)
            latencies = [
                int(r[0])
                for r in out.where("kind = 'tagged' AND latency_ms IS NOT NULL")
                .select("latency_ms")
                .collect()
            ]
            stats.record(batch_id, counts, latencies)
        finally:
            out.unpersist()

    return process


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
            log.info(
                "batch %d: input=%d tagged=%d review=%d dead=%d duration=%dms lag=%d",
                progress.batchId,
                progress.numInputRows,
                counts.get("tagged", 0),
                counts.get("review", 0),
                counts.get("dead", 0),
                duration,
                lag,
            )

        def onQueryIdle(self, event: Any) -> None:
            del event

        def onQueryTerminated(self, event: Any) -> None:
            if event.exception:
                log.error("query %s failed: %s", event.id, str(event.exception).splitlines()[0])

    return ProgressLog()


def start_queries(
    spark: SparkSession, settings: Settings, stats: BatchStats
) -> list[StreamingQuery]:
    """Start the tag and archive queries; returns them running."""
    from pyspark.sql import functions as F

    checkpoint = settings.checkpoint_dir.rstrip("/")
    trigger = f"{settings.spark.trigger_seconds} seconds"
    images = read_images(spark, settings)

    # Duplicates of an image (same key = same bytes) within the window are tagged once.
    # Records without a key are kept apart by their coordinates.
    dedupe_key = F.coalesce(
        F.hex("key"), F.concat_ws(":", "topic", F.col("partition").cast("string"), "offset")
    )
    deduped = (
        images.withColumn("dedupe_key", dedupe_key)
        .withWatermark("timestamp", settings.spark.dedupe_window)
        .dropDuplicatesWithinWatermark(["dedupe_key"])
        .drop("dedupe_key")
    )
    tag_query = (
        deduped.writeStream.queryName(TAG_QUERY)
        .foreachBatch(make_batch_writer(spark, settings, stats, f"{checkpoint}/tag"))
        .option("checkpointLocation", f"{checkpoint}/tag")
        .trigger(processingTime=trigger)
        .start()
    )
    archive_query = (
        images.mapInPandas(archive_partition, ARCHIVE_SCHEMA)
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
    """SIGTERM / SIGINT: finish the running micro-batch, then stop."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.event.set())


def _stop_gracefully(queries: list[StreamingQuery], timeout_s: float = 60.0) -> None:
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

    stopper = Stopper()
    stopper.install()
    spark = spark_session(settings, "imagetag-stream")
    stats = BatchStats()
    spark.streams.addListener(progress_listener(stats))
    backoff = 1.0
    restarts = 0
    while not stopper.event.is_set():
        queries: list[StreamingQuery] = []
        try:
            queries = start_queries(spark, settings, stats)
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
                        raise RuntimeError(str(error).splitlines()[0])
                    if not query.isActive:
                        raise RuntimeError(f"query {query.name} stopped")
                stopper.event.wait(1.0)
                backoff = 1.0
            _stop_gracefully(queries)
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
    log.info("stream stopped; totals %s", stats.totals)
    spark.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry point: settings from the environment / imagetag.yaml."""
    del argv
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(Settings.load())


if __name__ == "__main__":
    sys.exit(main())
