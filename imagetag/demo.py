"""``make demo``: the whole story on the embedded stack, saying what it did at each step."""

from __future__ import annotations

import sys
import time

from imagetag.errors import ImagetagError
from imagetag.kafka_admin import ensure_topics
from imagetag.settings import Settings
from imagetag.solr_admin import SolrAdmin
from imagetag.stack import LocalStack


def step(message: str) -> float:
    print(f"==> {message}", flush=True)
    return time.monotonic()


def done(started: float, message: str) -> None:
    print(f"    {message} ({time.monotonic() - started:.1f}s)", flush=True)


def main() -> int:
    settings = Settings.load()
    try:
        started = step("starting the local stack (Kafka KRaft + SolrCloud)")
        for status in LocalStack(settings).up():
            print(f"    {status.line()}")
        done(started, "stack up")

        started = step("imagetag init: topics, configset, collection behind its alias")
        created = ensure_topics(settings)
        collection, _ = SolrAdmin(settings).ensure_collection()
        done(
            started,
            f"topics {', '.join(created)}; alias {settings.solr.collection} -> {collection}",
        )

        started = step("round trip through Kafka with Spark's Kafka sink and source")
        from imagetag.smoke import spark_kafka_round_trip
        from imagetag.spark import spark_session

        spark = spark_session(settings, "imagetag-demo")
        smoke_topic = f"{settings.kafka.topic_images}.smoke"
        ensure_topics(settings, [smoke_topic])
        pairs = spark_kafka_round_trip(spark, settings, smoke_topic, count=5)
        spark.stop()
        done(started, f"wrote 5 records to {smoke_topic} with Spark, read back {len(pairs)}")
        for key, value in pairs[:2]:
            print(f"    {key}: {value}")
    except ImagetagError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(
        "\nThe stack keeps running; stop it with `.venv/bin/imagetag stack down`.\n"
        f"Try: curl '{settings.solr.url}/{settings.solr.collection}/select?q=*:*'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
