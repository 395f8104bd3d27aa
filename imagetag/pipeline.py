"""Spark plumbing shared by the stream and the backfill: tag a DataFrame, write the results.

``tag_frame`` runs ``tag_batch`` (through ``imagetag.records``) in ``mapInPandas`` with the
current model broadcast once per version; ``write_outputs`` sends the tagged rows to Solr
(stalling while Solr is down), the undecided ones to the review topic and the undecodable ones
to the dead-letter topic. Both the streaming job's ``foreachBatch`` and the backfill call these,
so the two write exactly the same things.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from imagetag.settings import Settings
from imagetag.sinks import TransactionalSink

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


def kafka_options(settings: Settings) -> dict[str, str]:
    return {f"kafka.{k}": v for k, v in settings.kafka.client_config().items()}


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


def _bytes(value: bytes | bytearray | None) -> bytes | None:
    """Spark hands binary columns to Python as bytearray; Kafka clients want bytes."""
    return None if value is None else bytes(value)


# Review and dead-letter records of a batch up to this size are fetched in one Spark job; a larger
# batch (dead letters carry whole images) is streamed partition by partition.
COLLECT_MAX_BYTES = 64 * 2**20


@dataclass
class Written:
    """What a batch wrote: counts by kind (tagged, review, dead) and the tagged images'
    produce-to-tag latencies (ms)."""

    counts: dict[str, int]
    latencies_ms: list[int]


def write_outputs(
    settings: Settings,
    out: DataFrame,
    sink: TransactionalSink,
    token: str,
) -> Written:
    """Solr first (stalls while Solr is unavailable), then the review and dead-letter records in
    one Kafka transaction marked ``token`` (skipped when the sink's ledger says this batch's
    records were committed already, or when there is nothing to append).

    Three Spark jobs a batch: a small collect of (kind, latency, size) per row, which also
    fills the cache of ``out``; the Solr upserts; the review / dead-letter records."""
    from imagetag.records import dead_letter_for_refused_doc

    meta = out.selectExpr("kind", "latency_ms", "length(value) AS size").collect()
    counts: dict[str, int] = {}
    sink_bytes = 0
    for row in meta:
        counts[row.kind] = counts.get(row.kind, 0) + 1
        if row.kind != "tagged":
            sink_bytes += row.size or 0
    latencies = [int(r.latency_ms) for r in meta if r.kind == "tagged" and r.latency_ms is not None]

    settings_json = settings.model_dump_json()
    refused = []
    if counts.get("tagged"):
        refused = (
            out.where("kind = 'tagged'")
            .select("doc")
            .rdd.mapPartitions(solr_partition(settings_json))
            .collect()
        )
    appended = counts.get("review", 0) + counts.get("dead", 0)
    if (appended or refused) and not sink.done(token):
        topics = {"review": settings.kafka.topic_review, "dead": settings.kafka.topic_dlq}
        rows = out.where("kind IN ('review', 'dead')").select("kind", "key", "value")
        fetched = (
            rows.collect()
            if sink_bytes <= COLLECT_MAX_BYTES
            else rows.toLocalIterator(prefetchPartitions=True)
        )
        records = ((topics[row.kind], _bytes(row.key), bytes(row.value)) for row in fetched)
        letters = (
            (settings.kafka.topic_dlq, key, value)
            for key, value in (
                dead_letter_for_refused_doc(image_id, doc, reason, settings)
                for image_id, doc, reason in refused
            )
        )
        sink.write(token, itertools.chain(records, letters))
    elif appended or refused:
        log.info("batch %s: review and dead letters were committed before; not again", token)
    counts["tagged"] = counts.get("tagged", 0) - len(refused)
    counts["dead"] = counts.get("dead", 0) + len(refused)
    return Written(counts, latencies)
