"""``imagetag init``: create the Kafka topics and the Solr collection behind its alias.

Idempotent: run it as often as you like; it creates what is missing and updates the rest
(topic size limits, the configset).
"""

from __future__ import annotations

import argparse

from imagetag.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-solr", action="store_true", help="only create the Kafka topics")
    parser.add_argument("--skip-kafka", action="store_true", help="only set up Solr")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from imagetag.kafka_admin import ensure_topics, topic_layout
    from imagetag.solr_admin import SolrAdmin

    if not args.skip_kafka:
        created = ensure_topics(settings)
        for topic, new in created.items():
            state = "created" if new else "exists "
            partitions, config = topic_layout(settings, topic)
            options = ", ".join(f"{k}={v}" for k, v in config.items())
            print(f"kafka  {state} topic {topic} (partitions={partitions}, {options})")
    if not args.skip_solr:
        collection, new = SolrAdmin(settings).ensure_collection()
        state = "created" if new else "exists "
        print(
            f"solr   {state} collection {collection} behind alias {settings.solr.collection} "
            f"(configset {settings.solr.configset})"
        )
    return 0
