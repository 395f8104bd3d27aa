"""Backfill planning, state and record building: pure functions, no Spark, no services."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batch.backfill import BackfillError, BackfillOptions, BackfillSummary, Split
from batch.backfill.planning import (
    kafka_watermarks,
    plan_file_groups,
    plan_kafka_ranges,
    plan_ranges,
    rounds,
    sniff_kind,
)
from batch.backfill.readers import archive_event_rows, event_row, expand_splits, folder_rows
from batch.backfill.state import BackfillState, round_token, state_hash, token_splits
from imagetag.avro import AvroDeserializer
from imagetag.commands.backfill import add_arguments, options_from_args
from imagetag.datasets import write_sequence_file, write_tiny_images
from imagetag.errors import ConfigError, ServiceError
from imagetag.hadoop import (
    canonical,
    file_uri,
    from_hadoop,
    from_uri,
    ingest_date_of,
    is_unable_to_infer_schema,
    is_uri,
    spark_path,
)
from imagetag.records import decode_events
from imagetag.settings import Settings
from imagetag.sourceformats import SourceKind

# Sniffs as PNG but does not decode: enough for the code that only moves, hashes and names image
# bytes (here and in test_backfill_retrain).
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


def test_plan_ranges_cover_every_record_once() -> None:
    splits = plan_ranges(SourceKind.TINY, [("/a.bin", 12), ("/b.bin", 5)], 5)
    assert [(s.paths[0], s.start, s.count) for s in splits] == [
        ("/a.bin", 0, 5),
        ("/a.bin", 5, 5),
        ("/a.bin", 10, 2),
        ("/b.bin", 0, 5),
    ]
    assert [s.index for s in splits] == [0, 1, 2, 3]
    assert len({s.key for s in splits}) == 4
    with pytest.raises(BackfillError):
        plan_ranges(SourceKind.TINY, [("/a.bin", 3)], 0)


def test_plan_file_groups_by_count_and_by_bytes() -> None:
    files = [(f"/f{i}", 10) for i in range(7)]
    by_count = plan_file_groups(SourceKind.FOLDER, files, max_files=3)
    assert [len(s.paths) for s in by_count] == [3, 3, 1]
    assert [s.count for s in by_count] == [3, 3, 1]
    by_bytes = plan_file_groups(
        SourceKind.PARQUET, [("/a", 5), ("/b", 5), ("/c", 50), ("/d", 1)], None, 12
    )
    assert [s.paths for s in by_bytes] == [("/a", "/b"), ("/c",), ("/d",)]
    assert by_bytes[0].count is None and by_bytes[0].size == 10
    assert plan_file_groups(SourceKind.FOLDER, [], max_files=3) == []


def test_plan_kafka_ranges() -> None:
    splits = plan_kafka_ranges("t", {1: (3, 10), 0: (0, 4), 2: (5, 5)}, 4)
    assert [(s.part, s.start, s.count) for s in splits] == [(0, 0, 4), (1, 3, 4), (1, 7, 3)]


def test_split_key_is_stable_and_round_trips() -> None:
    split = Split(3, SourceKind.FOLDER, ("/x/a.png", "/x/b.png"), 0, 2)
    # the key does not depend on the index
    assert split.key == Split(9, SourceKind.FOLDER, ("/x/a.png", "/x/b.png"), 0, 2).key
    assert split.key != Split(3, SourceKind.FOLDER, ("/x/a.png",), 0, 1).key
    assert Split.from_json(split.to_json()) == split


def test_rounds() -> None:
    splits = plan_ranges(SourceKind.TINY, [("/a", 10)], 2)
    assert [len(r) for r in rounds(splits, 2)] == [2, 2, 1]
    assert [len(r) for r in rounds(splits, 0)] == [1] * 5


def test_paths_as_spark_spells_them() -> None:
    # Encoded URIs (inputFiles, _metadata.file_path) and decoded ones (Hadoop's Path.toString,
    # the binaryFile path column) meet in one canonical form.
    assert from_uri("file:///d/w%5B1%5D%2541.png") == "/d/w[1]%41.png"
    assert from_uri("file:/d/a%20b.png") == "/d/a b.png"
    assert from_hadoop("file:/d/w[1]%41.png") == "/d/w[1]%41.png"
    assert from_hadoop("hdfs://nn:8020/d/x") == "hdfs://nn:8020/d/x"
    assert canonical("file:/d/x/") == "/d/x" and canonical("hdfs://nn/d/") == "hdfs://nn/d"
    assert spark_path("/d/w[1].png") == "file:///d/w\\[1\\].png"
    assert spark_path("/d/a*b?.png") == "file:///d/a\\*b\\?.png"
    assert file_uri("/d/a b#1.png") == "file:///d/a%20b%231.png"
    assert not is_uri("/d/x") and not is_uri("file:///d") and is_uri("s3a://b/k")
    assert ingest_date_of("/a/ingest_date=2026-01-02/part-0.parquet") == "2026-01-02"
    assert ingest_date_of("/a/part-0.parquet") is None


def test_state_hash_changes_with_options() -> None:
    base = {"kind": "folder", "source": "/x", "since": dt.date(2026, 1, 1)}
    assert state_hash(base) == state_hash(dict(base))
    assert state_hash(base) != state_hash({**base, "since": None})


def test_sniff_kind(tmp_path: Path) -> None:
    tiny = tmp_path / "t.bin"
    write_tiny_images(tiny, [np.zeros((32, 32, 3), np.uint8)])
    seq = tmp_path / "s.seq"
    write_sequence_file(seq, [("a.png", PNG)])
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    (cifar / "data_batch_1").write_bytes(pickle.dumps({"data": 1}))
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x.png").write_bytes(PNG)
    table = tmp_path / "p.parquet"
    pd.DataFrame({"image": [PNG]}).to_parquet(table)
    assert sniff_kind(str(tiny)) == "tiny"
    assert sniff_kind(str(seq)) == "sequencefile"
    assert sniff_kind(str(cifar)) == "cifar"
    assert sniff_kind(str(cifar / "data_batch_1")) == "cifar"
    assert sniff_kind(str(folder)) == "folder"
    assert sniff_kind(str(table)) == "parquet"
    assert sniff_kind("archive") == "archive"
    assert sniff_kind("kafka:images") == "kafka"
    with pytest.raises(BackfillError, match="does not exist"):
        sniff_kind(str(tmp_path / "missing"))
    with pytest.raises(BackfillError, match="--format"):
        sniff_kind("hdfs://nn/corpus")


def test_state_records_finished_splits(tmp_path: Path) -> None:
    state = BackfillState(tmp_path / "state")
    manifest = state.open({"source": "/x", "kind": "folder", "started_ms": 1})
    split = Split(0, SourceKind.FOLDER, ("/x/a.png",), 0, 1)
    assert state.done_keys() == set()
    state.finish(split, {"tagged": 1})
    assert state.done_keys() == {split.key}
    # A restart keeps the first run's manifest (its start time stamps the archive partition).
    again = BackfillState(tmp_path / "state").open(
        {"source": "/x", "kind": "folder", "started_ms": 2}
    )
    assert again["started_ms"] == manifest["started_ms"] == 1
    with pytest.raises(BackfillError, match="belongs to"):
        BackfillState(tmp_path / "state").open({"source": "/y", "kind": "folder"})
    fresh = BackfillState(tmp_path / "state")
    fresh.open({"source": "/y", "kind": "folder", "started_ms": 3}, fresh=True)
    assert fresh.done_keys() == set()


def test_reset_progress_forgets_splits_markers_and_ids(tmp_path: Path) -> None:
    state = BackfillState(tmp_path / "state")
    state.open({"source": "archive", "kind": "archive", "started_ms": 1})
    split = Split(0, SourceKind.ARCHIVE, ("/a.parquet",))
    state.finish(split, {})
    sink_id = state.sink_id()
    assert state.sink_id() == sink_id  # stable across resumes
    state.ids_dir.mkdir()
    state.complete_marker.touch()
    state.reset_progress()
    assert state.done_keys() == set() and not state.ids_dir.exists()
    assert not state.complete_marker.exists()
    assert state.sink_id() != sink_id  # a new ledger: the asked-again re-tag writes anew
    assert (state.folder / "manifest.json").exists()


def test_one_backfill_per_state_folder(tmp_path: Path) -> None:
    state = BackfillState(tmp_path / "state")
    with (
        state.lock(),
        pytest.raises(BackfillError, match="another backfill"),
        BackfillState(tmp_path / "state").lock(),
    ):
        pass
    with state.lock():  # released after the run
        pass


def test_round_token_names_a_round_by_its_splits() -> None:
    a, b = Split(0, SourceKind.TINY, ("/t",), 0, 5), Split(1, SourceKind.TINY, ("/t",), 5, 5)
    assert round_token([a, b]) == round_token([Split(7, SourceKind.TINY, ("/t",), 0, 5), b])
    assert round_token([a, b]) != round_token([a, Split(2, SourceKind.TINY, ("/t",), 10, 5)])
    assert round_token([a]) != round_token([a, b])
    assert token_splits(round_token([a, b])) == {a.key, b.key}  # a restart reads them back
    many = [Split(i, SourceKind.TINY, ("/t",), 5 * i, 5) for i in range(500)]
    assert round_token(many).startswith("sha1:") and len(round_token(many)) < 4096
    assert token_splits(round_token(many)) == set() and token_splits(None) == set()


def test_event_row_is_an_image_event_keyed_by_content_hash() -> None:
    key, value, topic, partition, offset, stamp = event_row(
        PNG,
        source="file:///x.png",
        label="cat",
        metadata={"name": "x.png"},
        produced_at_ms=1000,
        topic="backfill:folder",
        partition=2,
        offset=7,
        timestamp_ms=2000,
    )
    digest = hashlib.sha256(PNG).hexdigest()
    assert key == digest.encode()
    event = AvroDeserializer("ImageEvent")(value)
    assert event["id"] == digest and event["image"] == PNG
    assert event["content_type"] == "image/png" and event["label"] == "cat"
    assert (topic, partition, offset, stamp) == ("backfill:folder", 2, 7, 2000)


def test_expand_splits_reads_a_tiny_images_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tiny = tmp_path / "t.bin"
    write_tiny_images(tiny, [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(9)])
    split = Split(4, SourceKind.TINY, (str(tiny),), 2, 5)
    frames = list(
        expand_splits([pd.DataFrame({"split": [split.to_json()]})], "backfill:tiny", 5, 2, 10**6)
    )
    assert [len(f) for f in frames] == [2, 2, 1]  # batch_size records at a time
    rows = pd.concat(frames, ignore_index=True)
    events, dead = decode_events(rows)
    assert dead == [] and len(events) == 5
    assert list(rows["partition"]) == [4] * 5 and list(rows["offset"]) == [0, 1, 2, 3, 4]
    assert events["source"].iloc[0].endswith("t.bin#2")
    assert rows["key"].nunique() == 5


def test_folder_rows_label_from_parent_folder() -> None:
    files = pd.DataFrame(
        {
            "path": ["file:/data/cats/a.png", "file:/data/top.png"],
            "modificationTime": [pd.Timestamp("2026-01-01", tz="UTC")] * 2,
            "length": [len(PNG)] * 2,
            "content": [PNG, PNG + b"x"],
        }
    )
    places = {"/data/cats/a.png": (3, 0), "/data/top.png": (3, 1)}
    (rows,) = list(folder_rows([files], places, "/data", "backfill:folder", 9, True))
    events, _ = decode_events(rows)
    assert list(events["label"]) == ["cats", None]
    assert list(events["source"]) == ["file:///data/cats/a.png", "file:///data/top.png"]
    assert list(rows["partition"]) == [3, 3] and list(rows["offset"]) == [0, 1]
    assert events["produced_at"].iloc[0] == int(pd.Timestamp("2026-01-01", tz="UTC").value // 10**6)


def test_archive_event_rows_keep_the_producers_event() -> None:
    digest = hashlib.sha256(PNG).hexdigest()
    archived = pd.DataFrame(
        {
            "id": [digest],
            "image": [PNG],
            "content_type": ["image/png"],
            "source": ["file:///orig.png"],
            "produced_at": [pd.Timestamp("2026-01-01", tz="UTC")],
            "label": ["dog"],
            "metadata": [{"k": "v"}],
            "ingested_at": [pd.Timestamp("2026-01-02", tz="UTC")],
            "file_path": ["file:/arch/ingest_date=2026-01-02/p.parquet"],
            "row_index": [11],
        }
    )
    places = {"/arch/ingest_date=2026-01-02/p.parquet": 5}  # file_path is an encoded URI
    (rows,) = list(archive_event_rows([archived], places, "backfill:archive"))
    events, dead = decode_events(rows)
    assert dead == []
    event = events.iloc[0]
    assert (event["id"], event["source"], event["label"]) == (digest, "file:///orig.png", "dog")
    assert event["metadata"] == {"k": "v"}
    assert (event["partition"], event["offset"]) == (5, 11)
    assert event["ingested_at"] == int(pd.Timestamp("2026-01-02", tz="UTC").value // 10**6)


def test_cli_options() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["archive", "--since", "2026-01-02", "--retag", "older", "--max-splits", "3"]
    )
    options = options_from_args(args)
    assert options.since == dt.date(2026, 1, 2) and options.retag == "older"
    assert options.max_splits == 3 and options.archive is None
    assert options_from_args(parser.parse_args(["/x", "--no-archive"])).archive is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--since", "yesterday"])
    with pytest.raises(ConfigError, match="split_size must be at least 1"):
        options_from_args(parser.parse_args(["/x", "--split-size", "0"]))


def test_options_validate_themselves() -> None:
    assert BackfillOptions(source="archive", retag="all").retag == "all"
    for bad in (
        {"kind": "zip"},
        {"retag": "newer"},
        {"split_size": 0},
        {"split_bytes": 0},
        {"splits_per_round": 0},
        {"max_splits": -1},
        {"batch_size": 0},
    ):
        with pytest.raises(ConfigError):
            BackfillOptions(**bad)
    assert BackfillOptions(max_splits=0).max_splits == 0


def test_an_empty_sink_is_recognised_by_its_error_condition() -> None:
    from pyspark.errors import AnalysisException

    empty = AnalysisException(
        message="[UNABLE_TO_INFER_SCHEMA] Unable to infer schema for Parquet.",
        errorClass="UNABLE_TO_INFER_SCHEMA",
        messageParameters={"format": "Parquet"},
    )
    assert is_unable_to_infer_schema(empty)
    other = AnalysisException(
        message="[PATH_NOT_FOUND] UNABLE_TO_INFER_SCHEMA in a path name is not the condition",
        errorClass="PATH_NOT_FOUND",
        messageParameters={"path": "/x"},
    )
    assert not is_unable_to_infer_schema(other)
    assert not is_unable_to_infer_schema(RuntimeError("UNABLE_TO_INFER_SCHEMA"))


def test_summary_format() -> None:
    summary = BackfillSummary(source="/x", kind="folder", state_dir="/s", splits_total=4)
    summary.splits_done, summary.images, summary.tagged, summary.seconds = 3, 10, 8, 2.0
    assert summary.splits_remaining == 1
    assert summary.as_dict()["images_per_s"] == 5.0
    assert "3 done now" in summary.format() and "1 left of 4" in summary.format()


def test_unreachable_kafka_is_a_service_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import confluent_kafka

    class Unreachable:
        def __init__(self, config: dict[str, object]) -> None:
            self.closed = False

        def list_topics(self, topic: str, timeout: float) -> None:
            raise confluent_kafka.KafkaException(
                "Failed to get metadata: Local: Broker transport failure"
            )

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(confluent_kafka, "Consumer", Unreachable)
    settings = Settings.model_validate({"kafka": {"bootstrap_servers": "nowhere:9"}})
    with pytest.raises(ServiceError) as raised:
        kafka_watermarks(settings, "images")
    assert raised.value.service == "kafka" and raised.value.address == "nowhere:9"
