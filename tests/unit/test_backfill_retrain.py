"""Retraining and re-indexing helpers without services: durations, the schedule, the labelled
corpus CSV, content-named exports."""

from __future__ import annotations

import argparse
import csv
import hashlib
import threading
from pathlib import Path

import pandas as pd
import pytest

from batch.reindex import _generation
from batch.retrain import (
    RetrainOptions,
    Schedule,
    dataset_rows,
    export_partition,
    export_records,
    write_corpus,
)
from imagetag.commands.retrain import add_arguments, options_from_args
from imagetag.durations import DurationError, parse_duration
from imagetag.errors import ConfigError
from tests.unit.test_backfill_plan import PNG


def test_parse_duration() -> None:
    assert parse_duration("90", bare_seconds=True) == 90
    assert parse_duration("90s") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("6h") == 6 * 3600
    assert parse_duration("1.5d") == 1.5 * 86400
    assert parse_duration("1w") == 7 * 86400
    assert parse_duration(" 1h30m ") == 5400
    for bad in ("", "0", "0s", "-1h", "1y", "soon", "2h-"):
        with pytest.raises(DurationError):
            parse_duration(bad, bare_seconds=True)
    with pytest.raises(DurationError):
        parse_duration("90")  # a bare number is a duration only where seconds are implied


def test_schedule_runs_now_then_every_interval_until_stopped() -> None:
    schedule = Schedule(0.05)
    runs: list[int] = []
    assert schedule.run(lambda: runs.append(1), max_runs=3) == 3
    stopper = Schedule(3600)  # a stop between runs ends the wait at once
    threading.Timer(0.2, stopper.stop.set).start()
    assert stopper.run(lambda: None) == 1


def test_cli_options() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--data", "fashion-mnist", "--data", "/x", "--every", "6h", "--k", "64", "--retag", "none"]
    )
    options = options_from_args(args)
    assert options.data == ("fashion-mnist", "/x") and options.retag is None
    assert options.train == {"k": 64} and options.archive_labels
    assert options.every_s == 6 * 3600
    assert options_from_args(parser.parse_args([])) == RetrainOptions(retag="all")
    assert options_from_args(parser.parse_args(["--every", "90"])).every_s == 90
    with pytest.raises(SystemExit):
        parser.parse_args(["--every", "often"])


def test_options_validate_themselves() -> None:
    for bad in (
        {"retag": "newer"},
        {"train": {"data": "/other"}},
        {"train": {"k": 0}},
        {"train": {"colour": "red"}},
        {"every_s": 0.0},
        {"max_runs": 0},
    ):
        with pytest.raises(ConfigError):
            RetrainOptions(**bad)
    assert RetrainOptions(retag=None, train={"k": 8, "trees": 2}).train["k"] == 8


def test_corpus_csv_is_sorted_and_unique(tmp_path: Path) -> None:
    path = tmp_path / "corpus.csv"
    count = write_corpus([("/b.png", "cat"), ("/a.png", "dog"), ("/b.png", "other")], path)
    assert count == 2
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["path", "label"], ["/a.png", "dog"], ["/b.png", "cat"]]


def test_exports_are_named_by_content(tmp_path: Path) -> None:
    rows = list(export_records([("a", PNG, "T-shirt/top"), ("b", PNG + b"x", None)], tmp_path))
    digest = hashlib.sha256(PNG).hexdigest()
    assert rows == [(str(tmp_path / "T-shirt_top" / f"{digest}.png"), "T-shirt/top")]
    assert Path(rows[0][0]).read_bytes() == PNG
    # Again: the same file, kept (an image keeps its side of the held-out split).
    assert list(export_records([("a", PNG, "T-shirt/top")], tmp_path)) == rows

    frame = pd.DataFrame(
        {
            "id": [digest, "0" * 64],
            "image": [PNG, PNG],
            "content_type": ["image/png", "image/png"],
            "label": ["cat", "dog"],
        }
    )
    (out,) = list(export_partition(str(tmp_path / "archive"))([frame]))
    assert list(out["label"]) == ["cat"]  # an id that is not the bytes' hash is left out
    assert out["path"].iloc[0].endswith(f"/cat/{digest}.png")


def test_dataset_rows_of_a_folder_and_a_csv(tmp_path: Path) -> None:
    (tmp_path / "set" / "cat").mkdir(parents=True)
    (tmp_path / "set" / "cat" / "1.png").write_bytes(PNG)
    (tmp_path / "set" / "loose.png").write_bytes(PNG)  # no class folder: not labelled
    rows = dataset_rows(str(tmp_path / "set"), tmp_path / "work")
    assert rows == [(str((tmp_path / "set" / "cat" / "1.png").resolve()), "cat")]
    listing = tmp_path / "labels.csv"
    listing.write_text("path,label\nset/loose.png,dog\n")
    assert dataset_rows(str(listing), tmp_path / "work") == [
        (str((tmp_path / "set" / "loose.png").resolve()), "dog")
    ]


def test_collection_generations() -> None:
    assert _generation("images_3", "images") == 3
    assert _generation("images_x", "images") == -1
    assert _generation("other_3", "images") == -1
