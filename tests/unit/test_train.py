"""The pure parts of the training job: corpus planning, shard reading, metrics, arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest

from batch.train import (
    SHARD_SIZE,
    TrainError,
    TrainOptions,
    classification_metrics,
    format_metrics,
    plan_corpus,
    read_shard,
)
from imagetag.commands.train import add_arguments, options_from_args
from imagetag.datasets import FASHION_MNIST_ROOT
from imagetag.errors import ConfigError


def _write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.full((8, 8), value, np.uint8))
    assert ok
    path.write_bytes(buf.tobytes())


def test_metrics_by_hand() -> None:
    classes = ["a", "b", "c"]
    truth = np.array([0, 0, 1, 1, 2, -1])
    fractions = np.array(
        [
            [0.9, 0.1, 0.0],  # a, right, covered
            [0.3, 0.5, 0.2],  # b, wrong, covered
            [0.1, 0.6, 0.3],  # b, right, covered
            [0.35, 0.3, 0.35],  # a (tie a/c -> first), wrong, not covered
            [0.0, 0.45, 0.55],  # c, right; b is kept too at 0.40
            [0.8, 0.1, 0.1],  # unknown truth: wrong
        ]
    )
    m = classification_metrics(truth, fractions, classes, threshold=0.4)
    assert m["accuracy"] == pytest.approx(3 / 6, abs=1e-4)
    assert m["confusion"]["matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    # precision: a 1/2, b 1/2, c 1/1; recall: a 1/2, b 1/2, c 1/1
    assert m["per_class"]["a"]["precision"] == 0.5 and m["per_class"]["c"]["recall"] == 1.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3, abs=1e-4)
    assert m["coverage"] == pytest.approx(5 / 6, abs=1e-4)
    # kept tags: a, b, b, (none), b + c, a -> 6 tags, correct: a, b, c -> 3
    assert m["kept_tags"] == 6
    assert m["kept_tag_precision"] == pytest.approx(0.5)
    assert m["top_tag_precision_covered"] == pytest.approx(3 / 5, abs=1e-4)
    lines = format_metrics(m)
    assert lines[0].startswith("accuracy 0.5000")
    assert any(line.startswith("a ") for line in lines)


def test_plan_class_per_folder(tmp_path: Path) -> None:
    for i in range(40):
        _write_png(tmp_path / ("cats" if i % 2 else "dogs") / f"{i:03d}.png", i)
    (tmp_path / "notes.txt").write_text("not an image")
    corpus = plan_corpus(str(tmp_path), limit=None, test_fraction=0.25)
    assert corpus.counts["train"] + corpus.counts["test"] == 40
    assert 0 < corpus.counts["test"] < 20
    assert corpus.classes is None
    records = [r for shard in corpus.shards for r in read_shard(shard)]
    assert {label for _, _, label in records} == {"cats", "dogs"}
    assert all(data.startswith(b"\x89PNG") for _, data, _ in records)
    again = plan_corpus(str(tmp_path), limit=None, test_fraction=0.25)
    assert again.fingerprint == corpus.fingerprint  # deterministic split and fingerprint
    _write_png(tmp_path / "cats" / "new.png", 7)
    assert plan_corpus(str(tmp_path), None, 0.25).fingerprint != corpus.fingerprint


def test_plan_csv(tmp_path: Path) -> None:
    lines = ["path,label"]
    for i in range(30):
        _write_png(tmp_path / "img" / f"{i}.png", i)
        lines.append(f"img/{i}.png,{'x' if i < 15 else 'y'}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    corpus = plan_corpus(str(tmp_path / "labels.csv"), limit=None, test_fraction=0.3)
    labels = {label for shard in corpus.shards for label in shard["file_labels"]}
    assert labels == {"x", "y"}
    assert corpus.counts["train"] + corpus.counts["test"] == 30


def test_plan_refuses_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(TrainError):
        plan_corpus(str(tmp_path / "missing"), None, 0.2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError):
        plan_corpus(str(tmp_path / "empty"), None, 0.2)


@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason="dataset-fashion-mnist not installed")
def test_plan_fashion_mnist_reads_headers_only() -> None:
    corpus = plan_corpus("fashion-mnist", limit=2500, test_fraction=0.2)
    assert corpus.counts == {"train": 2500, "test": 2500}
    assert len(corpus.shards) == 2 * -(-2500 // SHARD_SIZE)
    assert corpus.classes is not None and corpus.classes[0] == "T-shirt/top"
    first = next(iter(read_shard({**corpus.shards[1], "count": 2})))
    assert first[0].endswith("#1000") and first[2] in corpus.classes


def test_arguments_and_featurizer_params() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--data", "x", "--featurizer-param", "step=3", "--featurizer-param", "scales=[2,4]"]
    )
    options = options_from_args(args)
    assert options.featurizer == "dense-sift" and options.promote == "always"
    assert options.featurizer_params == {"step": 3, "scales": [2, 4]}
    assert options_from_args(parser.parse_args(["--data", "x", "--promote-if-better"])).promote == (
        "if-better"
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "x", "--promote", "--no-promote"])
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        options_from_args(parser.parse_args(["--data", "x", "--featurizer-param", "step"]))


def test_options_validate_themselves() -> None:
    assert TrainOptions(data="fashion-mnist", k=8, neighbors=8, depth=0).neighbors == 8
    # More neighbours than words is allowed: the dictionary's fit caps soft codes at k.
    assert TrainOptions(data="fashion-mnist", k=4, neighbors=5).neighbors == 5
    for bad in (
        {"data": ""},
        {"featurizer": "surf"},
        {"pooling": "mean"},
        {"normalization": "l3"},
        {"promote": "sometimes"},
        {"k": 0},
        {"levels": 5},
        {"neighbors": 0},
        {"trees": 0},
        {"max_bins": 1},
        {"limit": 0},
        {"subsampling": 0.0},
        {"test_fraction": 1.0},
    ):
        with pytest.raises(ConfigError):
            TrainOptions(**{"data": "fashion-mnist", **bad})  # type: ignore[arg-type]


def test_progress_prints_each_stage_with_its_wall_and_cpu_time() -> None:
    from imagetag.instrumentation import Progress

    lines: list[str] = []
    clock = iter([1.0, 3.5])
    progress = Progress(lines.append, cpu=lambda: next(clock))
    with progress.stage("plan", "listing"):
        progress.note("4 shards")
    assert lines[:2] == ["[plan] listing ...", "    4 shards"]
    assert lines[2].startswith("[plan] done in ") and lines[2].endswith(" s (cpu 2.5 s)")
    assert progress.cpu_seconds == {"plan": 2.5} and set(progress.timings) == {"plan"}


def test_descendants_finds_a_child_process_and_its_memory() -> None:
    import os
    import subprocess
    import sys

    from imagetag.instrumentation import MemoryPeaks, descendants, status_kib

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in descendants(os.getpid())
        assert status_kib(child.pid, "VmRSS") > 0
        peaks = MemoryPeaks()
        peaks.sample(os.getpid())
        assert peaks.samples == 1 and peaks.driver_python > 0
    finally:
        child.kill()
        child.wait()
