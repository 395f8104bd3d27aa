"""Spark plumbing shared by the stream and the backfill: tag a DataFrame, write the results.

``tag_frame`` runs ``tag_batch`` (through ``imagetag.records``) in ``mapInPandas`` with the
current model broadcast once per version; ``write_outputs`` sends the tagged rows to Solr
(stalling while Solr is down), the undecided ones to the review topic and the undecodable ones
to the dead-letter topic. Both the streaming job's ``foreachBatch`` and the backfill call these,
so the two write exactly the same things.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from imagetag.settings import Settings

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# What mapInPandas hands back to foreachBatch: one row per input record.
#   kind  = tagged | review | dead
#   id    = image id (or "" for records without one)
#   doc   = the Solr document as JSON (tagged)
#   key, value = the Kafka record to write (review: TagResult, dead: DeadLetter)
#   latency_ms = tagged_at - produced_at, for the progress line
OUTPUT_SCHEMA = "kind string, id string, doc string, key binary, value binary, latency_ms long"


def tag_partition(
    batches: Iterable[pd.DataFrame], model_bc: Broadcast[Any], settings_json: str
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: Kafka rows -> decoded events -> tag_batch -> uniform output rows."""
    from imagetag.records import tag_kafka_rows

    settings = Settings.model_validate_json(settings_json)
    model = model_bc.value  # unpickled once per Python worker per model version
    for rows in batches:
        yield tag_kafka_rows(rows, model, settings)


def tag_frame(rows: DataFrame, model_bc: Broadcast[Any], settings: Settings) -> DataFrame:
    """Kafka-shaped rows (key, value, topic, partition, offset, timestamp) -> output rows
    (OUTPUT_SCHEMA), persisted: the caller runs several actions on it and unpersists it."""
    settings_json = settings.model_dump_json()
    return rows.mapInPandas(
        lambda it: tag_partition(it, model_bc, settings_json), OUTPUT_SCHEMA
    ).persist()


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
        from imagetag.bundle import ModelStore

        store = ModelStore(self.settings.model_store, self.spark)
        version = store.current_version()
        if version is None:
            raise RuntimeError(
                f"no model in {self.settings.model_store}: run `imagetag train` first"
            )
        if version != self.version or self.broadcast is None:
            model = store.load(version)
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


def kafka_options(settings: Settings) -> dict[str, str]:
    return {f"kafka.{k}": v for k, v in settings.kafka.client_config().items()}


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


def write_outputs(
    spark: SparkSession,
    settings: Settings,
    out: DataFrame,
    markers: SinkMarkers | None = None,
    batch_id: int | None = None,
) -> dict[str, int]:
    """Solr first (stalls while Solr is unavailable), then the review and dead-letter topics
    (skipped when ``markers`` says this batch already wrote them). Returns counts by kind."""
    from imagetag.records import dead_letter_for_refused_doc

    counts = {row["kind"]: int(row["count"]) for row in out.groupBy("kind").count().collect()}
    settings_json = settings.model_dump_json()
    refused = (
        out.where("kind = 'tagged'")
        .select("doc")
        .rdd.mapPartitions(solr_partition(settings_json))
        .collect()
    )
    if markers is None or batch_id is None or not markers.done(batch_id):
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
        if markers is not None and batch_id is not None:
            markers.mark(batch_id)
    counts["tagged"] = counts.get("tagged", 0) - len(refused)
    counts["dead"] = counts.get("dead", 0) + len(refused)
    return counts
