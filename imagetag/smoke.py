"""A round trip through Kafka and Spark's Kafka source and sink: proof the wiring works."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from imagetag.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_kafka_round_trip(
    spark: SparkSession, settings: Settings, topic: str, count: int = 10
) -> list[tuple[str, str]]:
    """Write ``count`` records to ``topic`` with Spark's Kafka sink, read the topic back with
    Spark's Kafka source (batch, earliest to latest) and return the (key, value) pairs of this
    run, in key order. The topic must exist."""
    run = uuid.uuid4().hex[:8]
    rows = [(f"{run}-{i:04d}", f"hello {i} from imagetag") for i in range(count)]
    options = {f"kafka.{k}": v for k, v in settings.kafka.java_client_config().items()}
    (
        spark.createDataFrame(rows, "key string, value string")
        .write.format("kafka")
        .options(**options)
        .option("topic", topic)
        .save()
    )
    read = (
        spark.read.format("kafka")
        .options(**options)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        .load()
        .selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value")
        .where(f"key LIKE '{run}-%'")
        .orderBy("key")
    )
    return [(row.key, row.value) for row in read.collect()]
