"""The source-format registry, and that the producer, the backfill planner and the trainer
recognise a source the same way (they used to have three sets of rules)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from batch.backfill.planning import plan_record_ranges, sniff_kind
from batch.training.corpus import plan_corpus, training_kind
from batch.training.options import TrainError
from imagetag import sourceformats
from imagetag.datasets import DatasetError, write_idx, write_sequence_file, write_tiny_images
from imagetag.sourceformats import SourceKind, sniff
from producers.sources import open_source


def _cifar_batch(path: Path, labels: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(len(labels) * 3072, dtype=np.uint8).reshape(len(labels), 3072)
    batch = {b"labels": labels, b"data": data}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return path


def _png(i: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.full((8, 8), i, np.uint8))
    assert ok
    return buf.tobytes()


@pytest.fixture
def corpora(tmp_path: Path) -> dict[str, Path]:
    """One source of every file kind, as a user would lay them out."""
    idx = tmp_path / "digits" / "t10k-images-idx3-ubyte.gz"
    idx.parent.mkdir()
    write_idx(idx, np.zeros((5, 28, 28), np.uint8))
    write_idx(idx.with_name("t10k-labels-idx1-ubyte.gz"), np.arange(5, dtype=np.uint8))
    cifar10 = tmp_path / "cifar-10-batches-py"
    _cifar_batch(cifar10 / "data_batch_1", [0, 1, 2])
    _cifar_batch(cifar10 / "test_batch", [3, 4])
    # a CIFAR-100 folder: ``meta``, ``train``, ``test`` (no data_batch_* at all)
    cifar100 = tmp_path / "cifar-100-python"
    _cifar_batch(cifar100 / "train", [0, 1])
    _cifar_batch(cifar100 / "test", [1])
    (cifar100 / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"a", b"b"]}))
    tiny = tmp_path / "tiny_images.bin"
    write_tiny_images(tiny, [np.zeros((32, 32, 3), np.uint8)] * 4)
    seq = tmp_path / "seq"
    seq.mkdir()
    write_sequence_file(seq / "part-00000", [(f"a{i}.png", _png(i)) for i in range(3)])
    write_sequence_file(seq / "part-00001", [(f"b{i}.png", _png(i)) for i in range(2)])
    photos = tmp_path / "photos" / "cats"
    photos.mkdir(parents=True)
    (photos / "a.png").write_bytes(_png(1))
    return {
        "idx": idx,
        "cifar10": cifar10,
        "cifar100": cifar100,
        "cifar-file": cifar10 / "test_batch",
        "tiny": tiny,
        "seq": seq,
        "seq-file": seq / "part-00001",
        "folder": photos.parent,
    }


EXPECTED = {
    "idx": SourceKind.IDX,
    "cifar10": SourceKind.CIFAR,
    "cifar100": SourceKind.CIFAR,
    "cifar-file": SourceKind.CIFAR,
    "tiny": SourceKind.TINY,
    "seq": SourceKind.SEQUENCEFILE,
    "seq-file": SourceKind.SEQUENCEFILE,
    "folder": SourceKind.FOLDER,
}
COUNTS = {
    "idx": 5,
    "cifar10": 5,
    "cifar100": 3,
    "cifar-file": 2,
    "tiny": 4,
    "seq": 5,
    "seq-file": 2,
    "folder": 1,
}


def test_every_job_sniffs_a_source_the_same_way(corpora: dict[str, Path]) -> None:
    for name, path in corpora.items():
        kind = sniff(str(path))
        assert kind is EXPECTED[name], name
        assert sniff_kind(str(path)) is kind, name  # the backfill planner
        assert sourceformats.count(kind, path) == COUNTS[name], name
        assert len(list(open_source(str(path)))) == COUNTS[name], name  # the producer
    assert training_kind(str(corpora["cifar100"])) is SourceKind.CIFAR  # the trainer
    corpus = plan_corpus(str(corpora["cifar100"]), None, 0.2)
    assert corpus.counts == {"train": 2, "test": 1}


def test_services_and_names() -> None:
    assert sniff("archive") is SourceKind.ARCHIVE
    assert sniff("archive:/data/archive") is SourceKind.ARCHIVE
    assert sniff("kafka:images") is SourceKind.KAFKA
    assert sniff("fashion-mnist:test") is SourceKind.IDX
    assert sourceformats.named_service("kafka:images") == (SourceKind.KAFKA, "images")
    assert sourceformats.named_service("kafkaesque") is None


def test_unknown_and_missing(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(_png(3))
    assert sourceformats.sniff_path(tmp_path / "photo.png") is None  # an image, not a source
    with pytest.raises(DatasetError, match="cannot tell"):
        sniff(str(tmp_path / "photo.png"))
    with pytest.raises(DatasetError, match="does not exist"):
        sniff(str(tmp_path / "nope"))
    with pytest.raises(TrainError, match="it is tiny"):
        training_kind(str(_tiny(tmp_path)))


def _tiny(tmp_path: Path) -> Path:
    path = tmp_path / "t.bin"
    write_tiny_images(path, [np.zeros((32, 32, 3), np.uint8)])
    return path


def test_read_windows_cross_parts(corpora: dict[str, Path]) -> None:
    got = list(sourceformats.read(SourceKind.CIFAR, corpora["cifar10"], 2, 2))
    assert [(part.name, index) for part, index, _ in got] == [
        ("data_batch_1", 2),
        ("test_batch", 0),
    ]
    names = [r.name for *_, r in sourceformats.read(SourceKind.SEQUENCEFILE, corpora["seq"], 2, 2)]
    assert names == ["a2.png", "b0.png"]
    labels = [r.label for *_, r in sourceformats.read(SourceKind.IDX, corpora["idx"], 3)]
    assert labels == ["3", "4"]  # class numbers: not Debian's Fashion-MNIST
    named = sourceformats.read(SourceKind.IDX, corpora["idx"], 0, 1, label_names=list("abcde"))
    assert [r.label for *_, r in named] == ["a"]


def test_spark_kinds_are_not_read_here(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Spark or Kafka"):
        sourceformats.count(SourceKind.PARQUET, tmp_path)
    (tmp_path / "t.parquet").write_bytes(b"PAR1" + b"\0" * 8 + b"PAR1")
    assert sniff(str(tmp_path / "t.parquet")) is SourceKind.PARQUET
    with pytest.raises(DatasetError, match="backfill"):
        open_source(str(tmp_path / "t.parquet"))


def test_backfill_plans_idx_record_ranges(corpora: dict[str, Path]) -> None:
    splits = plan_record_ranges(SourceKind.CIFAR, str(corpora["cifar10"]), 2)
    assert [(Path(s.paths[0]).name, s.start, s.count) for s in splits] == [
        ("data_batch_1", 0, 2),
        ("data_batch_1", 2, 1),
        ("test_batch", 0, 2),
    ]
    assert [s.count for s in plan_record_ranges(SourceKind.IDX, str(corpora["idx"]), 2)] == [
        2,
        2,
        1,
    ]
