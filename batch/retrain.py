"""Periodic retraining: train on the labelled corpus, promote only if better, re-tag.

    imagetag retrain --data fashion-mnist [--every 1d] [--retag all]
    imagetag submit retrain --data hdfs-mounted/corpus ...   # through spark-submit

``run(settings, RetrainOptions(...))`` is the job (``imagetag.commands.retrain`` turns the
command line into the options); ``retrain_once`` is one run in a Spark session the caller owns.

One run:

1. **corpus**: the configured training sets (``--data``, repeatable: ``fashion-mnist``, a
   CIFAR-10 batches folder, a class-per-folder tree, a ``path,label`` CSV) plus every archived
   image that carries a ground-truth label (the stream's archive and what backfills archived),
   written as one ``path,label`` CSV under ``<checkpoint_dir>/retrain/``. Idx/CIFAR records and
   archived images are exported once as PNG/original files named by their content, so each
   image always lands on the same side of the held-out split (the training job splits a CSV by
   a hash of the path): the split is fixed, and grows only with new images;
2. **skip** when the corpus is exactly what ``CURRENT`` was trained on (same fingerprint);
3. **train** with ``batch.train.train(promote="if-better")``: the new bundle becomes ``CURRENT``
   only if its accuracy on the held-out split beats ``CURRENT``'s on the same split;
4. **re-tag** after a promotion: ``backfill --retag all`` (Solr documents of older models and
   the images waiting in review, from the archive) — ``--retag older`` or ``review`` to narrow.

``--every DURATION`` repeats it in the foreground (``30m``, ``6h``, ``1d``); SIGTERM / Ctrl-C
stop it between runs. For cron, run it without ``--every`` (see the README).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.backfill import RETAG_MODES
from batch.training.corpus import labelled_files, training_kind
from batch.training.options import TrainError
from imagetag import sourceformats
from imagetag.datasets import FASHION_MNIST_LABELS, FASHION_MNIST_ROOT
from imagetag.errors import ConfigError, ImagetagError, check_minimums
from imagetag.formats import SUFFIXES
from imagetag.settings import Settings
from imagetag.sourceformats import SourceKind

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from batch.backfill import BackfillSummary

log = logging.getLogger("imagetag.retrain")

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


class RetrainError(ImagetagError):
    """No labelled data to train on, or a configured training set cannot be read."""


# The TrainOptions a retrain sets itself: the corpus it built and its promotion policy.
_TRAIN_OWN = ("data", "promote")


@dataclass(frozen=True)
class RetrainOptions:
    """What a retrain trains on, what it re-tags after a promotion, and how often it runs.

    Raises ConfigError for an unknown ``retag`` mode, ``train`` settings that are not valid
    ``TrainOptions`` fields and values, a non-positive ``every_s`` or ``max_runs``.
    """

    data: tuple[str, ...] = ()
    archive_labels: bool = True
    retag: str | None = "all"  # older | review | all; None: do not re-tag after a promotion
    train: dict[str, Any] = field(default_factory=dict)  # TrainOptions fields (k, trees, ...)
    force: bool = False  # train even when the corpus did not change
    progress: bool | None = None
    every_s: float | None = None  # None: run once; else now and then every every_s seconds
    max_runs: int | None = None  # with every_s: stop after this many runs

    def __post_init__(self) -> None:
        from batch.train import TrainOptions

        if self.retag is not None and self.retag not in RETAG_MODES:
            raise ConfigError(
                f"retag must be one of {', '.join(RETAG_MODES)} or None, not {self.retag!r}"
            )
        known = {f.name for f in fields(TrainOptions)} - set(_TRAIN_OWN)
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ConfigError(f"train: not training options: {', '.join(unknown)}")
        TrainOptions(data="-", **self.train)  # raises ConfigError for a bad value
        if self.every_s is not None and not self.every_s > 0:
            raise ConfigError(f"every_s must be > 0, got {self.every_s}")
        check_minimums(self, {"max_runs": 1})


@dataclass
class RetrainResult:
    corpus: str
    images: int
    from_archive: int
    skipped: bool = False
    version: str | None = None
    promoted: bool = False
    reason: str = ""
    accuracy: float | None = None
    previous: str | None = None
    backfill: BackfillSummary | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backfill"] = self.backfill.as_dict() if self.backfill else None
        return data

    def format(self) -> str:
        lines = [f"corpus:   {self.images} labelled images ({self.from_archive} from the archive)"]
        if self.skipped:
            lines.append(f"skipped:  {self.reason}")
        else:
            accuracy = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
            lines.append(f"trained:  {self.version} (held-out accuracy {accuracy})")
            verdict = "promoted" if self.promoted else "not promoted"
            lines.append(f"{verdict}: {self.reason} (CURRENT was {self.previous or '-'})")
        if self.backfill is not None:
            lines.append(self.backfill.format())
        lines.append(f"time:     {self.seconds:.1f} s")
        return "\n".join(lines)


# -- the labelled corpus -------------------------------------------------------------------------


def _slug(label: str) -> str:
    return _SLUG.sub("_", label).strip("_") or "_"


def _write_once(path: Path, data: bytes) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def export_records(
    records: Iterable[tuple[str, bytes, str | None]], folder: Path
) -> Iterator[tuple[str, str]]:
    """Write (name, bytes, label) records as ``folder/<label>/<sha256>.png`` (once; existing
    files are kept); yields (path, label) of the labelled ones."""
    for _, data, label in records:
        if label is None:
            continue
        path = folder / _slug(label) / f"{hashlib.sha256(data).hexdigest()}.png"
        _write_once(path, data)
        yield str(path), label


def dataset_rows(source: str, work: Path) -> list[tuple[str, str]]:
    """(absolute path, label) of every labelled image of a configured training set, of the
    kinds the trainer reads (``batch.training.corpus.training_kind``): Fashion-MNIST and
    CIFAR batches are exported once as PNG files under ``work``; a folder or a CSV lists its
    files as they are."""
    try:
        kind = training_kind(source)
    except TrainError as exc:
        raise RetrainError(str(exc)) from exc
    if kind is None or kind is SourceKind.FOLDER:
        return labelled_files(source)
    if kind is SourceKind.IDX:
        folder = work / "sets" / f"fashion-mnist-{_digest(str(FASHION_MNIST_ROOT))}"
        names = list(FASHION_MNIST_LABELS)
        files = [sourceformats.fashion_mnist(split) for split in ("train", "test")]
    else:
        folder = work / "sets" / f"cifar-{_digest(str(Path(source).resolve()))}"
        names, files = None, [Path(source)]
    rows: list[tuple[str, str]] = []
    for path in files:
        records = sourceformats.read(kind, path, label_names=names)
        rows += export_records(((r.name, r.data, r.label) for _, _, r in records), folder)
    return rows


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def export_partition(folder: str) -> Callable[[Iterable[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """mapInPandas body: archived (id, image, content_type, label) -> files named by id."""

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        for frame in frames:
            out = []
            for image_id, image, content_type, label in zip(
                frame["id"], frame["image"], frame["content_type"], frame["label"], strict=True
            ):
                if hashlib.sha256(bytes(image)).hexdigest() != image_id:
                    continue  # not honest about its content: never train on it
                extension = SUFFIXES.get(str(content_type), ".img")
                path = Path(folder) / _slug(str(label)) / f"{image_id}{extension}"
                _write_once(path, bytes(image))
                out.append((str(path), str(label)))
            yield pd.DataFrame(out, columns=["path", "label"])

    return run


def latest_labels(archived: DataFrame) -> DataFrame:
    """(id, image, content_type, label) of each archived image that carries a label, once: its
    LAST labelled record (latest ``ingested_at``, then Kafka offset). An image sent again with
    a corrected label (the web app's review corrections) is archived again, and the correction
    wins over the label it was first sent with."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = [F.col("ingested_at").desc_nulls_last()]
    if "kafka_offset" in archived.columns:
        order.append(F.col("kafka_offset").desc_nulls_last())
    latest = Window.partitionBy("id").orderBy(*order)
    return (
        archived.where("label IS NOT NULL AND label != ''")
        .withColumn("_rank", F.row_number().over(latest))
        .where("_rank = 1")
        .select("id", "image", "content_type", "label")
    )


def archive_rows(spark: SparkSession, settings: Settings, work: Path) -> list[tuple[str, str]]:
    """Export the archived images that carry a label (stream archive + backfill archive) as
    files under ``work/archive``; returns their (path, label)."""
    from imagetag.hadoop import archive_roots, parquet_files, spark_path

    files = [path for path, _ in parquet_files(spark, archive_roots(settings))]
    if not files:
        return []
    folder = str((work / "archive").resolve())
    labelled = latest_labels(spark.read.parquet(*[spark_path(f) for f in files]))
    rows = labelled.mapInPandas(export_partition(folder), "path string, label string").collect()
    return [(str(r["path"]), str(r["label"])) for r in rows]


def write_corpus(rows: Iterable[tuple[str, str]], path: Path) -> int:
    """One ``path,label`` CSV, sorted by path (a stable order: ``--limit`` takes a stable
    subset); a path listed twice keeps its first label. Returns the number of rows."""
    unique: dict[str, str] = {}
    for file, label in rows:
        unique.setdefault(file, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "label"])
        for file in sorted(unique):
            writer.writerow([file, unique[file]])
    os.replace(tmp, path)
    return len(unique)


