"""Image sources for the producer: lazy iterables of :class:`SourceItem`.

Built on the readers in :mod:`imagetag.datasets`; nothing here holds more than one image (or
one CIFAR batch / SequenceFile block) in memory. Files are yielded as *paths* so that the
producer stats and reads them itself and can refuse an empty, oversize or unreadable file
without this module loading it.

:func:`open_source` picks a source from a spec string, recognised by the registry of source
formats (:mod:`imagetag.sourceformats`, the rules the backfill and the trainer use too)::

    photos/                      a folder, recursive (glob filters: patterns=...)
    photos/cat.jpg               one file
    fashion-mnist[:train|:test]  Debian's Fashion-MNIST (labels = class names)
    cifar-10-batches-py/         a CIFAR-10/100 python folder (or one data_batch_N file)
    tiny_images.bin              Tiny Images (raw 32×32×3 records)
    part-00000 / x.seq           a Hadoop SequenceFile (its SEQ magic), or a folder of them
    train-images-idx3-ubyte.gz   an idx file (labels from the matching labels-idx1 file)

Parquet tables, the archive and Kafka are the backfill's to read (``imagetag backfill``).

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
from imagetag.datasets import DatasetError, LabelLookup, iter_files
from imagetag.sourceformats import (
    FORMATS,
    SourceKind,
    fashion_mnist_split,
    parts,
    read,
    sniff_path,
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


def _indexed(
    kind: SourceKind,
    path: Path,
    start: int,
    count: int | None,
    hint: int | None,
    dataset: str | None = None,
    label_names: list[str] | None = None,
) -> Source:
    """Records ``start .. start+count`` of an indexable source, each with the URI of the file
    it is in and its index there (``<file>#<index>``)."""
    dataset = dataset or FORMATS[kind].dataset
    items = (
        SourceItem(
            record.data,
            f"{part.absolute().as_uri()}#{index}",
            record.label,
            {"dataset": dataset, "name": record.name},
        )
        for part, index, record in read(kind, path, start, count, label_names)
    )
    return Source(str(path), items, hint)


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
    if not parts(SourceKind.CIFAR, path):
        raise DatasetError(f"no CIFAR batches (data_batch_*, test_batch) in {path}")
    return _indexed(SourceKind.CIFAR, path, start, count, count)


def tiny_images(path: str | Path, start: int = 0, count: int | None = None) -> Source:
    """Records ``start .. start+count`` of a Tiny Images ``.bin`` (memory-mapped)."""
    path = Path(path)
    total = datasets.count_tiny_images(path)
    source = _indexed(SourceKind.TINY, path, start, count, _window(total, start, count))
    source.name = f"{path}[{start}:{'' if count is None else start + count}]"
    return source


def sequence_file(path: str | Path) -> Source:
    """The (filename, bytes) pairs of a Hadoop SequenceFile, or of every SequenceFile in a
    folder; source URI ``<file>#<filename>``."""
    path = Path(path)

    def items() -> Iterator[SourceItem]:
        for part in parts(SourceKind.SEQUENCEFILE, path):
            uri = part.absolute().as_uri()
            for record in datasets.read_sequence_file(part):
                yield SourceItem(
                    record.data,
                    f"{uri}#{quote(record.name, safe='/:')}",
                    record.label,
                    {"dataset": "sequence-file", "name": record.name},
                )

    return Source(str(path), items(), None)


def idx(
    images: str | Path,
    start: int = 0,
    count: int | None = None,
    label_names: list[str] | None = None,
    dataset: str | None = None,
) -> Source:
    """An idx image file (gzip or not), as grayscale PNGs, labelled from the labels file beside
    it (through ``label_names``; Fashion-MNIST's for Debian's copy, class numbers otherwise)."""
    images = Path(images)
    hint = _window(datasets.count_idx(images), start, count)
    return _indexed(SourceKind.IDX, images, start, count, hint, dataset, label_names)


def fashion_mnist(
    split: Literal["train", "test"] = "train",
    start: int = 0,
    count: int | None = None,
    root: str | Path = datasets.FASHION_MNIST_ROOT,
) -> Source:
    """Fashion-MNIST (Debian's ``dataset-fashion-mnist``), labelled with the class names."""
    images, _ = datasets.fashion_mnist_paths(split, root)
    names = list(datasets.FASHION_MNIST_LABELS)
    source = idx(images, start, count, names, dataset="fashion-mnist")
    source.name = f"fashion-mnist:{split}"
    return source


# -- picking a source from a spec -------------------------------------------------------------

_SLICE = re.compile(r"^(?P<spec>.+)\[(?P<start>\d*):(?P<stop>\d*)\]$")


def _split_slice(spec: str) -> tuple[str, int, int | None]:
    match = _SLICE.match(spec)
    if match is None or Path(spec).exists():
        return spec, 0, None
    start = int(match["start"] or 0)
    stop = int(match["stop"]) if match["stop"] else None
    if stop is not None and stop < start:
        raise DatasetError(f"{spec}: empty range")
    return match["spec"], start, None if stop is None else stop - start


def open_source(
    spec: str,
    label_from: LabelFrom = None,
    patterns: Iterable[str] = ("**/*",),
    start: int = 0,
    count: int | None = None,
) -> Source:
    """The source a spec names (see the module docstring), recognised by
    :mod:`imagetag.sourceformats` as the backfill and the trainer recognise it.
    ``start``/``count`` (or a ``[start:stop]`` suffix) select a range of an indexable source.
    ``label_from`` and ``patterns`` apply to folders.

    A path that does not exist is returned as a one-file source, so the producer refuses it
    as ``unreadable`` and the run goes on. Raises DatasetError for an unknown name, an
    unusable range, or a source the producer does not send (Parquet, the archive, Kafka: the
    backfill reads those).
    """
    spec, slice_start, slice_count = _split_slice(spec)
    start += slice_start
    count = (
        slice_count
        if count is None
        else (count if slice_count is None else min(count, slice_count))
    )
    split = fashion_mnist_split(spec)
    if split is not None:
        return fashion_mnist("test" if split == "test" else "train", start, count)
    path = Path(spec)
    kind = sniff_path(path)
    if kind is None:  # a single file of no source format (an image, say), or a missing path
        if label_from is not None and path.is_file():
            return folder(path, ("*",), label_from)  # one file, labelled like a folder's
        return files([path])
    if kind is SourceKind.FOLDER:
        return folder(path, patterns, label_from)
    if kind is SourceKind.SEQUENCEFILE:
        return sequence_file(path)
    if kind is SourceKind.IDX:
        return idx(path, start, count)
    if kind is SourceKind.TINY:
        return tiny_images(path, start, count)
    if kind is SourceKind.CIFAR:
        return cifar10(path, start, count)
    raise DatasetError(f"{spec} is a {kind} source: `imagetag backfill` reads it, not the producer")
