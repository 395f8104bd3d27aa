"""What a backfill is asked to do and what it reports: ``BackfillOptions``, the source
formats and re-tag modes, ``Split`` (one unit of progress), ``BackfillSummary`` and
``BackfillError``. Plain data: no Spark, no services."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from imagetag.errors import ConfigError, ImagetagError, check_minimums
from imagetag.sourceformats import SourceKind

# Source formats (``--format``; sniffed when not given): every kind of the registry.
KINDS = tuple(kind.value for kind in SourceKind)
RETAG_MODES = ("older", "review", "all")
# Default split sizes: records for the indexable formats and Kafka, files for folders (bytes
# for Parquet and the archive: ``split_bytes``).
DEFAULT_SPLIT_RECORDS = {
    SourceKind.IDX: 5000,
    SourceKind.TINY: 5000,
    SourceKind.CIFAR: 5000,
    SourceKind.KAFKA: 5000,
    SourceKind.FOLDER: 1000,
}
DEFAULT_SPLIT_BYTES = 64 * 1024 * 1024


class BackfillError(ImagetagError):
    """A backfill cannot start: unknown source, bad option, state of another source."""


@dataclass(frozen=True)
class BackfillOptions:
    """What to backfill and how. ``kind`` None = sniffed from ``source``.

    Raises ConfigError when an option is out of range (an unknown ``kind`` or ``retag``, a
    split size, round size or batch size below 1, a negative ``max_splits``).
    """

    source: str = "archive"
    kind: SourceKind | None = None
    since: dt.date | None = None
    retag: str | None = None
    state_dir: str | None = None
    split_size: int | None = None  # records (files for a folder) per split
    split_bytes: int = DEFAULT_SPLIT_BYTES  # Parquet / archive splits
    splits_per_round: int | None = None
    max_splits: int | None = None
    glob: str | None = None
    label_from_folder: bool = False
    bytes_column: str = "image"
    label_column: str | None = None
    archive: bool | None = None  # None: archive images from external sources
    kafka_sinks: bool = True  # write review / dead letters (a rebuild writes Solr only)
    batch_size: int = 500  # Arrow records per batch handed to tag_batch
    progress: bool | None = None  # None: only on a terminal
    fresh: bool = False

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"unknown source format {self.kind!r}: one of {', '.join(KINDS)}")
        if self.kind is not None:
            object.__setattr__(self, "kind", SourceKind(self.kind))
        if self.retag is not None and self.retag not in RETAG_MODES:
            raise ConfigError(f"retag must be one of {', '.join(RETAG_MODES)}, not {self.retag!r}")
        check_minimums(
            self,
            {
                "split_size": 1,
                "split_bytes": 1,
                "splits_per_round": 1,
                "max_splits": 0,
                "batch_size": 1,
            },
        )


@dataclass(frozen=True)
class Split:
    """One unit of progress: files, a record range of a file, or a Kafka offset range.

    ``index`` is its position in the plan (the Kafka-shaped ``partition`` of its rows);
    ``count`` is the number of records when known (None: the whole file(s)).
    """

    index: int
    kind: SourceKind
    paths: tuple[str, ...]
    start: int = 0
    count: int | None = None
    part: int = -1  # Kafka partition
    size: int = 0  # bytes, when known

    @property
    def key(self) -> str:
        """Stable id of the split's content (the progress record's name)."""
        body = json.dumps([self.kind, list(self.paths), self.start, self.count, self.part])
        return hashlib.sha1(body.encode()).hexdigest()[:24]

    def describe(self) -> dict[str, Any]:
        first = self.paths[0] if self.paths else ""
        return {
            "index": self.index,
            "kind": self.kind,
            "files": len(self.paths),
            "first": first,
            "start": self.start,
            "count": self.count,
            "part": self.part,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Split:
        data = json.loads(text)
        data["paths"] = tuple(data["paths"])
        data["kind"] = SourceKind(data["kind"])
        return cls(**data)


@dataclass
class BackfillSummary:
    """What a run did (this run's counts; ``splits_skipped`` were finished by earlier runs)."""

    source: str
    kind: str
    state_dir: str
    retag: str | None = None
    retag_ids: int | None = None
    splits_total: int = 0
    splits_skipped: int = 0
    splits_done: int = 0
    images: int = 0
    tagged: int = 0
    review: int = 0
    dead: int = 0
    quarantined: int = 0  # of dead: poison records of a split that failed deterministically
    refused: int = 0
    seconds: float = 0.0
    model_versions: list[str] = field(default_factory=list)

    @property
    def splits_remaining(self) -> int:
        return self.splits_total - self.splits_skipped - self.splits_done

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["splits_remaining"] = self.splits_remaining
        data["images_per_s"] = round(self.images_per_s, 1)
        data["seconds"] = round(self.seconds, 2)
        return data

    def format(self) -> str:
        retag = f" (re-tag {self.retag}: {self.retag_ids} ids)" if self.retag else ""
        return "\n".join(
            [
                f"source:   {self.kind} {self.source}{retag}",
                f"splits:   {self.splits_done} done now, {self.splits_skipped} done before, "
                f"{self.splits_remaining} left of {self.splits_total}  (state {self.state_dir})",
                f"images:   {self.images} in {self.seconds:.1f} s ({self.images_per_s:.1f} img/s)",
                f"tagged:   {self.tagged}",
                f"review:   {self.review}",
                f"dead:     {self.dead} ({self.quarantined} quarantined as poison)",
                f"refused:  {self.refused} (over limits.max_bytes, not read)",
                f"model:    {', '.join(self.model_versions) or '-'}",
            ]
        )