# -- one run and the schedule --------------------------------------------------------------------


def retrain_once(spark: SparkSession, settings: Settings, options: RetrainOptions) -> RetrainResult:
    """Build the labelled corpus, train, promote if better, re-tag after a promotion."""
    from batch.backfill import BackfillOptions, run_backfill
    from batch.train import TrainOptions, plan_corpus, train
    from imagetag.bundle import ModelStore

    started = time.monotonic()
    work = Path(settings.checkpoint_dir) / "retrain"
    rows: list[tuple[str, str]] = []
    for source in options.data:
        rows += dataset_rows(source, work)
    from_archive = archive_rows(spark, settings, work) if options.archive_labels else []
    corpus = work / "corpus.csv"
    images = write_corpus([*rows, *from_archive], corpus)
    result = RetrainResult(str(corpus), images, len(from_archive))
    if images == 0:
        raise RetrainError("no labelled images: pass --data or archive images with labels")
    store = ModelStore(settings.model_store, spark)
    result.previous = store.current_version()
    train_options = TrainOptions(data=str(corpus), promote="if-better", **options.train)
    fingerprint = plan_corpus(str(corpus), train_options.limit, train_options.test_fraction)
    if result.previous and not options.force:
        trained_on = store.manifest(result.previous).get("data", {}).get("fingerprint")
        if trained_on == fingerprint.fingerprint:
            result.skipped = True
            result.reason = (
                f"{result.previous} was trained on this very corpus (--force to retrain)"
            )
            result.seconds = time.monotonic() - started
            return result
    trained = train(settings, train_options, spark=spark, out=log.info)
    result.version, result.promoted, result.reason = (
        trained.version,
        trained.promoted,
        trained.reason,
    )
    result.accuracy = float(trained.manifest.get("metrics", {}).get("accuracy", 0.0))
    if trained.promoted and options.retag:
        result.backfill = run_backfill(
            spark,
            settings,
            BackfillOptions(source="archive", retag=options.retag, progress=options.progress),
        )
    result.seconds = time.monotonic() - started
    return result


