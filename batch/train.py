"""The training job: corpus -> descriptors -> visual dictionary -> forest -> evaluated bundle.

Run it as ``imagetag train --data SOURCE ...`` or with ``spark-submit submit.py train --data
SOURCE ...`` (the same command); from Python, ``train(settings, TrainOptions(...))``.

Stages (each printed with its wall time):

1. **plan**: the driver lists the corpus as *shards* (file, record range, split) without
   reading any image. SOURCE is ``fashion-mnist`` (Debian's idx files), a CIFAR-10 batches
   folder, a class-per-folder tree, or a ``path,label`` CSV. Fashion-MNIST and CIFAR-10 have
   their official test split; folders and CSVs are split by a hash of the path.
2. **sample**: ``mapInPandas`` over the training shards decodes a subset of images (with the
   production decoder and limits) and keeps a few random descriptors of each.
3. **dictionary**: Spark MLlib KMeans (``k-means||``) on that sample.
4. **encode**: ``mapInPandas`` over every shard decodes, featurizes and encodes each image
   (numpy, a batch at a time) into a sparse vector; cached.
5. **forest**: Spark MLlib ``RandomForestClassifier`` on the training vectors.
6. **compile**: the Spark models are saved into the new bundle folder and the forest is
   compiled to numpy (hard votes).
7. **evaluate**: the compiled forest votes on the held-out split (``mapInPandas``): accuracy,
   macro-F1, per-class precision/recall, confusion matrix, and at the vote threshold the
   coverage and precision of the kept tags.
8. **bundle**: manifest + dictionary + compiled forest written; promoted when asked and better.

OpenCV runs single-threaded in each Python worker (Spark already runs one per core).
"""

from __future__ import annotations

import hashlib
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from imagetag.bundle import (
    SPARK_FOREST_DIR,
    SPARK_KMEANS_DIR,
    ModelBundle,
    ModelStore,
    build_manifest,
)
from imagetag.contracts import SHARD_COLUMNS, SHARD_SCHEMA
from imagetag.dictionary import NORMALIZATIONS, POOLINGS, VisualDictionary
from imagetag.errors import ConfigError, ImagetagError, RecordError
from imagetag.features import (
    FEATURIZERS,
    Featurizer,
    choose_color_k,
    get_featurizer,
    single_threaded_opencv,
)
from imagetag.forest import Forest
from imagetag.settings import ImageLimits, Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

FASHION_MNIST = "fashion-mnist"
SHARD_SIZE = 1000  # records per shard: the unit of parallelism of the read stages
IMAGE_EXTENSIONS = ("*.jpg", "*.jpeg", "*.png", "*.gif", "*.bmp", "*.tif", "*.tiff", "*.webp")
# When a trained bundle becomes CURRENT: always (the default), only if it beats CURRENT on the
# held-out split, or never.
PROMOTE_POLICIES = ("always", "if-better", "never")
# The featurizers of imagetag.features' registry, the default first.
DEFAULT_FEATURIZER = "dense-sift"
FEATURIZER_NAMES = (DEFAULT_FEATURIZER, *(n for n in FEATURIZERS if n != DEFAULT_FEATURIZER))


class TrainError(ImagetagError):
    """The corpus cannot be used for training (missing, empty, a single class, ...)."""


