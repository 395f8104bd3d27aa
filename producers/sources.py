"""Image sources for the producer: lazy iterables of :class:`SourceItem`.

Built on the readers in :mod:`imagetag.datasets`; nothing here holds more than one image (or
one CIFAR batch / SequenceFile block) in memory. Files are yielded as *paths* so that the
producer stats and reads them itself and can refuse an empty, oversize or unreadable file
without this module loading it.

:func:`open_source` picks a source from a spec string::

    photos/                      a folder, recursive (glob filters: patterns=...)
    photos/cat.jpg               one file
    fashion-mnist[:train|:test]  Debian's Fashion-MNIST (labels = class names)
    cifar-10-batches-py/         a CIFAR-10/100 python folder (or one data_batch_N file)
    tiny_images.bin              Tiny Images (raw 32×32×3 records)
    part-00000 / x.seq           a Hadoop SequenceFile (recognised by its SEQ magic)
    train-images-idx3-ubyte.gz   an idx file (labels from the matching labels-idx1 file)

Indexable sources (idx, Fashion-MNIST, CIFAR, Tiny Images) take a ``[start:stop]`` suffix,
e.g. ``tiny_images.bin[1000000:1001000]`` or ``fashion-mnist:test[:500]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from imagetag import datasets
from imagetag.datasets import (
    FASHION_MNIST_LABELS,
    DatasetError,
    LabelLookup,
    Record,
    count_records,
    fashion_mnist_paths,
    iter_files,
)

LabelFrom = Literal["folder"] | str | Path | None


@dataclass(frozen=True)
class SourceItem:
    """One image to send: a file path (the producer reads it) or bytes, with its label, its
    source URI and metadata for the ImageEvent."""

    image: bytes | Path = field(repr=False)
    source: str
    label: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class Source:
    """A named, lazily iterated collection of images. ``len_hint()`` is a cheap estimate
    for progress bars (None when unknown)."""

    def __init__(self, name: str, items: Iterable[SourceItem], len_hint: int | None) -> None:
        self.name = name
        self._items = items
        self._len_hint = len_hint

    def __iter__(self) -> Iterator[SourceItem]:
        return iter(self._items)

    def len_hint(self) -> int | None:
        return self._len_hint

    def __repr__(self) -> str:
        return f"Source({self.name!r})"


def _window(total: int, start: int, count: int | None) -> int:
    stop = total if count is None else min(total, start + count)
    return max(0, stop - start)


def _records(records: Iterator[Record], uri: str, dataset: str, start: int) -> Iterator[SourceItem]:
    for index, record in enumerate(records, start=start):
        yield SourceItem(
            record.data,
            f"{uri}#{index}",
            record.label,
            {"dataset": dataset, "name": record.name},
        )


# -- the sources ----------------------------------------------------------------------------


def files(paths: Iterable[str | Path], label: str | None = None) -> Source:
    """The given files, as they are (one label for all, or none)."""
    resolved = [Path(p) for p in paths]
    items = (SourceItem(p, p.absolute().as_uri(), label, {"name": p.name}) for p in resolved)
    return Source(", ".join(str(p) for p in resolved[:3]), items, len(resolved))


def folder(
    root: str | Path,
    patterns: Iterable[str] = ("**/*",),
    label_from: LabelFrom = None,
) -> Source:
    """The files under ``root`` (recursive, sorted, hidden files skipped) matching any glob.

    ``label_from="folder"``: the parent folder's name; a CSV path (``path,label`` rows, paths
    relative to ``root`` or to the CSV, or absolute): the label listed there.
    """
    root = Path(root)
    patterns = tuple(patterns)
    lookup = LabelLookup(root, label_from)
    base = root if root.is_dir() else root.parent

    def items() -> Iterator[SourceItem]:
        for path in iter_files(root, patterns):
            yield SourceItem(
                path,
                path.absolute().as_uri(),
                lookup(path),
                {"name": path.relative_to(base).as_posix()},
            )

    return Source(str(root), items(), None)


def cifar10(path: str | Path, start: int = 0, count: int | None = None) -> Source:
    """A CIFAR-10/100 python batch file, or every batch of a ``cifar-10-batches-py`` folder
    (``start``/``count`` then index the concatenation)."""
    path = Path(path)
    batches = datasets.cifar10_batches(path) if path.is_dir() else [path]
    if not batches:
        raise DatasetError(f"no CIFAR batches (data_batch_*, test_batch) in {path}")

    def items() -> Iterator[SourceItem]:
        offset, remaining = start, count
        for batch in batches:
            if remaining is not None and remaining <= 0:
                return
            if offset:
                size = count_records(batch)  # unpickles the batch: only when skipping
                if offset >= size:
                    offset -= size
                    continue
            taken = 0
            for item in _records(
                datasets.read_cifar10(batch, offset, remaining),
                batch.absolute().as_uri(),
                "cifar",
                offset,
            ):
                taken += 1
                yield item
            remaining = None if remaining is None else remaining - taken
            offset = 0

    return Source(str(path), items(), count)


def tiny_images(path: str | Path, start: int = 0, count: int | None = None) -> Source:
    """Records ``start .. start+count`` of a Tiny Images ``.bin`` (memory-mapped)."""
    path = Path(path)
    total = count_records(path)
    return Source(
        f"{path}[{start}:{'' if count is None else start + count}]",
        _records(
            datasets.read_tiny_images(path, start, count),
            path.absolute().as_uri(),
            "tiny-images",
            start,
        ),
        _window(total, start, count),
    )


def sequence_file(path: str | Path) -> Source:
    """The (filename, bytes) pairs of a Hadoop SequenceFile; source URI ``<file>#<filename>``."""
    path = Path(path)
    uri = path.absolute().as_uri()

    def items() -> Iterator[SourceItem]:
        for record in datasets.read_sequence_file(path):
            yield SourceItem(
                record.data,
                f"{uri}#{quote(record.name, safe='/:')}",
                record.label,
                {"dataset": "sequence-file", "name": record.name},
            )

    return Source(str(path), items(), None)