class Schedule:
    """A foreground schedule: run now, then every ``interval_s`` (measured from each start);
    SIGTERM / SIGINT stop it between runs."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.stop = threading.Event()

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())

    def run(self, job: Callable[[], None], max_runs: int | None = None) -> int:
        runs = 0
        while not self.stop.is_set():
            started = time.monotonic()
            job()
            runs += 1
            if max_runs is not None and runs >= max_runs:
                break
            wait = max(0.0, self.interval_s - (time.monotonic() - started))
            log.info("next retrain in %.0f s", wait)
            self.stop.wait(wait)
        return runs


@dataclass
class RetrainSummary:
    """What ``run`` did: how many runs, how many of them failed (scheduled runs only: a single
    run raises instead), the last run's result."""

    runs: int = 0
    failures: int = 0
    last: RetrainResult | None = None


def run(
    settings: Settings,
    options: RetrainOptions,
    on_result: Callable[[RetrainResult], None] | None = None,
) -> RetrainSummary:
    """The retrain job: once, or now and then every ``options.every_s`` in the foreground
    (SIGTERM / SIGINT stop it between runs). ``on_result`` gets each run's result as it
    finishes. Each run gets its own Spark session, stopped afterwards (nothing held between
    runs). A single run raises what ``retrain_once`` raises; a failed scheduled run is logged
    and counted, and the schedule goes on."""
    from imagetag.spark import spark_session

    summary = RetrainSummary()

    def job() -> None:
        summary.runs += 1
        spark = spark_session(settings, "imagetag-retrain")
        try:
            result = retrain_once(spark, settings, options)
        except ImagetagError as exc:
            if options.every_s is None:
                raise
            summary.failures += 1
            log.error("retrain failed: %s (next run as scheduled)", exc)
            return
        finally:
            with contextlib.suppress(Exception):
                spark.stop()
        summary.last = result
        if on_result is not None:
            on_result(result)

    if options.every_s is None:
        job()
    else:
        schedule = Schedule(options.every_s)
        schedule.install_signals()
        schedule.run(job, options.max_runs)
    return summary
