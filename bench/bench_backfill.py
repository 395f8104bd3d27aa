"""Benchmark: backfill throughput and memory on generated Tiny Images, and the projection to the
79,302,017-image corpus.

For each size (default 100,000 then 400,000 generated 32x32 images in the Tiny Images ``.bin``
format) it runs ``python -m batch.backfill FILE`` as its own process, exactly as a user would
(Spark local[N], the configured model, Solr + review + dead-letter writes, the archive), into
its own topics and collection, and samples every 0.5 s the resident memory of the driver
(Python), the JVM (driver + executors in local mode) and the Python workers. It prints:

1. one row per size: images, time, images/s, peak memories — time should grow linearly with the
   corpus and memory stay flat (the backfill goes split by split, nothing is collected);
2. the projected time for the 79,302,017 Tiny Images at the measured rate, on this machine
   and per added core (assuming the per-core rate holds: the splits are independent).

The first table is also drawn as PNGs into ``--plots DIR`` (default ``bench/out/``): images/s
per size (flat = linear time) and peak memories per size (flat = nothing collected).

Runs on the local stack (started if needed). Uses the model store's CURRENT model, or trains a
small one (Fashion-MNIST, 5,000 images) into ``.stack/bench/models`` when there is none.

    .venv/bin/python bench/bench_backfill.py [--sizes 100000,400000] [--keep] [--plots DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from imagetag import plots
from imagetag.instrumentation import MemoryPeaks
from imagetag.settings import Settings
from imagetag.stack import LocalStack
from imagetag.testing.services import isolated_settings

ROOT = Path(__file__).resolve().parents[1]
TINY_IMAGES_CORPUS = 79_302_017
BENCH_DIR = Path(".stack/bench")
PLOTS_DIR = ROOT / "bench" / "out"  # ignored by git


# -- data ----------------------------------------------------------------------------------------


def generate_tiny(path: Path, count: int, seed: int = 0, chunk: int = 10_000) -> None:
    """``count`` distinct 32x32 images (smooth colour fields with a few squares) as Tiny Images
    records (RGB, column-major), written chunk by chunk."""
    if path.exists() and path.stat().st_size == count * 3072:
        return
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            low = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
            batch = np.empty((n, 32, 32, 3), np.uint8)
            corners = rng.integers(0, 28, (n, 3, 2))
            colors = rng.integers(0, 256, (n, 3, 3), dtype=np.uint8)
            for i in range(n):
                image = cv2.resize(low[i], (32, 32), interpolation=cv2.INTER_CUBIC)
                for (x, y), color in zip(corners[i], colors[i], strict=True):
                    image[y : y + 4, x : x + 4] = color
                batch[i] = image
            # record = MATLAB uint8[32, 32, 3] column-major: row fastest, then column, channel
            out.write(np.ascontiguousarray(batch.transpose(0, 3, 2, 1)).tobytes())
    os.replace(tmp, path)


# -- a run ---------------------------------------------------------------------------------------


@dataclass
class Row:
    images: int
    wall_s: float
    backfill_s: float
    summary: dict[str, object] = field(default_factory=dict)
    memory: MemoryPeaks = field(default_factory=MemoryPeaks)

    @property
    def rate(self) -> float:
        return self.images / self.backfill_s


def run_name(tag: str) -> str:
    """A fresh name for one run's topics, collection and scratch folder."""
    return f"bench_backfill_{tag}_{uuid.uuid4().hex[:6]}"


