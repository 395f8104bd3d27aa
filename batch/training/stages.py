"""The stages of ``train()``, one function each, in the spirit of pyspark.ml's ``fit -> Model``:
each takes the run and the results of the stages before it and returns a small frozen result.

``train()`` (``batch/train.py``) times them; they print their own notes through the run's
``Progress``. Frames a stage caches are unpersisted by ``TrainRun.unpersist`` at the end.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from batch.training.corpus import SHARD_SIZE, Corpus, plan_corpus, read_shard
from batch.training.metrics import classification_metrics, format_metrics, metrics_plots
from batch.training.options import TrainError, TrainOptions
from batch.training.workers import (
    EVAL_SCHEMA,
    PREDICTION_SCHEMA,
    encode_shards,
    encoded_schema,
    evaluate_bundle_on_shards,
    predict_vectors,
    sample_descriptors,
)
from imagetag.bundle import (
    SPARK_FOREST_DIR,
    SPARK_KMEANS_DIR,
    ModelBundle,
    ModelStore,
    build_manifest,
)
from imagetag.contracts import SHARD_COLUMNS, SHARD_SCHEMA
from imagetag.dictionary import VisualDictionary
from imagetag.errors import RecordError
from imagetag.features import Featurizer, choose_color_k
from imagetag.forest import Forest
from imagetag.instrumentation import MemoryWatch, Progress
from imagetag.settings import ImageLimits, Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("imagetag.train")


def driver_jvm_pid(spark: SparkSession) -> int | None:
    """The pid of the driver JVM when it is a separate process this machine's /proc shows."""
    try:
        pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())  # type: ignore[union-attr]
    except Exception:
        return None
    if pid == os.getpid() or not Path(f"/proc/{pid}").exists():
        return None
    return pid


@dataclass(frozen=True)
class TrainRun:
    """What every stage needs: the settings, the options, the session, where notes go, the
    model store, and the frames cached so far (unpersisted at the end of the run)."""

    settings: Settings
    options: TrainOptions
    spark: SparkSession
    featurizer: Featurizer
    progress: Progress
    store: ModelStore
    cached: list[DataFrame] = field(default_factory=list)

    @property
    def limits(self) -> ImageLimits:
        return self.settings.limits

    def cache(self, frame: DataFrame) -> DataFrame:
        """``frame`` persisted (memory and disk) until ``unpersist``."""
        from pyspark import StorageLevel

        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
        self.cached.append(frame)
        return frame

    def unpersist(self) -> None:
        for frame in self.cached:
            frame.unpersist()


@dataclass(frozen=True)
class Shards:
    """The planned corpus and its shards as a Spark frame (one partition per shard)."""

    corpus: Corpus
    all: DataFrame
    train: DataFrame


@dataclass(frozen=True)
class Sample:
    """Descriptors sampled from the training images (cached) and the dominant-colour k."""

    descriptors: DataFrame
    color_k: int


@dataclass(frozen=True)
class FittedDictionary:
    """The visual dictionary and the Spark ``KMeansModel`` it came from (saved in the bundle)."""

    dictionary: VisualDictionary
    spark_model: Any


@dataclass(frozen=True)
class Encoded:
    """The encoded vectors (cached): labelled training rows, test rows, classes, row counts."""

    train: DataFrame
    test: DataFrame
    classes: list[str]
    counts: dict[str, int]


@dataclass(frozen=True)
class CompiledForest:
    """The new version, its forest compiled to numpy, and the Spark model it was compiled from."""

    version: str
    forest: Forest
    spark_model: Any


@dataclass(frozen=True)
class Bundled:
    """The written bundle's manifest and whether (and why) it became CURRENT."""

    manifest: dict[str, Any]
    promoted: bool
    reason: str


def plan_stage(run: TrainRun) -> Shards:
    """1. List the corpus (no image read) and make a frame of its shards."""
    from pyspark.sql import functions as F

    options = run.options
    corpus = plan_corpus(options.data, options.limit, options.test_fraction)
    run.progress.note(
        f"{corpus.description}: {corpus.counts['train']} train / "
        f"{corpus.counts['test']} test records in {len(corpus.shards)} shards"
    )
    shards = run.spark.createDataFrame(
        pd.DataFrame(corpus.shards)[list(SHARD_COLUMNS)], SHARD_SCHEMA
    )
    shards = shards.repartition(len(corpus.shards), "shard")
    return Shards(corpus, shards, shards.filter(F.col("split") == "train"))