# -- options -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run is parameterised by (recorded in the manifest).

    Raises ConfigError for a value the job cannot use (an unknown featurizer, pooling,
    normalization or promotion policy, a count below its minimum, a fraction outside (0, 1)).
    """

    data: str
    featurizer: str = DEFAULT_FEATURIZER
    featurizer_params: dict[str, Any] = field(default_factory=dict)
    k: int = 256
    levels: int = 2
    neighbors: int = 5
    pooling: str = "sum"
    normalization: str = "sqrt"
    trees: int = 100
    depth: int = 20
    max_bins: int = 12
    min_instances: int = 3
    subsampling: float = 1.0
    sample_size: int = 100_000  # descriptors for KMeans
    descriptors_per_image: int = 16
    kmeans_iterations: int = 15
    limit: int | None = None  # at most this many records per split
    test_fraction: float = 0.2  # folders and CSVs only
    promote: str = "always"  # always | if-better | never
    seed: int = 1

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data must name a training set (fashion-mnist, a folder, a CSV)")
        for name, allowed in (
            ("featurizer", FEATURIZER_NAMES),
            ("pooling", POOLINGS),
            ("normalization", NORMALIZATIONS),
            ("promote", PROMOTE_POLICIES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}"
                )
        for name, minimum in (
            ("k", 1),
            ("levels", 1),
            ("neighbors", 1),
            ("trees", 1),
            ("depth", 0),
            ("max_bins", 2),
            ("min_instances", 1),
            ("sample_size", 1),
            ("descriptors_per_image", 1),
            ("kmeans_iterations", 1),
            ("limit", 1),
        ):
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        if self.levels > 4:
            raise ConfigError(f"levels must be 1..4, got {self.levels}")
        if self.neighbors > self.k:
            raise ConfigError(f"neighbors must be 1..k ({self.k}), got {self.neighbors}")
        if not 0 < self.subsampling <= 1:
            raise ConfigError(f"subsampling must be in (0, 1], got {self.subsampling}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


# -- progress and memory -----------------------------------------------------------------------


class Progress:
    """Prints one line per stage with its wall time (and the CPU time the driver JVM, its
    Python workers and this process used, when known); keeps both for the manifest.

    CPU seconds do not depend on what else runs on the machine: on an idle box with N cores
    a stage takes about ``max(cpu / N, ...)`` of wall time.
    """

    def __init__(
        self, out: Callable[[str], None] | None = None, cpu: Callable[[], float] | None = None
    ) -> None:
        self.out = out or (lambda line: print(line, flush=True))
        self.cpu = cpu
        self.timings: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.out(f"[{name}] {what} ...")
        started = time.perf_counter()
        cpu_started = self.cpu() if self.cpu else 0.0
        yield
        elapsed = time.perf_counter() - started
        self.timings[name] = round(elapsed, 1)
        used = ""
        if self.cpu:
            self.cpu_seconds[name] = round(self.cpu() - cpu_started, 1)
            used = f" (cpu {self.cpu_seconds[name]:.1f} s)"
        self.out(f"[{name}] done in {elapsed:.1f} s{used}")

    def note(self, line: str) -> None:
        self.out(f"    {line}")

    @property
    def total(self) -> float:
        return time.perf_counter() - self._started


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of this process, of ``pid`` and of all its descendants,
    living or reaped (``/proc``; 0 for the part that cannot be read)."""
    tick = os.sysconf("SC_CLK_TCK")
    own = os.times()
    total = own.user + own.system + own.children_user + own.children_system
    if pid is None:
        return total
    for member in [pid, *_descendants(pid)]:
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            continue
    return total


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child == os.getpid():  # under spark-submit this driver is the JVM's child
                continue
            found.append(child)
            todo.append(child)
    return found


class MemoryWatch:
    """Peak RSS of the driver (JVM and Python) and of Spark's Python workers (local mode).

    Workers are found as descendants of the driver JVM and sampled every ``interval`` s;
    the JVM's own peak is its kernel high-water mark (``VmHWM``).
    """

    def __init__(self, jvm_pid: int | None, interval: float = 1.0) -> None:
        self.jvm_pid = jvm_pid
        self.interval = interval
        self.worker_peak_kib = 0
        self.workers_total_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)

    def __enter__(self) -> MemoryWatch:
        if self.jvm_pid is not None and Path("/proc").is_dir():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        assert self.jvm_pid is not None
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        if self.jvm_pid is None:
            return
        total = 0
        for pid in _descendants(self.jvm_pid):
            self.worker_peak_kib = max(self.worker_peak_kib, _status_kib(pid, "VmHWM"))
            total += _status_kib(pid, "VmRSS")
        self.workers_total_peak_kib = max(self.workers_total_peak_kib, total)

    def report(self) -> dict[str, float | None]:
        self.sample()
        mib = 1024.0
        return {
            "driver_jvm_peak_mib": (
                round(_status_kib(self.jvm_pid, "VmHWM") / mib, 1) if self.jvm_pid else None
            ),
            "driver_python_peak_mib": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib, 1
            ),
            "python_worker_peak_mib": round(self.worker_peak_kib / mib, 1),
            "python_workers_total_peak_mib": round(self.workers_total_peak_kib / mib, 1),
        }


# -- the corpus as shards ----------------------------------------------------------------------

