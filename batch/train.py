"""The training job: corpus -> descriptors -> visual dictionary -> forest -> evaluated bundle.

Run it as ``imagetag train --data SOURCE ...`` or on a cluster with ``imagetag submit train
--data SOURCE ...`` (the same command, through spark-submit); from Python,
``train(settings, TrainOptions(...))``.

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
   coverage and precision of the kept tags, and the precision/coverage curve over thresholds
   0.00..1.00.
8. **bundle**: manifest + dictionary + compiled forest written, with two plots next to the
   manifest (``confusion.png``, ``threshold.png``; a plot that fails is a warning, never an
   error); promoted when asked and better.

OpenCV runs single-threaded in each Python worker (Spark already runs one per core).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batch.training.corpus import (
    FASHION_MNIST,
    SHARD_SIZE,
    Corpus,
    plan_corpus,
    read_shard,
)
from batch.training.metrics import classification_metrics, format_metrics
from batch.training.options import (
    DEFAULT_FEATURIZER,
    FEATURIZER_NAMES,
    PROMOTE_POLICIES,
    TrainError,
    TrainOptions,
)
from batch.training.stages import (
    TrainRun,
    bundle_stage,
    compile_stage,
    dictionary_stage,
    driver_jvm_pid,
    encode_stage,
    evaluate_stage,
    forest_stage,
    plan_stage,
    report_totals,
    sample_stage,
)
from batch.training.workers import (
    EVAL_SCHEMA,
    PREDICTION_SCHEMA,
    MapFunction,
    encode_shards,
    encoded_schema,
    evaluate_bundle_on_shards,
    predict_vectors,
    sample_descriptors,
)
from imagetag.bundle import ModelStore
from imagetag.features import get_featurizer
from imagetag.instrumentation import MemoryWatch, Progress, process_tree_cpu
from imagetag.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "DEFAULT_FEATURIZER",
    "EVAL_SCHEMA",
    "FASHION_MNIST",
    "FEATURIZER_NAMES",
    "PREDICTION_SCHEMA",
    "PROMOTE_POLICIES",
    "SHARD_SIZE",
    "Corpus",
    "MapFunction",
    "MemoryWatch",
    "Progress",
    "TrainError",
    "TrainOptions",
    "TrainResult",
    "classification_metrics",
    "encode_shards",
    "encoded_schema",
    "evaluate_bundle_on_shards",
    "format_metrics",
    "plan_corpus",
    "predict_vectors",
    "process_tree_cpu",
    "read_shard",
    "sample_descriptors",
    "train",
]


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
    """Run the whole training job; returns the new version, its manifest and the promotion.

    Uses ``spark`` when given (else starts and stops its own session); prints one line per
    stage to ``out`` (default: stdout). Raises TrainError for a corpus it cannot train on.
    """
    from imagetag.spark import spark_session

    featurizer = get_featurizer(options.featurizer, **options.featurizer_params)
    own_session = spark is None
    spark = spark or spark_session(settings, "imagetag-train")
    jvm_pid = driver_jvm_pid(spark)
    progress = Progress(out, cpu=lambda: process_tree_cpu(jvm_pid))
    run = TrainRun(
        settings, options, spark, featurizer, progress, ModelStore(settings.model_store, spark)
    )
    stage = progress.stage
    try:
        with MemoryWatch(jvm_pid) as memory:
            with stage("plan", f"listing {options.data}"):
                shards = plan_stage(run)
            with stage("sample", "decoding a sample of training images for KMeans"):
                sample = sample_stage(run, shards)
            with stage("dictionary", f"Spark KMeans k={options.k} (k-means||)"):
                dictionary = dictionary_stage(run, sample)
            with stage("encode", "decode + featurize + encode every image"):
                encoded = encode_stage(run, shards, dictionary)
            forest_title = f"Spark RandomForest: {options.trees} trees, depth <= {options.depth}"
            with stage("forest", forest_title):
                forest_model = forest_stage(run, encoded)
            with stage("compile", "saving the Spark models, compiling the forest"):
                compiled = compile_stage(run, dictionary, forest_model, encoded.classes)
            with stage("evaluate", "hard votes of the compiled forest on held-out data"):
                metrics = evaluate_stage(run, encoded, compiled)
            with stage("bundle", f"writing {compiled.version} to {run.store.uri}"):
                bundled = bundle_stage(
                    run, shards, sample, dictionary, encoded, compiled, metrics, memory
                )
        report_totals(progress, bundled.manifest)
        return TrainResult(compiled.version, bundled.manifest, bundled.promoted, bundled.reason)
    finally:
        run.unpersist()
        if own_session:
            spark.stop()