def sample_stage(run: TrainRun, shards: Shards) -> Sample:
    """2. A few random descriptors of a subset of the training images; the colour k."""
    options, featurizer, corpus = run.options, run.featurizer, shards.corpus
    per_image = options.descriptors_per_image
    image_rate = min(1.0, options.sample_size / per_image / corpus.counts["train"])
    sample = run.cache(
        shards.train.mapInPandas(
            sample_descriptors(featurizer, run.limits, image_rate, per_image, options.seed),
            "descriptor array<float>",
        )
    )
    n_sample = sample.count()
    run.progress.note(
        f"{n_sample} descriptors ({featurizer.name}, {featurizer.dim}-d) "
        f"from ~{image_rate:.1%} of the training images"
    )
    color_k = _choose_color_k(corpus, run.limits)
    run.progress.note(f"dominant colours: k = {color_k} (best silhouette, sampled images)")
    return Sample(sample, color_k)


def dictionary_stage(run: TrainRun, sample: Sample) -> FittedDictionary:
    """3. Spark KMeans on the sample; the sample is released afterwards."""
    options = run.options
    dictionary, kmeans_model = VisualDictionary.fit(
        sample.descriptors,
        options.k,
        seed=options.seed,
        max_iter=options.kmeans_iterations,
        pooling=options.pooling,  # type: ignore[arg-type]
        normalization=options.normalization,  # type: ignore[arg-type]
        levels=options.levels,
        neighbors=options.neighbors,
    )
    summary = kmeans_model.summary
    run.progress.note(
        f"{dictionary.k} words after {summary.numIter} iterations, "
        f"training cost {summary.trainingCost:.4g}; vector of {dictionary.dim} values"
    )
    sample.descriptors.unpersist()
    return FittedDictionary(dictionary, kmeans_model)


def encode_stage(run: TrainRun, shards: Shards, dictionary: FittedDictionary) -> Encoded:
    """4. Every image decoded, featurized and encoded; labels indexed. Raises TrainError when
    the training split has fewer than 2 classes."""
    from pyspark.sql import functions as F

    context, corpus = run.spark.sparkContext, shards.corpus
    encoded = shards.all.mapInPandas(
        encode_shards(run.featurizer, run.limits, context.broadcast(dictionary.dictionary)),
        encoded_schema(),
    )
    classes = corpus.classes or sorted(
        r[0]
        for r in encoded.filter(F.col("split") == "train").select("label").distinct().collect()
        if r[0] is not None
    )
    if len(classes) < 2:
        raise TrainError(f"{run.options.data}: needs at least 2 classes, found {classes}")
    index = F.array_position(F.array(*[F.lit(c) for c in classes]), F.col("label"))
    encoded = run.cache(
        encoded.withColumn("label_index", (index - 1).cast("double")).repartition(
            context.defaultParallelism
        )
    )
    counts = {r["split"]: r["count"] for r in encoded.groupBy("split").count().collect()}
    skipped = {s: corpus.counts[s] - counts.get(s, 0) for s in ("train", "test")}
    run.progress.note(
        f"{counts.get('train', 0)} train / {counts.get('test', 0)} test vectors "
        f"(skipped undecodable: {skipped['train']} / {skipped['test']}); "
        f"{len(classes)} classes"
    )
    return Encoded(
        train=encoded.filter((F.col("split") == "train") & (F.col("label_index") >= 0)),
        test=encoded.filter(F.col("split") == "test"),
        classes=classes,
        counts=counts,
    )


def forest_stage(run: TrainRun, encoded: Encoded) -> Any:
    """5. Spark's RandomForestClassifier on the training vectors; returns the Spark model."""
    from pyspark.ml.classification import RandomForestClassifier

    options = run.options
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
    forest_model = classifier.fit(encoded.train)
    run.progress.note(f"{forest_model.totalNumNodes} nodes in {options.trees} trees")
    return forest_model


def compile_stage(
    run: TrainRun, dictionary: FittedDictionary, forest_model: Any, classes: list[str]
) -> CompiledForest:
    """6. A new version: the Spark models saved into its folder, the forest compiled to numpy."""
    store = run.store
    version = store.allocate_version()
    dictionary.spark_model.write().save(store.path(version, SPARK_KMEANS_DIR))
    forest_path = store.path(version, SPARK_FOREST_DIR)
    forest_model.write().save(forest_path)
    forest = Forest.from_saved_model(forest_path, classes, dictionary.dictionary.dim, run.spark)
    run.progress.note(f"{version}: {forest}")
    return CompiledForest(version, forest, forest_model)