# What mapInPandas is given: batches of input rows in, batches of output rows out.
MapFunction = Callable[[Iterable[pd.DataFrame]], Iterator[pd.DataFrame]]


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


# -- worker-side stages (mapInPandas) ----------------------------------------------------------


def _extract(
    featurizer: Featurizer, limits: ImageLimits, data: bytes
) -> tuple[np.ndarray, np.ndarray] | None:
    from imagetag.images import decode_image

    try:
        image = decode_image(data, limits)
        features = featurizer.extract(image)
    except RecordError:
        return None
    return features.descriptors, features.positions


def sample_descriptors(
    featurizer: Featurizer, limits: ImageLimits, image_rate: float, per_image: int, seed: int
) -> MapFunction:
    """mapInPandas function: shards -> rows of ``descriptor`` (array<float>)."""

    def run(shards: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        single_threaded_opencv()
        for frame in shards:
            for shard in frame.to_dict("records"):
                rng = np.random.default_rng([seed, int(shard["shard"])])
                picked: list[np.ndarray] = []
                for _, data, _ in read_shard(shard):
                    if rng.random() >= image_rate:
                        continue
                    extracted = _extract(featurizer, limits, data)
                    if extracted is None or len(extracted[0]) == 0:
                        continue
                    descriptors = extracted[0]
                    take = min(per_image, len(descriptors))
                    rows = rng.choice(len(descriptors), take, replace=False)
                    picked.append(descriptors[rows])
                if picked:
                    stacked = np.concatenate(picked).astype(np.float32)
                    yield pd.DataFrame({"descriptor": list(stacked)})

    return run


def encoded_schema() -> Any:
    """split, label, name and the encoded ``features`` as an ML vector (not expressible in DDL)."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import StringType, StructField, StructType

    return StructType(
        [
            StructField("split", StringType()),
            StructField("label", StringType()),
            StructField("name", StringType()),
            StructField("features", VectorUDT()),
        ]
    )


def encode_shards(featurizer: Featurizer, limits: ImageLimits, dictionary: Any) -> MapFunction:
    """mapInPandas function: shards -> one sparse encoded vector per decodable record.

    ``dictionary`` is a Spark broadcast of the VisualDictionary.
    """

    def run(shards: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        single_threaded_opencv()
        vd: VisualDictionary = dictionary.value
        for frame in shards:
            for shard in frame.to_dict("records"):
                names, labels, descriptors, positions = [], [], [], []
                for name, data, label in read_shard(shard):
                    extracted = _extract(featurizer, limits, data)
                    if extracted is None:
                        continue
                    names.append(name)
                    labels.append(label)
                    descriptors.append(extracted[0])
                    positions.append(extracted[1])
                if not names:
                    continue
                counts = np.array([len(d) for d in descriptors])
                vectors = vd.encode_batch(
                    np.concatenate(descriptors),
                    np.repeat(np.arange(len(names)), counts),
                    len(names),
                    np.concatenate(positions),
                )
                yield pd.DataFrame(
                    {
                        "split": shard["split"],
                        "label": labels,
                        "name": names,
                        "features": [_sparse(v) for v in vectors],
                    }
                )

    return run


def _sparse(vector: np.ndarray) -> dict[str, Any]:
    """An ML SparseVector in the struct form that Arrow hands to Spark's VectorUDT."""
    nonzero = np.flatnonzero(vector)
    return {
        "type": 0,
        "size": len(vector),
        "indices": nonzero.astype(np.int32).tolist(),
        "values": vector[nonzero].astype(np.float64).tolist(),
    }


def _dense(vectors: pd.Series, size: int) -> np.ndarray:
    """ML vectors (SparseVector/DenseVector objects or their struct dicts) -> float32[n, size]."""
    dense = np.zeros((len(vectors), size), np.float32)
    for row, vec in enumerate(vectors):
        if isinstance(vec, dict):
            if vec.get("type") == 1:  # dense
                dense[row] = vec["values"]
            else:
                dense[row, np.asarray(vec["indices"], np.int64)] = vec["values"]
        elif hasattr(vec, "indices"):
            dense[row, vec.indices] = vec.values
        else:
            dense[row] = vec.toArray()
    return dense


PREDICTION_SCHEMA = "label double, predicted int, confidence float, fractions array<float>"


def predict_vectors(
    forest: Any,
) -> MapFunction:
    """mapInPandas function: (label_index, features) -> hard votes of the compiled forest.

    ``forest`` is a Spark broadcast of the compiled Forest.
    """

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        compiled: Forest = forest.value
        for frame in frames:
            for start in range(0, len(frame), 512):
                part = frame.iloc[start : start + 512]
                dense = _dense(part["features"], compiled.n_features)
                votes = compiled.vote(dense)
                yield pd.DataFrame(
                    {
                        "label": part["label_index"].to_numpy(np.float64),
                        "predicted": votes.fractions.argmax(axis=1).astype(np.int32),
                        "confidence": votes.confidence,
                        "fractions": list(votes.fractions),
                    }
                )

    return run


EVAL_SCHEMA = "label string, predicted string, confidence float, fractions array<float>"


def evaluate_bundle_on_shards(bundle: Any, limits: ImageLimits) -> MapFunction:
    """mapInPandas function: test shards -> the votes of a whole bundle (decode to vote).

    Used to score the CURRENT bundle on this run's held-out split. ``bundle`` is a broadcast.
    """

    def run(shards: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        single_threaded_opencv()
        model: ModelBundle = bundle.value
        for frame in shards:
            for shard in frame.to_dict("records"):
                labels, descriptors, positions = [], [], []
                for _, data, label in read_shard(shard):
                    extracted = _extract(model.featurizer, limits, data)
                    if extracted is None:
                        continue
                    labels.append(label)
                    descriptors.append(extracted[0])
                    positions.append(extracted[1])
                if not labels:
                    continue
                counts = np.array([len(d) for d in descriptors])
                vectors = model.dictionary.encode_batch(
                    np.concatenate(descriptors),
                    np.repeat(np.arange(len(labels)), counts),
                    len(labels),
                    np.concatenate(positions),
                )
                votes = model.forest.vote(vectors)
                yield pd.DataFrame(
                    {
                        "label": labels,
                        "predicted": [str(x) for x in votes.labels],
                        "confidence": votes.confidence,
                        "fractions": list(votes.fractions),
                    }
                )

    return run


# -- metrics -----------------------------------------------------------------------------------


def classification_metrics(
    truth: np.ndarray, fractions: np.ndarray, classes: list[str], threshold: float
) -> dict[str, Any]:
    """Metrics of hard votes: ``truth`` class indices (-1: a class the model does not know),
    ``fractions`` ``[n, C]`` vote fractions. Winner = argmax (ties: first class).
    """
    truth = np.asarray(truth, np.int64)
    fractions = np.asarray(fractions, np.float64)
    n, n_classes = fractions.shape
    predicted = fractions.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    known = truth >= 0
    np.add.at(confusion, (truth[known], predicted[known]), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted_count, out=np.zeros_like(tp), where=predicted_count > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    confidence = fractions.max(axis=1)
    covered = confidence >= threshold
    kept = fractions >= threshold  # every (image, class) tag kept at the threshold
    correct_kept = kept[np.arange(n), np.maximum(truth, 0)] & known
    return {
        "test_images": int(n),
        "accuracy": round(float((predicted == truth).mean()), 4) if n else 0.0,
        "macro_f1": round(float(f1[support > 0].mean()), 4) if (support > 0).any() else 0.0,
        "per_class": {
            c: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": {"classes": classes, "matrix": confusion.tolist()},
        "threshold": threshold,
        "coverage": round(float(covered.mean()), 4) if n else 0.0,
        "kept_tags": int(kept.sum()),
        "kept_tag_precision": round(float(correct_kept.sum() / max(kept.sum(), 1)), 4),
        "top_tag_precision_covered": (
            round(float((predicted[covered] == truth[covered]).mean()), 4) if covered.any() else 0.0
        ),
        "mean_confidence": round(float(confidence.mean()), 4) if n else 0.0,
    }


def format_metrics(metrics: dict[str, Any]) -> list[str]:
    """Human-readable lines: headline figures, per-class table, confusion matrix."""
    lines = [
        f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
        f"({metrics['test_images']} held-out images)",
        f"at vote threshold {metrics['threshold']:.2f}: coverage {metrics['coverage']:.4f}, "
        f"precision of kept tags {metrics['kept_tag_precision']:.4f} "
        f"({metrics['kept_tags']} tags), top-tag precision on covered "
        f"{metrics['top_tag_precision_covered']:.4f}",
        f"{'class':<14} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"{name[:14]:<14} {row['precision']:>9.4f} {row['recall']:>7.4f} "
            f"{row['f1']:>7.4f} {row['support']:>8d}"
        )
    classes = metrics["confusion"]["classes"]
    width = max(6, *(len(str(v)) + 1 for r in metrics["confusion"]["matrix"] for v in r))
    lines.append("confusion (rows: truth, columns: predicted)")
    lines.append(" " * 14 + "".join(f"{c[: width - 1]:>{width}}" for c in classes))
    for name, row in zip(classes, metrics["confusion"]["matrix"], strict=True):
        lines.append(f"{name[:14]:<14}" + "".join(f"{v:>{width}d}" for v in row))
    return lines


# -- the job -----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    version: str
    manifest: dict[str, Any]
    promoted: bool
    reason: str


def train(
    settings: Settings,
    options: TrainOptions,
    spark: SparkSession | None = None,
    out: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run the whole training job; returns the new version, its manifest and the promotion."""
    from pyspark import StorageLevel
    from pyspark.ml.classification import RandomForestClassifier
    from pyspark.sql import functions as F

    from imagetag.spark import spark_session

    featurizer = get_featurizer(options.featurizer, **options.featurizer_params)
    limits = settings.limits
    own_session = spark is None
    spark = spark or spark_session(settings, "imagetag-train")
    context = spark.sparkContext
    jvm_pid: int | None
    try:
        jvm_pid = int(context._jvm.java.lang.ProcessHandle.current().pid())  # type: ignore[union-attr]
        if jvm_pid == os.getpid() or not Path(f"/proc/{jvm_pid}").exists():
            jvm_pid = None
    except Exception:
        jvm_pid = None
    progress = Progress(out, cpu=lambda: process_tree_cpu(jvm_pid))
    store = ModelStore(settings.model_store, spark)
    cached: list[DataFrame] = []
    try:
        with MemoryWatch(jvm_pid) as memory:
            # 1. plan
            with progress.stage("plan", f"listing {options.data}"):
                corpus = plan_corpus(options.data, options.limit, options.test_fraction)
                progress.note(
                    f"{corpus.description}: {corpus.counts['train']} train / "
                    f"{corpus.counts['test']} test records in {len(corpus.shards)} shards"
                )
                shards = spark.createDataFrame(
                    pd.DataFrame(corpus.shards)[list(SHARD_COLUMNS)], SHARD_SCHEMA
                )
                shards = shards.repartition(len(corpus.shards), "shard")
                train_shards = shards.filter(F.col("split") == "train")

            # 2. sample descriptors
            with progress.stage("sample", "decoding a sample of training images for KMeans"):
                per_image = options.descriptors_per_image
                image_rate = min(1.0, options.sample_size / per_image / corpus.counts["train"])
                sample = train_shards.mapInPandas(
                    sample_descriptors(featurizer, limits, image_rate, per_image, options.seed),
                    "descriptor array<float>",
                ).persist(StorageLevel.MEMORY_AND_DISK)
                cached.append(sample)
                n_sample = sample.count()
                progress.note(
                    f"{n_sample} descriptors ({featurizer.name}, {featurizer.dim}-d) "
                    f"from ~{image_rate:.1%} of the training images"
                )
                color_k = _choose_color_k(corpus, limits)
                progress.note(f"dominant colours: k = {color_k} (best silhouette, sampled images)")

            # 3. dictionary
            with progress.stage("dictionary", f"Spark KMeans k={options.k} (k-means||)"):
                dictionary, kmeans_model = VisualDictionary.fit(
                    sample,
                    options.k,
                    seed=options.seed,
                    max_iter=options.kmeans_iterations,
                    pooling=options.pooling,  # type: ignore[arg-type]
                    normalization=options.normalization,  # type: ignore[arg-type]
                    levels=options.levels,
                    neighbors=options.neighbors,
                )
                summary = kmeans_model.summary
                progress.note(
                    f"{dictionary.k} words after {summary.numIter} iterations, "
                    f"training cost {summary.trainingCost:.4g}; vector of {dictionary.dim} values"
                )
                sample.unpersist()

            # 4. encode
            with progress.stage("encode", "decode + featurize + encode every image"):
                encoded = shards.mapInPandas(
                    encode_shards(featurizer, limits, context.broadcast(dictionary)),
                    encoded_schema(),
                )
                classes = corpus.classes or sorted(
                    r[0]
                    for r in encoded.filter(F.col("split") == "train")
                    .select("label")
                    .distinct()
                    .collect()
                    if r[0] is not None
                )
                if len(classes) < 2:
                    raise TrainError(f"{options.data}: needs at least 2 classes, found {classes}")
                index = F.array_position(F.array(*[F.lit(c) for c in classes]), F.col("label"))
                encoded = (
                    encoded.withColumn("label_index", (index - 1).cast("double"))
                    .repartition(context.defaultParallelism)
                    .persist(StorageLevel.MEMORY_AND_DISK)
                )
                cached.append(encoded)
                counts = {
                    r["split"]: r["count"] for r in encoded.groupBy("split").count().collect()
                }
                skipped = {s: corpus.counts[s] - counts.get(s, 0) for s in ("train", "test")}
                progress.note(
                    f"{counts.get('train', 0)} train / {counts.get('test', 0)} test vectors "
                    f"(skipped undecodable: {skipped['train']} / {skipped['test']}); "
                    f"{len(classes)} classes"
                )
                train_rows = encoded.filter(
                    (F.col("split") == "train") & (F.col("label_index") >= 0)
                )
                test_rows = encoded.filter(F.col("split") == "test")

            # 5. forest
            with progress.stage(
                "forest", f"Spark RandomForest: {options.trees} trees, depth <= {options.depth}"
            ):
                classifier = RandomForestClassifier(
                    labelCol="label_index",
                    featuresCol="features",
                    numTrees=options.trees,
                    maxDepth=options.depth,
                    maxBins=options.max_bins,
                    minInstancesPerNode=options.min_instances,
                    subsamplingRate=options.subsampling,
                    featureSubsetStrategy="sqrt",
                    cacheNodeIds=True,
                    maxMemoryInMB=256,
                    seed=options.seed,
                )
                forest_model = classifier.fit(train_rows)
                progress.note(f"{forest_model.totalNumNodes} nodes in {options.trees} trees")

            # 6. compile (the Spark models go into the new bundle folder)
            with progress.stage("compile", "saving the Spark models, compiling the forest"):
                version = store.allocate_version()
                kmeans_model.write().save(store.path(version, SPARK_KMEANS_DIR))
                forest_path = store.path(version, SPARK_FOREST_DIR)
                forest_model.write().save(forest_path)
                forest = Forest.from_saved_model(forest_path, classes, dictionary.dim, spark)
                progress.note(f"{version}: {forest}")

            # 7. evaluate
            with progress.stage("evaluate", "hard votes of the compiled forest on held-out data"):
                predictions = test_rows.select("label_index", "features").mapInPandas(
                    predict_vectors(context.broadcast(forest)), PREDICTION_SCHEMA
                )
                rows = pd.DataFrame(predictions.toPandas())
                metrics = classification_metrics(
                    rows["label"].to_numpy(np.int64),
                    np.stack(rows["fractions"].to_numpy()),
                    classes,
                    settings.vote_threshold,
                )
                spark_pred = forest_model.transform(test_rows).select("label_index", "prediction")
                agreement = spark_pred.select(
                    F.avg((F.col("label_index") == F.col("prediction")).cast("double"))
                ).first()
                metrics["spark_soft_vote_accuracy"] = round(float(agreement[0]), 4)
                for line in format_metrics(metrics):
                    progress.note(line)
                progress.note(
                    f"(Spark's own soft-vote accuracy: {metrics['spark_soft_vote_accuracy']:.4f})"
                )

            # 8. bundle + promotion
            with progress.stage("bundle", f"writing {version} to {store.uri}"):
                metrics["timings_s"] = dict(progress.timings)
                metrics["cpu_s"] = dict(progress.cpu_seconds)
                manifest = build_manifest(
                    version,
                    featurizer,
                    dictionary,
                    forest,
                    trees=options.trees,
                    depth=options.depth,
                    data={
                        "source": options.data,
                        "description": corpus.description,
                        "fingerprint": corpus.fingerprint,
                        "train": counts.get("train", 0),
                        "test": counts.get("test", 0),
                    },
                    metrics=metrics,
                    vote_threshold=settings.vote_threshold,
                    color_k=color_k,
                    extra={"training": asdict(options)},
                )
                bundle = ModelBundle(version, manifest, featurizer, dictionary, forest)
                promoted, reason = _decide_promotion(
                    spark, store, bundle, corpus, options.promote, limits, progress
                )
                manifest["memory"] = memory.report()
                manifest["metrics"]["timings_s"]["total"] = round(progress.total, 1)
                manifest["promoted"] = promoted
                store.write(bundle)
                if promoted:
                    store.promote(version)
                progress.note(("promoted: " if promoted else "not promoted: ") + reason)
        mem = manifest["memory"]
        progress.note(
            "peak memory: driver JVM {driver_jvm_peak_mib} MiB, driver Python "
            "{driver_python_peak_mib} MiB, Python worker {python_worker_peak_mib} MiB "
            "(all workers together {python_workers_total_peak_mib} MiB)".format(**mem)
        )
        cpu_total = sum(progress.cpu_seconds.values())
        progress.note(f"total {progress.total:.1f} s (cpu {cpu_total:.1f} s in the stages)")
        return TrainResult(version, manifest, promoted, reason)
    finally:
        for frame in cached:
            frame.unpersist()
        if own_session:
            spark.stop()


def _choose_color_k(corpus: Corpus, limits: ImageLimits, images: int = 60) -> int:
    """k for dominant colours: silhouette-best k over a few training images (driver side:
    ``images`` records read from the first training shard only)."""
    from imagetag.images import decode_image

    first = next(s for s in corpus.shards if s["split"] == "train")
    decoded = []
    for _, data, _ in read_shard({**first, "count": min(int(first["count"]), images)}):
        try:
            decoded.append(decode_image(data, limits))
        except RecordError:
            continue
        if len(decoded) >= images:
            break
    return choose_color_k(decoded)


def _decide_promotion(
    spark: SparkSession,
    store: ModelStore,
    bundle: ModelBundle,
    corpus: Corpus,
    policy: str,
    limits: ImageLimits,
    progress: Progress,
) -> tuple[bool, str]:
    current = store.current_version()
    if current is None:
        if policy == "never":
            return False, "--no-promote (there is no CURRENT yet)"
        return True, "there was no CURRENT version"
    if policy == "always":
        return True, f"--promote (replacing {current})"
    if policy == "never":
        return (
            False,
            f"--no-promote: CURRENT stays {current} (`imagetag model promote {bundle.version}`)",
        )
    accuracy = float(bundle.manifest["metrics"]["accuracy"])
    current_accuracy = _current_accuracy(spark, store, current, corpus, limits, progress)
    if accuracy > current_accuracy:
        return True, f"accuracy {accuracy:.4f} > {current}'s {current_accuracy:.4f}"
    return False, f"accuracy {accuracy:.4f} <= {current}'s {current_accuracy:.4f}"


def _current_accuracy(
    spark: SparkSession,
    store: ModelStore,
    current: str,
    corpus: Corpus,
    limits: ImageLimits,
    progress: Progress,
) -> float:
    """CURRENT's accuracy on *this* held-out split: from its manifest when it was evaluated on
    the same data (same fingerprint), else by running the whole bundle over the test shards."""
    manifest = store.manifest(current)
    if manifest.get("data", {}).get("fingerprint") == corpus.fingerprint:
        progress.note(f"{current} was evaluated on the same held-out data")
        return float(manifest["metrics"]["accuracy"])
    progress.note(f"scoring {current} on this held-out split")
    bundle = store.load(current)
    test_shards = spark.createDataFrame(
        pd.DataFrame([s for s in corpus.shards if s["split"] == "test"])[list(SHARD_COLUMNS)],
        SHARD_SCHEMA,
    )
    rows = pd.DataFrame(
        test_shards.repartition(max(1, math.ceil(corpus.counts["test"] / SHARD_SIZE)), "shard")
        .mapInPandas(
            evaluate_bundle_on_shards(spark.sparkContext.broadcast(bundle), limits), EVAL_SCHEMA
        )
        .toPandas()
    )
    if rows.empty:
        return 0.0
    return float((rows["label"] == rows["predicted"]).mean())
