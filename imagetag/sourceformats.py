"""The one registry of source formats: what a source spec names, and how to count and read it.

The producer (``producers/sources.py``), the backfill planner (``batch/backfill``) and the
trainer (``batch/training/corpus.py``) all ask this module, so a source is recognised the same
way everywhere. To add a format: a member of :class:`SourceKind`, its readers in
:mod:`imagetag.datasets`, and one :class:`SourceFormat` row in :data:`FORMATS` (plus its place
in :func:`sniff_path` when it can be recognised by its content).

Kinds and how they are recognised (magic bytes first, names only where a format has no magic):

========================  ===================================================================
``idx``                   a file with an idx header (``00 00 <type> <ndim>``), gzip or not;
                          ``fashion-mnist[:train|test]`` names Debian's copy
``cifar``                 a folder with ``batches.meta``, ``data_batch_*`` or ``test_batch``
                          (CIFAR-100: ``meta`` with ``train``/``test``), or one pickled
                          batch (``\\x80`` magic) named like one or inside such a folder
``tiny``                  a ``.bin`` file (Tiny Images: headerless 3072-byte records)
``sequencefile``          a file with the ``SEQ`` magic, or a folder of only such files
``parquet``               a file with the ``PAR1`` magic, or a folder of only ``.parquet`` files
``archive``               ``archive[:path]``, or a folder with ``_spark_metadata`` (a Spark sink)
``kafka``                 ``kafka[:topic]``
``folder``                any other folder (image files, recursively)
========================  ===================================================================

``count`` and ``read(start, count)`` are here for the file formats, which plain Python reads
(on the driver or in an executor). Parquet, the archive and Kafka are counted and read by
Spark and Kafka (``batch/backfill``), so their rows have ``count``/``read`` None: this module
stays in the core layer, without Spark.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from imagetag import datasets
from imagetag.datasets import DatasetError, Record


class SourceKind(StrEnum):
    IDX = "idx"
    CIFAR = "cifar"
    TINY = "tiny"
    SEQUENCEFILE = "sequencefile"
    PARQUET = "parquet"
    ARCHIVE = "archive"
    KAFKA = "kafka"
    FOLDER = "folder"


Reader = Callable[[Path, int, int | None], Iterator[Record]]


@dataclass(frozen=True)
class SourceFormat:
    """One kind of source. ``dataset`` is the ``metadata["dataset"]`` of its records.
    ``indexable``: ``read(start, count)`` seeks, so record ranges are cheap splits; otherwise
    a file is read from its start (``start`` then skips records)."""

    kind: SourceKind
    dataset: str
    indexable: bool
    count: Callable[[Path], int] | None
    read: Reader | None


def _read_idx(
    path: Path, start: int, count: int | None, label_names: list[str] | None = None
) -> Iterator[Record]:
    names = label_names if label_names is not None else idx_label_names(path)
    return datasets.read_idx(path, idx_labels(path), start, count, names)


def _read_sequence_file(path: Path, start: int, count: int | None) -> Iterator[Record]:
    stop = None if count is None else start + count
    return itertools.islice(datasets.read_sequence_file(path), start, stop)


def _read_folder(path: Path, start: int, count: int | None) -> Iterator[Record]:
    stop = None if count is None else start + count
    return itertools.islice(datasets.read_folder(path), start, stop)


def _count_folder(path: Path) -> int:
    return sum(1 for _ in datasets.iter_files(path))


FORMATS: dict[SourceKind, SourceFormat] = {
    f.kind: f
    for f in (
        SourceFormat(SourceKind.IDX, "idx", True, datasets.count_idx, _read_idx),
        SourceFormat(SourceKind.CIFAR, "cifar", True, datasets.count_cifar, datasets.read_cifar10),
        SourceFormat(
            SourceKind.TINY,
            "tiny-images",
            True,
            datasets.count_tiny_images,
            datasets.read_tiny_images,
        ),
        SourceFormat(
            SourceKind.SEQUENCEFILE,
            "sequence-file",
            False,
            datasets.count_sequence_file,
            _read_sequence_file,
        ),
        SourceFormat(SourceKind.FOLDER, "folder", False, _count_folder, _read_folder),
        SourceFormat(SourceKind.PARQUET, "parquet", False, None, None),
        SourceFormat(SourceKind.ARCHIVE, "archive", False, None, None),
        SourceFormat(SourceKind.KAFKA, "kafka", False, None, None),
    )
}

_FASHION = re.compile(r"^fashion-mnist(?::(?P<split>train|test))?$")
_SERVICES = (SourceKind.ARCHIVE, SourceKind.KAFKA)
_CIFAR_BATCH = re.compile(r"^(data_batch_\d+|test_batch|train|test)$")


def fashion_mnist_split(spec: str) -> str | None:
    """``train`` or ``test`` when ``spec`` names Debian's Fashion-MNIST (``fashion-mnist``,
    ``fashion-mnist:test``), else None."""
    match = _FASHION.match(spec)
    if match is None or Path(spec).exists():
        return None
    return match["split"] or "train"


def named_service(spec: str) -> tuple[SourceKind, str] | None:
    """``(ARCHIVE|KAFKA, rest)`` for ``archive[:path]`` / ``kafka[:topic]`` (rest "" when
    bare: the settings name it), else None."""
    for kind in _SERVICES:
        if spec == kind.value or spec.startswith(kind.value + ":"):
            return kind, spec.partition(":")[2]
    return None


def sniff(spec: str) -> SourceKind:
    """The kind of source ``spec`` names: a service name, Fashion-MNIST, or a local path
    recognised by :func:`sniff_path`. DatasetError when it does not exist or is none of them
    (a single image file, say)."""
    service = named_service(spec)
    if service is not None:
        return service[0]
    if fashion_mnist_split(spec) is not None:
        return SourceKind.IDX
    path = Path(spec)
    if not path.exists():
        raise DatasetError(f"{spec} does not exist")
    kind = sniff_path(path)
    if kind is None:
        raise DatasetError(f"cannot tell what {spec} holds")
    return kind


def sniff_path(path: Path) -> SourceKind | None:
    """The kind of a local file or folder, from its content; None for a file of no source
    format (an image, say) or a path that does not exist."""
    if path.is_dir():
        return _sniff_folder(path)
    if not path.is_file():
        return None
    magic = datasets.head(path)
    if magic[:3] == b"SEQ":
        return SourceKind.SEQUENCEFILE
    if magic[:4] == b"PAR1":
        return SourceKind.PARQUET
    if datasets.is_idx(path):
        return SourceKind.IDX
    if path.suffix == ".bin":
        return SourceKind.TINY
    if magic[:1] == b"\x80" and (_CIFAR_BATCH.match(path.name) or is_cifar_folder(path.parent)):
        return SourceKind.CIFAR
    return None


def is_cifar_folder(folder: Path) -> bool:
    """An extracted CIFAR-10/100 python folder: its meta file or its batch files."""
    if (folder / "batches.meta").is_file() or any(folder.glob("data_batch_*")):
        return True
    if (folder / "test_batch").is_file():
        return True
    return (folder / "meta").is_file() and (
        (folder / "train").is_file() or (folder / "test").is_file()
    )


def _sniff_folder(path: Path) -> SourceKind:
    if is_cifar_folder(path):
        return SourceKind.CIFAR
    if (path / "_spark_metadata").is_dir():
        return SourceKind.ARCHIVE
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
    if files and all(p.suffix == ".parquet" for p in files):
        return SourceKind.PARQUET
    if files and all(datasets.is_sequence_file(p) for p in files[:20]):
        return SourceKind.SEQUENCEFILE
    return SourceKind.FOLDER


def parts(kind: SourceKind, path: Path) -> list[Path]:
    """The files a source is read from, in order: a CIFAR folder's batches (train, then test),
    a SequenceFile folder's files; a single file or any other source is one part."""
    if kind is SourceKind.CIFAR and path.is_dir():
        return datasets.cifar10_batches(path)
    if kind is SourceKind.SEQUENCEFILE and path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and datasets.is_sequence_file(p))
    return [path]