def evaluate_stage(run: TrainRun, encoded: Encoded, compiled: CompiledForest) -> dict[str, Any]:
    """7. The compiled forest's hard votes on the held-out split -> ``classification_metrics``
    plus Spark's own soft-vote accuracy."""
    from pyspark.sql import functions as F

    predictions = encoded.test.select("label_index", "features").mapInPandas(
        predict_vectors(run.spark.sparkContext.broadcast(compiled.forest)), PREDICTION_SCHEMA
    )
    rows = pd.DataFrame(predictions.toPandas())
    metrics = classification_metrics(
        rows["label"].to_numpy(np.int64),
        np.stack(rows["fractions"].to_numpy()),
        encoded.classes,
        run.settings.vote_threshold,
    )
    spark_pred = compiled.spark_model.transform(encoded.test).select("label_index", "prediction")
    agreement = spark_pred.select(
        F.avg((F.col("label_index") == F.col("prediction")).cast("double"))
    ).first()
    metrics["spark_soft_vote_accuracy"] = round(float(agreement[0]), 4)
    for line in format_metrics(metrics):
        run.progress.note(line)
    run.progress.note(
        f"(Spark's own soft-vote accuracy: {metrics['spark_soft_vote_accuracy']:.4f})"
    )
    return metrics


def bundle_stage(
    run: TrainRun,
    shards: Shards,
    sample: Sample,
    dictionary: FittedDictionary,
    encoded: Encoded,
    compiled: CompiledForest,
    metrics: dict[str, Any],
    memory: MemoryWatch,
) -> Bundled:
    """8. The manifest (with the stage timings and peak memory so far) and bundle written,
    with the evaluation's plots next to the manifest (a plot that fails is a warning);
    promoted as the options' policy decides."""
    options, progress, store, corpus = run.options, run.progress, run.store, shards.corpus
    metrics["timings_s"] = dict(progress.timings)
    metrics["cpu_s"] = dict(progress.cpu_seconds)
    manifest = build_manifest(
        compiled.version,
        run.featurizer,
        dictionary.dictionary,
        compiled.forest,
        trees=options.trees,
        depth=options.depth,
        data={
            "source": options.data,
            "description": corpus.description,
            "fingerprint": corpus.fingerprint,
            "train": encoded.counts.get("train", 0),
            "test": encoded.counts.get("test", 0),
        },
        metrics=metrics,
        vote_threshold=run.settings.vote_threshold,
        color_k=sample.color_k,
        extra={"training": asdict(options)},
    )
    bundle = ModelBundle(
        compiled.version, manifest, run.featurizer, dictionary.dictionary, compiled.forest
    )
    promoted, reason = _decide_promotion(
        run.spark, store, bundle, corpus, options.promote, run.limits, progress
    )
    manifest["memory"] = memory.report()
    manifest["metrics"]["timings_s"]["total"] = round(progress.total, 1)
    manifest["promoted"] = promoted
    plots = metrics_plots(metrics, warn=lambda message: _plot_warning(progress, message))
    manifest["files"].update({name.removesuffix(".png") + "_plot": name for name in plots})
    store.write(bundle, files=plots)
    if promoted:
        store.promote(compiled.version)
    if plots:
        progress.note("plots: " + ", ".join(store.path(compiled.version, name) for name in plots))
    progress.note(("promoted: " if promoted else "not promoted: ") + reason)
    return Bundled(manifest, promoted, reason)


def _plot_warning(progress: Progress, message: str) -> None:
    """A plot that could not be drawn: a warning in the log and a note, and training goes on."""
    log.warning("bundle plot %s", message)
    progress.note(f"warning: plot {message}")


def report_totals(progress: Progress, manifest: dict[str, Any]) -> None:
    """The closing lines: peak memories, total wall time and CPU time in the stages."""
    progress.note(
        "peak memory: driver JVM {driver_jvm_peak_mib} MiB, driver Python "
        "{driver_python_peak_mib} MiB, Python worker {python_worker_peak_mib} MiB "
        "(all workers together {python_workers_total_peak_mib} MiB)".format(**manifest["memory"])
    )
    cpu_total = sum(progress.cpu_seconds.values())
    progress.note(f"total {progress.total:.1f} s (cpu {cpu_total:.1f} s in the stages)")


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
