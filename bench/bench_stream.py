"""Benchmark: the running stream against the single-process tag_batch loop; end-to-end latency.

Prints two tables:

1. sustained throughput (images/s) of `imagetag stream` (local[N] Spark, N cores) over a
   pre-filled topic, against `tag_batch` called in a loop in one process on the same images;
   the ratio per core is the price of Spark, Kafka, Avro and Solr around the tagging;
2. end-to-end latency, produce -> searchable in Solr, p50 / p99, while producing at half the
   measured stream throughput with a 1 s trigger, after a warm-up of 200 images (the first
   batch's start-up is not the steady state).

and writes them as PNGs into ``--plots DIR`` (default ``bench/out/``): the latency histogram
(p50 / p99 marked), the throughput bars, and the stream's images/s over time while it drained
the topic.

Runs on the local stack (started if needed) with its own topics and collection; needs a model
in the model store (`imagetag train`, or `make demo` which trains one).

    .venv/bin/python bench/bench_stream.py [--images 4000] [--latency-seconds 60] [--plots DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pandas as pd
import requests

from imagetag import plots
from imagetag.kafka_admin import count_records
from imagetag.settings import Settings
from imagetag.stack import LocalStack
from imagetag.testing.samples import fashion_images
from imagetag.testing.services import isolated_settings, solr_count

IMAGETAG = str(Path(sys.executable).with_name("imagetag"))
PLOTS_DIR = Path(__file__).resolve().parent / "out"  # ignored by git


def raw_loop(settings: Settings, data: list[tuple[bytes, str]]) -> float:
    """images/s of tag_batch in one process, one core (OpenCV single-threaded)."""
    import cv2

    from imagetag.bundle import load_current
    from imagetag.tagging import tag_batch

    cv2.setNumThreads(1)
    model = load_current(settings.model_store)
    now = int(time.time() * 1000)
    frame = pd.DataFrame(
        {
            "id": [hashlib.sha256(d).hexdigest() for d, _ in data],
            "image": [d for d, _ in data],
            "content_type": "image/png",
            "source": "bench://raw",
            "produced_at": now,
            "label": [label for _, label in data],
            "metadata": [{} for _ in data],
        }
    )
    tag_batch(
        frame.iloc[:50], model, threshold=settings.vote_threshold, limits=settings.limits
    )  # warm up
    started = time.perf_counter()
    for lo in range(0, len(frame), 500):
        tag_batch(
            frame.iloc[lo : lo + 500],
            model,
            threshold=settings.vote_threshold,
            limits=settings.limits,
        )
    return len(frame) / (time.perf_counter() - started)


def start_stream(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 (lives as long as the child)
    process = subprocess.Popen(
        [IMAGETAG, "stream"], env=settings.child_env(), stdout=out, stderr=out
    )
    deadline = time.monotonic() + 180
    while "streaming " not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"stream did not start; see {log}")
        time.sleep(0.5)
    return process


def produce(
    settings: Settings, data: list[tuple[bytes, str]], rate: float | None = None
) -> list[tuple[str, float]]:
    """Send images (at `rate` per second if given); returns (id, send time) pairs."""
    from producers import ImageProducer

    sent: list[tuple[str, float]] = []
    with ImageProducer(settings) as producer:
        started = time.time()
        for i, (payload, label) in enumerate(data):
            if rate:
                wait = started + i / rate - time.time()
                if wait > 0:
                    time.sleep(wait)
            sent.append((hashlib.sha256(payload).hexdigest(), time.time()))
            producer.send(payload, label=label, source="bench://stream")
            producer.poll(0)
    return sent


def stream_throughput(
    settings: Settings,
    data: list[tuple[bytes, str]],
    log: Path,
    progress: list[tuple[float, float]] | None = None,
) -> float:
    """images/s of the stream draining ``data``; appends (s since the first result, images
    done since) to ``progress`` at each poll."""
    produce(settings, data)
    distinct = len({hashlib.sha256(d).hexdigest() for d, _ in data})
    process = start_stream(settings, log)
    try:
        first = last = None
        while True:
            done = solr_count(settings) + count_records(settings, settings.kafka.topic_review)
            now = time.monotonic()
            if done and first is None:
                first = (now, done)
            if first is not None and progress is not None:
                progress.append((now - first[0], done - first[1]))
            if done >= distinct:
                last = (now, done)
                break
            if process.poll() is not None:
                raise SystemExit(f"stream died; see {log}")
            time.sleep(0.5)
        assert first is not None and last is not None
        return (last[1] - first[1]) / max(last[0] - first[0], 1e-6)
    finally:
        process.terminate()
        process.wait(120)


def latency(
    settings: Settings, data: list[tuple[bytes, str]], rate: float, log: Path
) -> list[float]:
    process = start_stream(settings, log)
    # Warm up first (Python workers started, model broadcast, first archive batch): the
    # figure asked for is the steady state, not the first batch's start-up.
    warm = fashion_images(200, start=50_000)
    produce(settings, warm)
    distinct = len({hashlib.sha256(d).hexdigest() for d, _ in warm})
    deadline = time.monotonic() + 300
    while solr_count(settings) + count_records(settings, settings.kafka.topic_review) < distinct:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"stream did not warm up; see {log}")
        time.sleep(0.5)
    time.sleep(5)
    seen: dict[str, float] = {}
    stop = threading.Event()
    url = f"{settings.solr.url}/{settings.solr.collection}/select"

    def poll() -> None:
        while not stop.is_set():
            body = requests.get(
                url,
                params={
                    "q": "tagged_at:[NOW-20SECONDS TO *]",
                    "fl": "id",
                    "rows": "5000",
                    "facet": "false",
                },
                timeout=30,
            ).json()
            now = time.time()
            for doc in body["response"]["docs"]:
                seen.setdefault(doc["id"], now)
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        sent = produce(settings, data, rate=rate)
        time.sleep(10)
    finally:
        stop.set()
        poller.join()
        process.terminate()
        process.wait(120)
    return [seen[i] - t for i, t in sent if i in seen]


def isolated_run(settings: Settings, tag: str, tmp: Path) -> AbstractContextManager[Settings]:
    """Settings with the run's own topics, collection and checkpoints, created and removed."""
    base = f"bench_{tag}_{uuid.uuid4().hex[:6]}"
    return isolated_settings(
        settings,
        base,
        checkpoint_dir=str(tmp / base / "checkpoints"),
        archive_dir=str(tmp / base / "archive"),
        spark={"trigger_seconds": 1.0, "max_offsets_per_trigger": 2000},
    )


