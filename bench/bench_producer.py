"""Benchmark: ImageProducer throughput against Kafka's own producer-perf-test, same broker.

Prints one table: images/s and MB/s (10^6 bytes of message values per second) of
``ImageProducer.send`` + ``flush`` for 32×32 PNGs and for ~100 KB JPEGs, with each client
library, and the ratio to ``org.apache.kafka.tools.ProducerPerformance`` (the class behind
``kafka-producer-perf-test.sh``) run at the same record size (the mean size of our Avro
messages) with the same delivery settings (acks=all, idempotence, lz4, and our linger /
batch size). The images are generated in memory first, so no disk I/O is timed; what is timed
is the producer's own work: magic-byte check, sha256, Avro encoding, headers, the client.

Note: ProducerPerformance's payload is random upper-case letters (lz4 shrinks it), ours are
already-compressed image bytes (lz4 cannot): at the same record size the bytes on the wire
differ, which favours the Java figure a little.

The table is also drawn as PNGs (images/s and MB/s, grouped by workload) into ``--plots DIR``
(default ``bench/out/``).

Needs the broker from the settings (``imagetag stack up`` for the local one); writes to its own
topics and deletes them afterwards.

    .venv/bin/python bench/bench_producer.py [--png 30000] [--jpeg 3000] [--clients confluent,kafka-python] [--plots DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from imagetag import plots
from imagetag.errors import ImagetagError
from imagetag.kafka_admin import delete_topics, ensure_topics
from imagetag.settings import Settings
from producers import ImageProducer
from producers.producer import CONFLUENT_DEFAULTS

PERF_CLASS = "org.apache.kafka.tools.ProducerPerformance"
PERF_LINE = re.compile(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\)")
PLOTS_DIR = Path(__file__).resolve().parent / "out"  # ignored by git
PERF_TEST = "ProducerPerformance"


@dataclass
class Row:
    workload: str
    client: str
    records: int
    record_bytes: int
    images_per_s: float
    mb_per_s: float
    perf_records_per_s: float | None = None
    perf_mb_per_s: float | None = None

    @property
    def ratio(self) -> float | None:
        if not self.perf_records_per_s:
            return None
        return self.images_per_s / self.perf_records_per_s


def png_images(count: int) -> list[bytes]:
    """32×32 RGB PNGs: a smooth random gradient plus noise (natural-image-like sizes, ~2–3 KB)."""
    rng = np.random.default_rng(0)
    out = []
    ramp = np.linspace(0, 1, 32, dtype=np.float32)
    for _ in range(count):
        a, b, c = rng.random(3) * 255
        base = (a * ramp[None, :, None] + b * ramp[:, None, None] + c * 0.5) / 2
        pixels = np.clip(base + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".png", pixels)
        assert ok
        out.append(buf.tobytes())
    return out


def jpeg_images(count: int, target: int = 100_000) -> list[bytes]:
    """~``target``-byte JPEGs (640×480, textured): distinct, like photos off a phone, resized."""
    rng = np.random.default_rng(1)
    out = []
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    for _ in range(count):
        fx, fy, phase = rng.random(3) * [0.05, 0.05, 6.28]
        base = 127 + 80 * np.sin(fx * x + phase)[..., None] * np.cos(fy * y)[..., None]
        pixels = np.clip(base + rng.normal(0, 18, (480, 640, 3)), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        out.append(buf.tobytes())
    sizes = [len(b) for b in out]
    mean = sum(sizes) / len(sizes)
    if not 0.6 * target < mean < 1.5 * target:
        print(
            f"note: JPEG mean size {mean / 1000:.0f} KB (target {target / 1000:.0f} KB)",
            file=sys.stderr,
        )
    return out


def run_ours(
    settings: Settings, topic: str, images: list[bytes], client: str
) -> tuple[float, float, int]:
    """(images/s, MB/s, mean message bytes) of send() + flush() for ``images``."""
    variant = settings.derive(kafka={"client_library": client})
    with ImageProducer(variant, topic=topic) as producer:
        # warm-up: connections, metadata, producer id (not timed)
        producer.send(images[0], source="bench:warmup")
        producer.flush()
        base_sent, base_bytes = producer.stats.sent, producer.stats.bytes_sent
        started = time.perf_counter()
        for index, data in enumerate(images):
            producer.send(data, source=f"bench:{index}")
        remaining = producer.flush()
        elapsed = time.perf_counter() - started
    sent = producer.stats.sent - base_sent
    if remaining or producer.stats.failed or sent != len(images):
        raise ImagetagError(f"{client}: {sent}/{len(images)} delivered, {producer.stats.failures}")
    value_bytes = producer.stats.bytes_sent - base_bytes
    return sent / elapsed, value_bytes / 1e6 / elapsed, round(value_bytes / sent)


def run_perf_test(
    settings: Settings, topic: str, records: int, record_size: int
) -> tuple[float, float]:
    """(records/s, MB/s) from Kafka's ProducerPerformance with our producer's settings."""
    jars = (settings.stack.jvm_dir / "kafka").resolve()
    if not any(jars.glob("kafka-tools-*.jar")):
        raise ImagetagError(f"kafka-tools jar not found in {jars} (run `make setup`)")
    props = [
        f"bootstrap.servers={settings.kafka.bootstrap_servers}",
        "acks=all",
        "enable.idempotence=true",
        f"compression.type={CONFLUENT_DEFAULTS['compression.type']}",
        f"linger.ms={CONFLUENT_DEFAULTS['linger.ms']}",
        f"batch.size={CONFLUENT_DEFAULTS['batch.size']}",
        f"max.request.size={settings.limits.max_bytes + 1024 * 1024}",
        *(f"{k}={v.get_secret_value()}" for k, v in settings.kafka.client.items()),
    ]
    command = [
        "java", "-Xmx1g", "-cp", f"{jars}/*", PERF_CLASS,
        "--topic", topic,
        "--num-records", str(records),
        "--record-size", str(record_size),
        "--throughput", "-1",
        "--producer-props", *props,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    matches = PERF_LINE.findall(result.stdout)
    if result.returncode or not matches:
        raise ImagetagError(
            f"ProducerPerformance failed: {result.stderr[-2000:] or result.stdout[-2000:]}"
        )
    _, records_per_s, mib_per_s = matches[-1]
    # ProducerPerformance's "MB" is MiB; ours are 10^6 bytes.
    return float(records_per_s), float(mib_per_s) * 1024 * 1024 / 1e6


def table(rows: list[Row]) -> str:
    header = (
        "| workload | client | records | msg bytes | images/s | MB/s "
        "| perf-test rec/s | perf-test MB/s | ours / perf-test |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        perf = (
            f"{r.perf_records_per_s:,.0f} | {r.perf_mb_per_s:.1f}"
            if r.perf_records_per_s
            else "– | –"
        )
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "–"
        lines.append(
            f"| {r.workload} | {r.client} | {r.records:,} | {r.record_bytes:,} "
            f"| {r.images_per_s:,.0f} | {r.mb_per_s:.1f} | {perf} | {ratio} |"
        )
    return "\n".join(lines)


def plot_groups(rows: list[Row]) -> dict[str, dict[str, dict[str, float | None]]]:
    """The table as bar-chart inputs: measure (``images/s``, ``MB/s``) -> workload -> client
    (and ``ProducerPerformance``, once per workload, when it ran) -> value."""
    groups: dict[str, dict[str, dict[str, float | None]]] = {"images/s": {}, "MB/s": {}}
    for row in rows:
        per_s = groups["images/s"].setdefault(row.workload, {})
        mb_s = groups["MB/s"].setdefault(row.workload, {})
        per_s[row.client], mb_s[row.client] = row.images_per_s, row.mb_per_s
        if row.perf_records_per_s:
            per_s[PERF_TEST], mb_s[PERF_TEST] = row.perf_records_per_s, row.perf_mb_per_s
    return groups


def write_plots(folder: Path, rows: list[Row]) -> list[Path]:
    """``producer-images.png`` and ``producer-mb.png`` (the table's images/s and MB/s as bars)
    in ``folder``; returns the paths written. A plot that fails is a warning on stderr."""
    groups = plot_groups(rows)
    pngs = plots.render(
        {
            "producer-images.png": lambda: plots.throughput_bars_png(
                groups["images/s"], title="ImageProducer send + flush", ylabel="images/s"
            ),
            "producer-mb.png": lambda: plots.throughput_bars_png(
                groups["MB/s"], title="ImageProducer send + flush", ylabel="MB/s (10^6 bytes)"
            ),
        },
        warn=lambda message: print(f"bench_producer: plot {message}", file=sys.stderr),
    )
    return plots.save_pngs(folder, pngs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=int, default=30_000, help="32×32 PNGs to send")
    parser.add_argument("--jpeg", type=int, default=3_000, help="~100 KB JPEGs to send")
    parser.add_argument(
        "--perf-factor",
        type=int,
        default=3,
        help="ProducerPerformance sends this many times more records (its figure is an average "
        "that includes JVM start-up and JIT warm-up; a longer run amortises them)",
    )
    parser.add_argument("--clients", default="confluent,kafka-python")
    parser.add_argument("--no-perf-test", action="store_true")
    parser.add_argument("--plots", type=Path, default=PLOTS_DIR, help="folder for the PNGs")
    args = parser.parse_args(argv)

    settings = Settings.load()
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    print(f"generating {args.png} PNGs and {args.jpeg} JPEGs...", file=sys.stderr)
    workloads = [("32×32 PNG", png_images(args.png)), ("~100 KB JPEG", jpeg_images(args.jpeg))]
    rows: list[Row] = []
    topics: list[str] = []
    try:
        for workload, images in workloads:
            workload_rows = []
            for client in clients:
                topic = f"bench.producer.{uuid.uuid4().hex[:8]}"
                topics.append(topic)
                ensure_topics(settings, [topic])
                print(f"{workload}: {client}...", file=sys.stderr)
                per_s, mb_s, msg_bytes = run_ours(settings, topic, images, client)
                workload_rows.append(Row(workload, client, len(images), msg_bytes, per_s, mb_s))
            if not args.no_perf_test and workload_rows:
                topic = f"bench.producer.{uuid.uuid4().hex[:8]}"
                topics.append(topic)
                ensure_topics(settings, [topic])
                size = workload_rows[0].record_bytes
                print(f"{workload}: ProducerPerformance --record-size {size}...", file=sys.stderr)
                perf_rate, perf_mb = run_perf_test(
                    settings, topic, len(images) * args.perf_factor, size
                )
                for row in workload_rows:
                    row.perf_records_per_s, row.perf_mb_per_s = perf_rate, perf_mb
            rows.extend(workload_rows)
    except ImagetagError as exc:
        print(f"bench_producer: {exc}", file=sys.stderr)
        return 1
    finally:
        if topics:
            with contextlib.suppress(ImagetagError):
                delete_topics(settings, topics)
    print(
        f"\nbroker {settings.kafka.bootstrap_servers}, {settings.kafka.partitions} partitions, "
        f"acks=all, idempotent, lz4; python {sys.version.split()[0]}, {Path('/proc/cpuinfo').read_text().count('processor')} cpus\n"
    )
    print(table(rows))
    if "kafka-python" in clients:
        from kafka import codec

        print(
            "\nkafka-python: compression "
            + ("lz4" if codec.has_lz4() else "none (no lz4 module)")
            + ", one request in flight (its idempotent mode), CRC-32C of every record batch "
            + ("in C (crc32c module)" if _has_crc32c() else "in pure Python")
        )
    written = write_plots(args.plots, rows)
    print("\nplots: " + ", ".join(str(p) for p in written))
    return 0


def _has_crc32c() -> bool:
    try:
        import crc32c  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
