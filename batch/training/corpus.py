"""The corpus as shards: the driver lists (file, record range, split) without reading any image
(``plan_corpus``); the workers read one shard's records (``read_shard``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.training.options import TrainError
from imagetag import datasets, sourceformats
from imagetag.formats import IMAGE_SUFFIXES
from imagetag.sourceformats import SourceKind

FASHION_MNIST = "fashion-mnist"
SHARD_SIZE = 1000  # records per shard: the unit of parallelism of the read stages


@dataclass
class Corpus:
    """The shards of a labelled corpus, its class names (when known up front), a fingerprint."""

    shards: list[dict[str, Any]]
    classes: list[str] | None
    fingerprint: str
    counts: dict[str, int]
    description: str


def _sha256_file(path: Path, digest: Any) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def training_kind(source: str) -> SourceKind | None:
    """What a training set ``source`` is, by the registry's rules: Fashion-MNIST (IDX), CIFAR
    batches, a folder of images labelled by their folder (FOLDER), or a ``path,label`` CSV
    (None). TrainError for anything else."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".csv":
        return None
    if sourceformats.fashion_mnist_split(source) is not None:
        return SourceKind.IDX
    kind = sourceformats.sniff_path(path)
    if kind in (SourceKind.CIFAR, SourceKind.FOLDER):
        return kind
    raise TrainError(
        f"--data {source}: not fashion-mnist, CIFAR batches, a folder or a .csv"
        + (f" (it is {kind})" if kind is not None else "")
    )


def _ranges(
    split: str, kind: SourceKind, path: Path, total: int, limit: int | None
) -> Iterator[dict[str, Any]]:
    total = total if limit is None else min(total, limit)
    for start in range(0, total, SHARD_SIZE):
        yield {
            "split": split,
            "kind": kind.value,
            "path": str(path),
            "start": start,
            "count": min(SHARD_SIZE, total - start),
            "files": None,
            "file_labels": None,
        }


def plan_corpus(source: str, limit: int | None, test_fraction: float) -> Corpus:
    """List ``source`` as shards; reads headers and names only, never the images."""
    shards: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    counts = {"train": 0, "test": 0}
    classes: list[str] | None = None
    kind = training_kind(source)
    if kind is SourceKind.IDX:
        classes = list(datasets.FASHION_MNIST_LABELS)
        for split in ("train", "test"):
            images = sourceformats.fashion_mnist(split)
            total = sourceformats.count(kind, images)
            shards += _ranges(split, kind, images, total, limit)
            for path in (images, sourceformats.idx_labels(images)):
                if path is not None:
                    digest.update(path.name.encode())
                    _sha256_file(path, digest)
        description = f"Fashion-MNIST ({datasets.FASHION_MNIST_ROOT})"
    elif kind is SourceKind.CIFAR:
        for batch in sourceformats.parts(kind, Path(source)):
            split = "test" if batch.name.startswith("test") else "train"
            total = sourceformats.count(kind, batch)
            remaining = None if limit is None else max(0, limit - counts[split])
            part = list(_ranges(split, kind, batch, total, remaining))
            shards += part
            counts[split] += sum(s["count"] for s in part)
            digest.update(batch.name.encode())
            _sha256_file(batch, digest)
        description = f"CIFAR batches ({source})"
    else:
        files, file_labels = _labelled_files(source)
        digest.update(source.encode())
        by_split: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
        for name, label in zip(files, file_labels, strict=True):
            bucket = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            by_split["test" if bucket < test_fraction else "train"].append((name, label))
            digest.update(f"{name}\0{label}\0{os.path.getsize(name)}\n".encode())
        for split, items in by_split.items():
            items = items if limit is None else items[:limit]
            for start in range(0, len(items), SHARD_SIZE):
                chunk = items[start : start + SHARD_SIZE]
                shards.append(
                    {
                        "split": split,
                        "kind": "files",
                        "path": source,
                        "start": 0,
                        "count": len(chunk),
                        "files": [p for p, _ in chunk],
                        "file_labels": [label for _, label in chunk],
                    }
                )
        description = f"labelled files ({source})"
    for i, shard in enumerate(shards):
        shard["shard"] = i
    counts = {s: sum(x["count"] for x in shards if x["split"] == s) for s in ("train", "test")}
    if counts["train"] == 0 or counts["test"] == 0:
        raise TrainError(f"{source}: {counts['train']} training / {counts['test']} test records")
    digest.update(f"limit={limit}".encode())
    return Corpus(shards, classes, "sha256:" + digest.hexdigest(), counts, description)


def labelled_files(source: str) -> list[tuple[str, str]]:
    """(absolute path, label) of the images a ``path,label`` CSV lists, or of the image files
    (by suffix) under a folder, labelled by their parent folder (files at the top have no
    label and are left out)."""
    path = Path(source)
    rows: list[tuple[str, str]] = []
    if path.is_file() and path.suffix.lower() == ".csv":
        for name, label in datasets.read_label_csv(path).items():
            file = Path(name) if Path(name).is_absolute() else path.parent / name
            rows.append((str(file.resolve()), label))
        return rows
    lookup = datasets.LabelLookup(path, "folder")
    for file in datasets.iter_files(path):
        folder_label = lookup(file) if file.suffix.lower() in IMAGE_SUFFIXES else None
        if folder_label is not None:
            rows.append((str(file.resolve()), folder_label))
    return rows


def _labelled_files(source: str) -> tuple[list[str], list[str]]:
    rows = labelled_files(source)
    if not rows:
        raise TrainError(f"--data {source}: no labelled images found")
    return [p for p, _ in rows], [label for _, label in rows]


def read_shard(shard: dict[str, Any]) -> Iterator[tuple[str, bytes, str | None]]:
    """(name, encoded bytes, label) of every record of one shard (runs in the workers)."""
    kind = shard["kind"]
    if kind == "files":
        for path, label in zip(shard["files"], shard["file_labels"], strict=True):
            try:
                data = Path(path).read_bytes()
            except OSError:
                data = b""  # refused as "empty" by the decoder, counted as skipped
            yield path, data, label
        return
    source_kind = SourceKind(kind)
    names = list(datasets.FASHION_MNIST_LABELS) if source_kind is SourceKind.IDX else None
    records = sourceformats.read(
        source_kind, Path(shard["path"]), int(shard["start"]), int(shard["count"]), names
    )
    for _, _, record in records:
        yield record.name, record.data, record.label