def run_backfill(settings: Settings, data: Path, images: int, log: Path) -> Row:
    command = [
        sys.executable,
        "-m",
        "imagetag",
        "backfill",
        str(data.resolve()),
        "--format",
        "tiny",
    ]
    command += ["--json", "--no-progress"]
    memory = MemoryPeaks()
    started = time.monotonic()
    with open(log, "wb") as err:
        child = subprocess.Popen(
            command, env=settings.child_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=err
        )
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                memory.sample(child.pid)
                done.wait(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        out, _ = child.communicate()
        done.set()
        watcher.join()
    wall = time.monotonic() - started
    if child.returncode != 0:
        raise SystemExit(f"backfill failed ({child.returncode}); see {log}")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    if summary["images"] != images:
        raise SystemExit(f"backfill read {summary['images']} of {images} images; see {log}")
    return Row(images, wall, float(summary["seconds"]), summary, memory)


def ensure_model(settings: Settings) -> Settings:
    from imagetag.bundle import ModelStore

    if ModelStore(settings.model_store).current_version():
        return settings
    bench = settings.derive(model_store=str((BENCH_DIR / "models").resolve()))
    if ModelStore(bench.model_store).current_version() is None:
        from batch.train import TrainOptions, train

        print(f"no model in {settings.model_store}: training one on 5,000 Fashion-MNIST images")
        train(bench, TrainOptions(data="fashion-mnist", limit=5000), out=lambda _: None)
    return bench


def spark_cores(master: str) -> int:
    if master.startswith("local["):
        inner = master[len("local[") :].rstrip("]").split(",")[0]
        return (os.cpu_count() or 1) if inner == "*" else int(inner)
    return 1 if master == "local" else os.cpu_count() or 1


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds < 86400 * 3 else f"{seconds / 86400:,.1f} days"


def plot_groups(rows: list[Row]) -> dict[str, dict[str, dict[str, float | None]]]:
    """The table as bar-chart inputs: ``throughput`` -> size -> {``images/s``} and ``memory``
    -> size -> peak MiB of the driver's Python, the JVM, one Python worker, all workers."""
    throughput: dict[str, dict[str, float | None]] = {}
    memory: dict[str, dict[str, float | None]] = {}
    for row in rows:
        size = f"{row.images:,} images"
        throughput[size] = {"images/s": row.rate}
        m = row.memory
        memory[size] = {
            "driver Python": m.driver_python,
            "JVM": m.jvm,
            "Python worker": m.worker_max,
            "all workers": m.workers_total,
        }
    return {"throughput": throughput, "memory": memory}


def write_plots(folder: Path, rows: list[Row]) -> list[Path]:
    """``backfill-throughput.png`` and ``backfill-memory.png`` in ``folder``; returns the paths
    written. A plot that fails is a warning on stderr."""
    groups = plot_groups(rows)
    pngs = plots.render(
        {
            "backfill-throughput.png": lambda: plots.throughput_bars_png(
                groups["throughput"], title="backfill of generated Tiny Images"
            ),
            "backfill-memory.png": lambda: plots.throughput_bars_png(
                groups["memory"], title="backfill: peak resident memory", ylabel="MiB"
            ),
        },
        warn=lambda message: print(f"bench_backfill: plot {message}", file=sys.stderr),
    )
    return plots.save_pngs(folder, pngs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,400000", help="comma-separated image counts")
    parser.add_argument("--keep", action="store_true", help="keep the generated .bin files")
    parser.add_argument("--plots", type=Path, default=PLOTS_DIR, help="folder for the PNGs")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    settings = Settings.load()
    LocalStack(settings).up()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    settings = ensure_model(settings)
    from imagetag.bundle import ModelStore

    store = ModelStore(settings.model_store)
    version = store.current_version()
    manifest = store.manifest(version)
    cores = spark_cores(settings.spark.master)
    print(
        f"model {version} ({manifest.get('featurizer', {}).get('name')}, k={manifest.get('k')}, "
        f"{manifest.get('trees')} trees) from {settings.model_store}; Spark {settings.spark.master}"
        f" on a {os.cpu_count()}-core machine shared with Kafka and Solr"
    )

    rows: list[Row] = []
    for size in sizes:
        data = BENCH_DIR / f"tiny-{size}.bin"
        generate_tiny(data, size, seed=size)
        base = run_name(str(size))
        scratch = (BENCH_DIR / base).resolve()
        try:
            with isolated_settings(
                settings,
                base,
                checkpoint_dir=str(scratch / "checkpoints"),
                archive_dir=str(scratch / "archive"),
            ) as run:
                print(f"backfill of {size:,} images ...", flush=True)
                rows.append(run_backfill(run, data, size, BENCH_DIR / f"backfill-{size}.log"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if not args.keep:
                data.unlink(missing_ok=True)

    print(
        "\nbackfill of generated 32x32 Tiny Images (PNG-encoded on read), archive + Solr + review"
    )
    header = (
        f"{'images':>9} {'wall s':>8} {'backfill s':>10} {'images/s':>9} {'s/100k':>7} "
        f"{'driver py MiB':>13} {'JVM MiB':>8} {'worker MiB':>10} {'workers MiB':>11}"
    )
    print(header)
    for row in rows:
        m = row.memory
        print(
            f"{row.images:>9,} {row.wall_s:>8.0f} {row.backfill_s:>10.0f} {row.rate:>9.0f} "
            f"{row.backfill_s / row.images * 100_000:>7.0f} {m.driver_python:>13.0f} "
            f"{m.jvm:>8.0f} {m.worker_max:>10.0f} {m.workers_total:>11.0f}"
        )
    for row in rows:
        s = row.summary
        print(
            f"  {row.images:,}: tagged {s['tagged']}, review {s['review']}, dead {s['dead']}, "
            f"{s['splits_total']} splits"
        )
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(
            f"\n{b.images / a.images:.1f}x the images took {b.backfill_s / a.backfill_s:.2f}x the "
            f"time (linear = {b.images / a.images:.1f}x); peak JVM {b.memory.jvm / a.memory.jvm:.2f}x"
            f", driver Python {b.memory.driver_python / a.memory.driver_python:.2f}x, "
            f"Python worker {b.memory.worker_max / a.memory.worker_max:.2f}x (flat = 1.0x)"
        )
    rate = rows[-1].rate
    per_core = rate / cores
    print(f"\nprojection for the {TINY_IMAGES_CORPUS:,}-image Tiny Images corpus")
    print(f"(measured {rate:.0f} images/s on {cores} cores = {per_core:.0f} images/s per core)")
    print(f"{'cores':>6} {'images/s':>9} {'time':>12}")
    for n in sorted({cores, cores + 1, cores + 2, 4, 8, 16, 32, 64}):
        print(f"{n:>6} {per_core * n:>9.0f} {_hours(TINY_IMAGES_CORPUS / (per_core * n)):>12}")
    print(
        f"each added core adds ~{per_core:.0f} images/s; from {cores} to {cores + 1} cores saves "
        f"{_hours(TINY_IMAGES_CORPUS / (per_core * cores) - TINY_IMAGES_CORPUS / (per_core * (cores + 1)))}"
    )
    written = write_plots(args.plots, rows)
    print("\nplots: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