def spark_cores(master: str) -> int:
    """Cores a local master uses: local[N] -> N, local[*] -> all, local -> 1."""
    if master == "local":
        return 1
    if master.startswith("local["):
        inner = master[len("local[") :].rstrip("]").split(",")[0]
        return (os.cpu_count() or 1) if inner == "*" else int(inner)
    return os.cpu_count() or 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--plots", type=Path, default=PLOTS_DIR, help="folder for the PNGs")
    args = parser.parse_args()
    settings = Settings.load()
    LocalStack(settings).up()
    tmp = Path(".stack/bench")
    tmp.mkdir(parents=True, exist_ok=True)
    cores = spark_cores(settings.spark.master)
    data = fashion_images(args.images)

    raw = raw_loop(settings, data)
    timeline: list[tuple[float, float]] = []
    with isolated_run(settings, "tput", tmp) as run:
        stream = stream_throughput(run, data, tmp / "stream-throughput.log", timeline)
    print("\nthroughput (Fashion-MNIST 28x28 PNG)")
    print(f"{'path':<34} {'images/s':>9} {'cores':>6} {'images/s/core':>14}")
    print(f"{'tag_batch loop, one process':<34} {raw:>9.0f} {1:>6} {raw:>14.0f}")
    print(
        f"{'imagetag stream (Kafka->Solr)':<34} {stream:>9.0f} {cores:>6} {stream / cores:>14.0f}"
    )
    print(f"ratio stream per core / raw loop: {stream / cores / raw:.2f}")

    rate = stream / 2
    count = int(rate * args.latency_seconds)
    with isolated_run(settings, "latency", tmp) as run:
        lat = latency(run, fashion_images(count, start=0), rate, tmp / "stream-latency.log")
    p50, p99 = np.percentile(lat, [50, 99]) if lat else (float("nan"), float("nan"))
    print(f"\nlatency produce -> searchable at {rate:.0f} images/s (half the stream's throughput),")
    print(
        f"trigger {settings.spark.trigger_seconds:.0f}s, commitWithin {settings.solr.commit_within_ms}ms"
    )
    print(f"{'images measured':<20} {'p50 (s)':>8} {'p99 (s)':>8}")
    print(f"{len(lat):<20} {p50:>8.2f} {p99:>8.2f}")
    written = write_plots(
        args.plots,
        latencies_s={"stream": lat},
        rates={"tag_batch loop": (raw, 1), f"stream {settings.spark.master}": (stream, cores)},
        progress={"stream": timeline},
        subtitle=f"{rate:.0f} images/s, trigger {settings.spark.trigger_seconds:.0f}s",
    )
    print("\nplots: " + ", ".join(str(p) for p in written))
    return 0


def write_plots(
    folder: Path,
    latencies_s: Mapping[str, Sequence[float]],
    rates: Mapping[str, tuple[float, int]],
    progress: Mapping[str, Sequence[tuple[float, float]]],
    subtitle: str = "",
) -> list[Path]:
    """The tables as PNGs in ``folder``; returns the paths written.

    ``latencies_s``: produce -> searchable latencies per series (``stream``, ...) ->
    ``stream-latency.png``; ``rates``: path -> (images/s, cores) ->
    ``stream-throughput.png`` (images/s and images/s per core); ``progress``: per series,
    (s, images done) samples -> ``stream-timeline.png`` (images/s over time). A plot that
    fails is a warning on stderr.
    """
    title = "latency produce -> searchable" + (f" ({subtitle})" if subtitle else "")
    bars = {
        "images/s": {path: per_s for path, (per_s, _) in rates.items()},
        "images/s per core": {path: per_s / max(n, 1) for path, (per_s, n) in rates.items()},
    }
    pngs = plots.render(
        {
            "stream-latency.png": lambda: plots.latency_histogram_png(latencies_s, title=title),
            "stream-throughput.png": lambda: plots.throughput_bars_png(
                bars, title="throughput (Fashion-MNIST 28x28 PNG)"
            ),
            "stream-timeline.png": lambda: plots.throughput_png(
                {label: plots.rates_over_time(p) for label, p in progress.items()},
                title="stream draining a pre-filled topic",
                xlabel="s since the first result",
            ),
        },
        warn=lambda message: print(f"bench_stream: plot {message}", file=sys.stderr),
    )
    return plots.save_pngs(folder, pngs)


if __name__ == "__main__":
    sys.exit(main())