def count(kind: SourceKind, path: Path) -> int:
    """Records in ``path`` (every part of it), without decoding any image. DatasetError for a
    kind that only Spark or Kafka can count."""
    fmt = FORMATS[kind]
    if fmt.count is None:
        raise DatasetError(f"{kind} sources are counted by Spark or Kafka, not here")
    counter = fmt.count
    return sum(counter(part) for part in parts(kind, path))


def read(
    kind: SourceKind,
    path: Path,
    start: int = 0,
    count: int | None = None,
    label_names: list[str] | None = None,
) -> Iterator[tuple[Path, int, Record]]:
    """``(part, index in part, record)`` for records ``start .. start+count`` of ``path``,
    across its parts in order (a part wholly before ``start`` is counted, not read).
    ``label_names`` names an idx file's numeric labels when :func:`idx_label_names` cannot
    (a copy of Fashion-MNIST elsewhere). DatasetError for a kind that only Spark or Kafka
    can read."""
    fmt = FORMATS[kind]
    if fmt.read is None or fmt.count is None:
        raise DatasetError(f"{kind} sources are read by Spark or Kafka, not here")
    reader: Reader = fmt.read
    if label_names is not None and kind is SourceKind.IDX:
        reader = functools.partial(_read_idx, label_names=label_names)
    counter = fmt.count
    remaining = count
    for part in parts(kind, path):
        if remaining is not None and remaining <= 0:
            return
        if start:
            size = counter(part)
            if start >= size:
                start -= size
                continue
        taken = 0
        for index, record in enumerate(reader(part, start, remaining), start=start):
            taken += 1
            yield part, index, record
        remaining = None if remaining is None else remaining - taken
        start = 0


def idx_labels(images: Path) -> Path | None:
    """The labels file beside an idx images file (``*-images-idx3-*`` → ``*-labels-idx1-*``)."""
    labels = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
    return labels if labels != images and labels.is_file() else None


def idx_label_names(images: Path) -> list[str] | None:
    """Class names for an idx file's labels: Fashion-MNIST's for Debian's copy, else None
    (the labels are the class numbers)."""
    try:
        inside = images.resolve().is_relative_to(datasets.FASHION_MNIST_ROOT.resolve())
    except OSError:
        return None
    return list(datasets.FASHION_MNIST_LABELS) if inside else None


def fashion_mnist(split: str) -> Path:
    """The images file of a Fashion-MNIST split (``train``/``test``)."""
    return datasets.fashion_mnist_paths("test" if split == "test" else "train")[0]
