"""Benchmark: what a poison record costs a micro-batch (``pipeline.tag_rows`` quarantine).

One local Spark session tags the same batch of Fashion-MNIST test images as Kafka-shaped rows
twice: clean (the baseline: one Spark job), then with one record that makes its batch fail
outside the per-record isolation (the test-only hook ``TEST_IMAGETAG_POISON``, in ``raise``
and in ``crash`` mode, where the Python worker dies). The quarantine runs the batch again in
halves down to the poison record. Wall seconds (Spark jobs), same run, same machine.

The model is the CURRENT bundle of the model store when there is one, else the synthetic
bundle of ``imagetag.testing.models`` (same shape as a trained one).

    .venv/bin/python bench/bench_quarantine.py [--images 5000] [--store PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from batch.backfill.readers import event_row, rows_frame
from imagetag.bundle import ModelStore
from imagetag.datasets import fashion_mnist_paths, read_idx
from imagetag.pipeline import POISON_ENV, POISON_MODE_ENV, CurrentModel, tag_rows
from imagetag.settings import Settings
from imagetag.spark import spark_session
from imagetag.testing.models import save_bundle, synthetic_bundle

MARKER = "bench-poison"


def kafka_rows(spark: Any, count: int, poison_at: int | None) -> Any:
    images, labels = fashion_mnist_paths("test")
    rows = []
    for i, record in enumerate(read_idx(images, labels, start=0, count=count)):
        rows.append(
            event_row(
                record.data,
                source=f"bench://{i}",
                label=str(record.label),
                metadata={"note": MARKER} if i == poison_at else {},
                produced_at_ms=1_700_000_000_000,
                topic="bench",
                partition=i % 2,
                offset=i,
                timestamp_ms=1_700_000_000_000,
            )
        )
    frame = spark.createDataFrame(rows_frame(rows))
    return frame.repartition(spark.sparkContext.defaultParallelism).persist()


def run(spark: Any, settings: Settings, rows: Any, mode: str | None) -> tuple[float, int, int]:
    environment = spark.sparkContext.environment
    if mode:
        environment[POISON_ENV], environment[POISON_MODE_ENV] = MARKER, mode
    try:
        model = CurrentModel(spark, settings).get()
        started = time.monotonic()
        tagged = tag_rows(rows, model, settings, "bench batch")
        seconds = time.monotonic() - started
        tagged.unpersist()
        return seconds, len(tagged.meta), tagged.quarantined
    finally:
        environment.pop(POISON_ENV, None)
        environment.pop(POISON_MODE_ENV, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--store", help="model store (default: the settings' model_store)")
    args = parser.parse_args()
    settings = Settings.load(**({"model_store": args.store} if args.store else {}))
    if ModelStore(settings.model_store).current_version() is None:
        store = tempfile.mkdtemp(prefix="bench-quarantine-")
        save_bundle(store, synthetic_bundle())
        settings = settings.derive(model_store=store)
        print(f"no CURRENT model in the store: a synthetic bundle ({store})")
    spark = spark_session(settings, "bench-quarantine")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        clean = kafka_rows(spark, args.images, None)
        poisoned = kafka_rows(spark, args.images, args.images // 3)
        clean.count(), poisoned.count()
        results = [
            ("clean batch (baseline)", *run(spark, settings, clean, None)),
            ("1 poison record, raise", *run(spark, settings, poisoned, "raise")),
            ("1 poison record, crash", *run(spark, settings, poisoned, "crash")),
        ]
    finally:
        spark.stop()
    baseline = results[0][1]
    print(f"\n{args.images} Fashion-MNIST images, {settings.spark.master}")
    print(f"{'batch':<26} {'seconds':>8} {'x clean':>8} {'rows out':>9} {'quarantined':>12}")
    for name, seconds, rows_out, quarantined in results:
        print(
            f"{name:<26} {seconds:>8.1f} {seconds / baseline:>8.1f} {rows_out:>9} {quarantined:>12}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
