"""Backfill on the real stack: every source read into Kafka-shaped rows by Spark, and a folder
of 2,000 images tagged into Solr / review exactly once, also across an interruption."""

from __future__ import annotations

import hashlib
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from batch.backfill import Backfill, BackfillOptions, BackfillSummary, run_backfill
from imagetag.datasets import write_sequence_file, write_tiny_images
from imagetag.records import decode_events
from imagetag.settings import Settings
from imagetag.testing.services import review_ids, solr_ids, topic_values
from tests.e2e.conftest import settings_env
from tests.integration.backfill_helpers import ROOT, hand_model, images, png, write_folder

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.integration


@pytest.fixture
def backfill_settings(isolated_settings: Settings, tmp_path: Path) -> Settings:
    return isolated_settings.derive(
        checkpoint_dir=str(tmp_path / "checkpoints"), archive_dir=str(tmp_path / "archive")
    )


# -- reading: every source becomes ImageEvents keyed by their content hash ------------------


def _read_all(
    spark: SparkSession, settings: Settings, source: str, **options: object
) -> pd.DataFrame:
    backfill = Backfill(spark, settings, BackfillOptions(source=source, **options))  # type: ignore[arg-type]
    splits = backfill.plan()
    if not splits:
        return pd.DataFrame(columns=["id", "image", "partition", "label", "source"])
    rows = backfill.read(splits).toPandas()
    events, dead = decode_events(rows)
    assert dead == []
    assert all(events["id"] == [hashlib.sha256(i).hexdigest() for i in events["image"]])
    return events


def test_sources_read_into_image_events(
    spark: SparkSession, backfill_settings: Settings, tmp_path: Path, topic: str
) -> None:
    pngs = [png(i) for i in images(40, seed=3)]
    ids = {hashlib.sha256(i).hexdigest() for i in pngs}

    tiny = tmp_path / "tiny.bin"
    write_tiny_images(tiny, [i[:, :, ::-1] for i in images(23, seed=3)])
    events = _read_all(spark, backfill_settings, str(tiny), split_size=10)
    assert len(events) == 23 and sorted(events["partition"].unique()) == [0, 1, 2]
    assert events["source"].iloc[0].endswith("tiny.bin#0")

    cifar = tmp_path / "cifar"
    cifar.mkdir()
    data = np.stack([i[:, :, ::-1].transpose(2, 0, 1).reshape(-1) for i in images(12, seed=4)])
    with open(cifar / "data_batch_1", "wb") as f:
        pickle.dump({b"data": data, b"labels": list(range(12)), b"filenames": [b"x"] * 12}, f)
    with open(cifar / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(12)]}, f)
    events = _read_all(spark, backfill_settings, str(cifar), split_size=5)
    assert len(events) == 12 and set(events["label"]) == {f"c{i}" for i in range(12)}

    seq = tmp_path / "corpus.seq"
    write_sequence_file(seq, [(f"n{i}.png", b) for i, b in enumerate(pngs)], compression="block")
    events = _read_all(spark, backfill_settings, str(seq))
    assert set(events["id"]) == ids

    table = tmp_path / "table"
    table.mkdir()
    pd.DataFrame({"bytes": pngs[:20], "y": ["a"] * 20}).to_parquet(table / "a.parquet")
    pd.DataFrame({"bytes": pngs[20:], "y": ["b"] * 20}).to_parquet(table / "b.parquet")
    events = _read_all(
        spark, backfill_settings, str(table), bytes_column="bytes", label_column="y", split_bytes=1
    )
    assert set(events["id"]) == ids and set(events["partition"]) == {0, 1}
    assert set(events["label"]) == {"a", "b"}

    folder = tmp_path / "folder"
    write_folder(folder, 30)
    events = _read_all(spark, backfill_settings, str(folder), glob="*.png", label_from_folder=True)
    assert len(events) == 30 and set(events["label"]) == {"class0", "class1", "class2", "class3"}

    from producers import ImageProducer

    kafka_settings = backfill_settings.derive(kafka={"topic_images": topic})
    with ImageProducer(kafka_settings) as producer:
        for image in pngs[:15]:
            producer.send(image)
        producer.flush()
    events = _read_all(spark, kafka_settings, "kafka", split_size=4)
    assert len(events) == 15 and set(events["topic"]) == {topic}


def test_archive_round_trip(
    spark: SparkSession, backfill_settings: Settings, tmp_path: Path
) -> None:
    """What a backfill archives is what a later archive backfill reads; a re-done split
    replaces its archive partition instead of adding to it."""
    folder = tmp_path / "folder"
    ids = write_folder(folder, 25)
    backfill = Backfill(
        spark, backfill_settings, BackfillOptions(source=str(folder), split_size=10, glob="*.png")
    )
    splits = backfill.plan()
    backfill._archive(backfill.read(splits), splits)
    backfill._archive(backfill.read(splits[:1]), splits[:1])
    events = _read_all(spark, backfill_settings, "archive", split_bytes=1)
    assert len(events) == 25 and set(events["id"]) == ids
    since = _read_all(spark, backfill_settings, "archive", since=pd.Timestamp.now().date())
    assert len(since) == 25
    old = _read_all(
        spark,
        backfill_settings,
        "archive",
        since=(pd.Timestamp.now() + pd.Timedelta(days=2)).date(),
    )
    assert len(old) == 0


