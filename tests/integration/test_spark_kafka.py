"""Spark's Kafka source and sink work with the jars fetched by `make setup` (no Ivy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagetag.settings import Settings
from imagetag.smoke import spark_kafka_round_trip

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_spark_writes_and_reads_a_topic(
    spark: SparkSession, settings: Settings, topic: str
) -> None:
    pairs = spark_kafka_round_trip(spark, settings, topic, count=5)
    assert len(pairs) == 5
    assert [value for _, value in pairs] == [f"hello {i} from imagetag" for i in range(5)]
    assert str(spark.conf.get("spark.jars")).count("spark-sql-kafka-0-10") == 1
