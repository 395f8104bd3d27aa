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

FASHION_MNIST = "fashion-mnist"
SHARD_SIZE = 1000  # records per shard: the unit of parallelism of the read stages
IMAGE_EXTENSIONS = ("*.jpg", "*.jpeg", "*.png", "*.gif", "*.bmp", "*.tif", "*.tiff", "*.webp")


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


def _ranges(
    split: str, kind: str, path: Path, labels: Path | None, total: int, limit: int | None
) -> Iterator[dict[str, Any]]:
    total = total if limit is None else min(total, limit)
    for start in range(0, total, SHARD_SIZE):
        yield {
            "split": split,
            "kind": kind,
            "path": str(path),
            "labels_path": str(labels) if labels else None,
            "start": start,
            "count": min(SHARD_SIZE, total - start),
            "files": None,
            "file_labels": None,
        }


def plan_corpus(source: str, limit: int | None, test_fraction: float) -> Corpus:
    """List ``source`` as shards; reads headers and names only, never the images."""
    from imagetag import datasets

    shards: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    counts = {"train": 0, "test": 0}
    classes: list[str] | None = None
    if source == FASHION_MNIST or source.startswith(FASHION_MNIST + ":"):
        root = source.partition(":")[2] or str(datasets.FASHION_MNIST_ROOT)
        classes = list(datasets.FASHION_MNIST_LABELS)
        for split in ("train", "test"):
            images, label_file = datasets.fashion_mnist_paths(split, root)
            total = datasets.count_records(images)
            shards += _ranges(split, "idx", images, label_file, total, limit)
            for path in (images, label_file):
                digest.update(path.name.encode())
                _sha256_file(path, digest)
        description = f"Fashion-MNIST ({root})"
    elif Path(source).is_dir() and any(Path(source).glob("data_batch_*")):
        batches = datasets.cifar10_batches(source)
        for batch in batches:
            split = "test" if batch.name.startswith("test") else "train"
            total = datasets.count_records(batch)
            remaining = None if limit is None else max(0, limit - counts[split])
            part = list(_ranges(split, "cifar", batch, None, total, remaining))
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
                        "labels_path": None,
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


def _labelled_files(source: str) -> tuple[list[str], list[str]]:
    from imagetag import datasets

    path = Path(source)
    files: list[str] = []
    labels: list[str] = []
    if path.is_file() and path.suffix.lower() == ".csv":
        for name, label in datasets.read_label_csv(path).items():
            file = Path(name) if Path(name).is_absolute() else path.parent / name
            files.append(str(file.resolve()))
            labels.append(label)
    elif path.is_dir():
        lookup = datasets.LabelLookup(path, "folder")
        for file in datasets.iter_files(path, [f"**/{p}" for p in IMAGE_EXTENSIONS]):
            folder_label = lookup(file)
            if folder_label is not None:
                files.append(str(file.resolve()))
                labels.append(folder_label)
    else:
        raise TrainError(
            f"--data {source}: not fashion-mnist, a CIFAR batches folder, a folder or a .csv"
        )
    if not files:
        raise TrainError(f"--data {source}: no labelled images found")
    return files, labels


def read_shard(shard: dict[str, Any]) -> Iterator[tuple[str, bytes, str | None]]:
    """(name, encoded bytes, label) of every record of one shard (runs in the workers)."""
    from imagetag import datasets

    kind = shard["kind"]
    if kind == "idx":
        records = datasets.read_idx(
            shard["path"],
            shard["labels_path"],
            start=int(shard["start"]),
            count=int(shard["count"]),
            label_names=datasets.FASHION_MNIST_LABELS,
        )
        for record in records:
            yield record.name, record.data, record.label
    elif kind == "cifar":
        for record in datasets.read_cifar10(
            shard["path"], int(shard["start"]), int(shard["count"])
        ):
            yield record.name, record.data, record.label
    elif kind == "files":
        for path, label in zip(shard["files"], shard["file_labels"], strict=True):
            try:
                data = Path(path).read_bytes()
            except OSError:
                data = b""  # refused as "empty" by the decoder, counted as skipped
            yield path, data, label
    else:  # pragma: no cover - plan_corpus only makes the kinds above
        raise TrainError(f"unknown shard kind {kind}")