# -- tagging: a folder of 2,000 images, each indexed exactly once --------------------------


@pytest.fixture
def model_settings(backfill_settings: Settings, tmp_path: Path) -> Settings:
    """The test's own model store with a hand-built model promoted (no training needed)."""
    store = str(tmp_path / "models")
    hand_model(store, [png(i) for i in images(60, seed=99)])
    return backfill_settings.derive(model_store=store)


def assert_exactly_once(settings: Settings, ids: set[str]) -> tuple[list[str], list[str]]:
    """Every image is in Solr or in review, once; nothing else is."""
    indexed, review = solr_ids(settings), review_ids(settings)
    assert len(indexed) == len(set(indexed))
    assert len(review) == len(set(review)), "a review record was appended twice"
    assert not set(indexed) & set(review)
    assert set(indexed) | set(review) == ids
    assert len(indexed) + len(review) == len(ids)
    return indexed, review


def counts(summary: BackfillSummary) -> tuple[int, int, int]:
    return summary.tagged, summary.review, summary.dead


def test_folder_backfill_resumes_and_indexes_each_image_once(
    spark: SparkSession, model_settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "corpus"
    ids = write_folder(folder, 2000)
    options = BackfillOptions(
        source=str(folder), split_size=200, splits_per_round=2, progress=False
    )

    # Interrupted after 3 of the 11 splits (2,000 images + one text file).
    first = run_backfill(spark, model_settings, replace(options, max_splits=3))
    assert (first.splits_total, first.splits_done, first.splits_remaining) == (11, 3, 8)
    assert first.images == 600

    second = run_backfill(spark, model_settings, options)
    assert (second.splits_skipped, second.splits_done, second.splits_remaining) == (3, 8, 0)
    assert first.images + second.images == 2001
    indexed, review = assert_exactly_once(model_settings, ids)
    assert first.tagged + second.tagged == len(indexed) and len(indexed) > 1000
    assert first.review + second.review == len(review) and review
    assert len(topic_values(model_settings, model_settings.kafka.topic_dlq)) == 1  # README.txt
    assert first.dead + second.dead == 1

    # Finished: a third run has nothing to do.
    third = run_backfill(spark, model_settings, options)
    assert (third.splits_skipped, third.splits_done, third.images) == (11, 0, 0)

    # A crash after the last round's writes but before its progress records: the round is
    # re-done, Solr upserts the same documents, and the sink ledger (the round's transaction
    # named its splits) keeps review and dead letters from doubling.
    state = Path(second.state_dir)
    records = sorted((state / "done").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    for record in records[-2:]:  # the last round (2 splits per round)
        record.unlink()
    fourth = run_backfill(spark, model_settings, options)
    assert fourth.splits_done == 2 and fourth.images > 0
    assert_exactly_once(model_settings, ids)
    assert len(topic_values(model_settings, model_settings.kafka.topic_dlq)) == 1

    # The images went to the archive too: an archive backfill finds each one.
    archived = Backfill(spark, model_settings, BackfillOptions(source="archive"))
    rows = archived.read(archived.plan()).select("key").distinct().count()
    assert rows == 2001


def test_killed_backfill_restarts_without_duplicates(
    spark: SparkSession, model_settings: Settings, tmp_path: Path
) -> None:
    """`imagetag backfill` killed (SIGKILL) mid-run, then started again, indexes each image
    once."""
    folder = tmp_path / "corpus"
    ids = write_folder(folder, 1200, seed=11)
    state = tmp_path / "state"
    args = [str(folder), "--split-size", "100", "--splits-per-round", "1", "--state", str(state)]
    child = subprocess.Popen(
        [sys.executable, "-m", "imagetag", "backfill", *args, "--no-progress"],
        env=settings_env(model_settings),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while len(list((state / "done").glob("*.json"))) < 3:
            assert child.poll() is None, "the backfill ended before it could be killed"
            assert time.monotonic() < deadline, "no progress within 240 s"
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    done_before = len(list((state / "done").glob("*.json")))
    assert 3 <= done_before < 13

    summary = run_backfill(
        spark,
        model_settings,
        BackfillOptions(source=str(folder), split_size=100, state_dir=str(state), progress=False),
    )
    assert summary.splits_skipped == done_before
    assert summary.splits_skipped + summary.splits_done == summary.splits_total == 13
    assert_exactly_once(model_settings, ids)
