"""The streaming job end to end on the real stack: Kafka in, Solr / review / DLQ out.

Each test runs `imagetag stream` as a real process against its own topics, collection,
checkpoints and archive, with a model trained once per session on a Fashion-MNIST subset.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from imagetag.avro import AvroDeserializer, AvroSerializer
from imagetag.bundle import ModelStore
from imagetag.settings import Settings
from imagetag.stack import KafkaService, SolrService
from imagetag.testing.samples import fashion_images
from imagetag.testing.services import solr_docs, topic_records
from tests.e2e.conftest import (
    StreamProcess,
    accounted,
    assert_exact,
    group_caught_up,
    metric,
    produce,
    raw_send,
    run_imagetag,
    sha256,
    solr_count,
    wait_until,
)


def corrupt_records(settings: Settings) -> list[tuple[bytes | None, bytes]]:
    """Four kinds of bad input a misbehaving producer could send."""
    serialize = AvroSerializer("ImageEvent")
    png, _ = fashion_images(1, start=9000)[0]

    def event(image: bytes, image_id: str | None = None) -> bytes:
        return serialize(
            {
                "id": image_id or sha256(image),
                "image": image,
                "content_type": "image/png",
                "source": "test://corrupt",
                "produced_at": int(time.time() * 1000),
            }
        )

    not_an_image = b"this is not an image at all"
    truncated = png[: len(png) // 2]
    return [
        (None, b"\x00not avro"),  # not Avro single-object encoding
        (sha256(not_an_image).encode(), event(not_an_image)),
        (sha256(truncated).encode(), event(truncated)),
        (b"x", event(png, image_id="0" * 64)),  # id is not the image's sha256
    ]


def consumer_groups_describe(stack_settings: Settings, settings: Settings) -> str:
    """``kafka-consumer-groups.sh --describe`` of the stream's group: Kafka's own tool class,
    run from the stack's Kafka jars."""
    kafka = KafkaService(stack_settings, stack_settings.stack.home.resolve())
    command = kafka.tool_command(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        "--bootstrap-server",
        settings.kafka.bootstrap_servers,
        "--describe",
        "--group",
        settings.kafka.stream_group,
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_every_image_is_accounted_for_exactly_once(
    stream_settings: Settings,
    stream_factory: Callable[[Settings], StreamProcess],
    settings: Settings,
) -> None:
    images = fashion_images(300)
    duplicates = images[:7]
    ids = produce(stream_settings, images + duplicates)
    bad = corrupt_records(stream_settings)
    raw_send(stream_settings, bad)

    stream = stream_factory(stream_settings).start()
    wait_until(accounted(stream_settings, len(ids), len(bad)), 300, "all records accounted for")
    time.sleep(3)  # a late duplicate would show up now
    assert_exact(stream_settings, ids, dead=len(bad))

    letters = [
        AvroDeserializer("DeadLetter")(v)
        for _, v in topic_records(stream_settings, stream_settings.kafka.topic_dlq)
    ]
    originals = {value for _, value in bad}
    assert {letter["value"] for letter in letters} == originals  # byte for byte
    reasons = {letter["reason"] for letter in letters}
    assert {"bad_magic", "id_mismatch"} <= reasons
    assert all(letter["detail"] or letter["reason"] for letter in letters)

    # The stream's metrics count what the sinks hold: tagged + review + dead = sent (less the
    # duplicates), dead letters by stage and reason as the letters say, a latency per tagged
    # image; and its consumer group, which Kafka's own tools read, caught up.
    review = len(topic_records(stream_settings, stream_settings.kafka.topic_review))
    scrape = stream.metrics()
    assert metric(scrape, "imagetag_stream_records_total", "outcome") == {
        "tagged": solr_count(stream_settings),
        "review": review,
        "dead": len(bad),
    }
    assert sum(metric(scrape, "imagetag_stream_records_total", "outcome").values()) == len(
        ids
    ) + len(bad)
    by_reason = Counter((letter["stage"], letter["reason"]) for letter in letters)
    dead = scrape["imagetag_stream_dead_letters_total"]
    assert {(labels["stage"], labels["reason"]): n for labels, n in dead} == by_reason
    tagged = metric(scrape, "imagetag_stream_records_total", "outcome")["tagged"]
    assert scrape["imagetag_stream_produce_to_tagged_seconds_count"][0][1] == tagged
    batches = scrape["imagetag_stream_batches_total"][0][1]
    phases = metric(scrape, "imagetag_stream_phase_duration_seconds_count", "phase")
    assert batches >= 1 and phases == {"tag": batches, "solr": batches, "kafka": batches}
    assert time.time() - scrape["imagetag_stream_last_batch_timestamp_seconds"][0][1] < 300
    assert list(metric(scrape, "imagetag_stream_model_info", "version").values()) == [1.0]
    wait_until(lambda: group_caught_up(stream_settings), 60, "the consumer group to catch up")
    wait_until(
        lambda: not any(
            metric(stream.metrics(), "imagetag_stream_input_lag_records", "partition").values()
        ),
        60,
        "the lag gauge to reach 0",
    )
    described = consumer_groups_describe(settings, stream_settings)
    rows = [
        line.split()
        for line in described.splitlines()
        if stream_settings.kafka.topic_images in line
    ]
    assert len(rows) == stream_settings.kafka.partitions, described
    assert all(row[5] == "0" for row in rows), described  # GROUP TOPIC PARTITION CURRENT END LAG
    assert stream.stop() == 0
    assert "batch " in stream.log() and " tagged=" in stream.log()

    # The archive query stored every valid image with its bytes (the backfill's corpus).
    import pandas as pd

    archive = pd.read_parquet(stream_settings.archive_dir)
    assert set(archive["id"]) >= ids


def test_sigkill_mid_run_loses_and_duplicates_nothing(
    stream_settings: Settings, stream_factory: Callable[[Settings], StreamProcess]
) -> None:
    ids = produce(stream_settings, fashion_images(600, start=1000))
    first = stream_factory(stream_settings).start()
    wait_until(lambda: solr_count(stream_settings) > 0, 180, "the first batches")
    first.kill()
    seen = solr_count(stream_settings)
    second = stream_factory(stream_settings).start()
    wait_until(accounted(stream_settings, len(ids), 0), 300, "all records accounted for")
    time.sleep(3)
    assert_exact(stream_settings, ids, dead=0)
    assert seen < len(ids), "the kill came too late to test anything"
    assert second.stop() == 0


def test_solr_outage_stalls_and_resumes(
    stream_settings: Settings,
    stream_factory: Callable[[Settings], StreamProcess],
    settings: Settings,
) -> None:
    stream = stream_factory(stream_settings).start()
    first = produce(stream_settings, fashion_images(100, start=2000))
    wait_until(accounted(stream_settings, len(first), 0), 180, "the first images")
    solr = SolrService(settings, settings.stack.home.resolve())
    solr.stop()
    try:
        second = produce(stream_settings, fashion_images(200, start=2100))
        time.sleep(30)
        assert stream.process is not None and stream.process.poll() is None, "stream died"
    finally:
        pid = solr.start()
        solr.wait_ready(pid, time.monotonic() + 120)
        wait_until(lambda: solr_count(stream_settings) >= 0, 120, "the collection to recover")
    wait_until(accounted(stream_settings, len(first | second), 0), 300, "the stalled images")
    assert_exact(stream_settings, first | second, dead=0)
    assert "solr at" in stream.log() and "retrying" in stream.log()
    scrape = stream.metrics()
    assert scrape["imagetag_stream_solr_retries_total"][0][1] >= 1
    assert scrape["imagetag_stream_solr_outage_seconds_total"][0][1] >= 10  # down for 30 s
    assert stream.stop() == 0


def test_promoted_model_is_used_without_restart(
    stream_settings: Settings, stream_factory: Callable[[Settings], StreamProcess], tmp_path: Path
) -> None:
    import shutil

    store = tmp_path / "models"
    shutil.copytree(stream_settings.model_store, store)
    own = stream_settings.derive(model_store=str(store))
    stream = stream_factory(own).start()
    before = produce(own, fashion_images(50, start=3000))
    wait_until(accounted(own, len(before), 0), 180, "images tagged by the first model")
    old_versions = {d["model_version"] for d in solr_docs(own)}
    assert len(old_versions) == 1

    # A new version, promoted as an operator promotes one: the same trained parts published
    # again (a bundle trained elsewhere), then `imagetag model promote`. Training itself is
    # tested by test_retrain and the cluster test; here it took 100 of the test's 150 s.
    models = ModelStore(str(store))
    bundle = models.load()
    version = models.allocate_version()
    models.write(replace(bundle, version=version, manifest={**bundle.manifest, "version": version}))
    promoted = run_imagetag(own, "model", "promote", version, timeout_s=120)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    after = produce(own, fashion_images(50, start=3100))
    wait_until(accounted(own, len(before | after), 0), 240, "images after the swap")
    docs = {d["id"]: d["model_version"] for d in solr_docs(own)}
    new_versions = {docs[i] for i in after if i in docs}
    assert new_versions and new_versions.isdisjoint(old_versions)
    assert "model swapped" in stream.log()
    assert stream.stop() == 0