def idx(
    images: str | Path,
    labels: str | Path | None = None,
    start: int = 0,
    count: int | None = None,
    label_names: list[str] | None = None,
    dataset: str = "idx",
) -> Source:
    """An idx image file (gzip or not) with its optional labels file, as grayscale PNGs."""
    images = Path(images)
    total = count_records(images)
    return Source(
        str(images),
        _records(
            datasets.read_idx(images, labels, start, count, label_names),
            images.absolute().as_uri(),
            dataset,
            start,
        ),
        _window(total, start, count),
    )


def fashion_mnist(
    split: Literal["train", "test"] = "train",
    start: int = 0,
    count: int | None = None,
    root: str | Path = datasets.FASHION_MNIST_ROOT,
) -> Source:
    """Fashion-MNIST (Debian's ``dataset-fashion-mnist``), labelled with the class names."""
    images, labels = fashion_mnist_paths(split, root)
    source = idx(images, labels, start, count, FASHION_MNIST_LABELS, dataset="fashion-mnist")
    source.name = f"fashion-mnist:{split}"
    return source


# -- picking a source from a spec -------------------------------------------------------------

_SLICE = re.compile(r"^(?P<spec>.+)\[(?P<start>\d*):(?P<stop>\d*)\]$")
_FASHION = re.compile(r"^fashion-mnist(?::(?P<split>train|test))?$")


def _split_slice(spec: str) -> tuple[str, int, int | None]:
    match = _SLICE.match(spec)
    if match is None or Path(spec).exists():
        return spec, 0, None
    start = int(match["start"] or 0)
    stop = int(match["stop"]) if match["stop"] else None
    if stop is not None and stop < start:
        raise DatasetError(f"{spec}: empty range")
    return match["spec"], start, None if stop is None else stop - start


def _sniff(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


def open_source(
    spec: str,
    label_from: LabelFrom = None,
    patterns: Iterable[str] = ("**/*",),
    start: int = 0,
    count: int | None = None,
) -> Source:
    """The source a spec names (see the module docstring): by name, folder contents, file
    magic and suffix. ``start``/``count`` (or a ``[start:stop]`` suffix) select a range of an
    indexable source. ``label_from`` and ``patterns`` apply to folders.

    A path that does not exist is returned as a one-file source, so the producer refuses it
    as ``unreadable`` and the run goes on. Raises DatasetError for an unknown name or an
    unusable range.
    """
    spec, slice_start, slice_count = _split_slice(spec)
    start += slice_start
    count = (
        slice_count
        if count is None
        else (count if slice_count is None else min(count, slice_count))
    )

    fashion = _FASHION.match(spec)
    if fashion is not None and not Path(spec).exists():
        split: Literal["train", "test"] = "test" if fashion["split"] == "test" else "train"
        return fashion_mnist(split, start, count)

    path = Path(spec)
    if path.is_dir():
        if (path / "batches.meta").is_file() or any(path.glob("data_batch_*")):
            return cifar10(path, start, count)
        return folder(path, patterns, label_from)
    if not path.is_file():
        return files([path])
    head = _sniff(path)
    if head[:3] == b"SEQ":
        return sequence_file(path)
    name = path.name
    if "idx" in name and ("-ubyte" in name or head[:2] in (b"\x00\x00", b"\x1f\x8b")):
        labels = path.with_name(name.replace("images-idx3", "labels-idx1"))
        return idx(path, labels if labels != path and labels.is_file() else None, start, count)
    if path.suffix == ".bin":
        return tiny_images(path, start, count)
    if head[:1] == b"\x80" and (
        name.startswith(("data_batch", "test_batch")) or name in ("train", "test")
    ):
        return cifar10(path, start, count)
    if label_from is not None:
        return folder(path, ("*",), label_from)  # one file, labelled like a folder's
    return files([path])
