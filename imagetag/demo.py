"""``make demo``: the whole story on the embedded stack, saying what it did at each step.

1. start the local Kafka + SolrCloud and run ``imagetag init``;
2. train a model on a Fashion-MNIST subset (skipped when the model store already has one);
3. start ``imagetag stream`` as its own process;
4. produce the 10,000 Fashion-MNIST test images plus a handful of corrupt files;
5. wait until every record is accounted for (Solr + review + dead letters) and print the
   figures, then stop the stream (the stack keeps running for the queries it suggests);
6. start ``imagetag web`` on the demo's data, detached (so ``make demo`` returns), and print
   its address.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

from imagetag.errors import ImagetagError
from imagetag.kafka_admin import count_records, delete_topics, ensure_topics, topic_names
from imagetag.settings import Settings
from imagetag.solr_admin import SolrAdmin
from imagetag.stack import LocalStack

IMAGETAG = str(Path(sys.executable).with_name("imagetag"))
TRAIN_LIMIT = int(os.environ.get("DEMO_TRAIN_LIMIT", "10000"))
PRODUCE = int(os.environ.get("DEMO_IMAGES", "10000"))


def step(message: str) -> float:
    print(f"==> {message}", flush=True)
    return time.monotonic()


def done(started: float, message: str) -> None:
    print(f"    {message} ({time.monotonic() - started:.1f}s)", flush=True)


def corrupt_files() -> list[tuple[str, bytes]]:
    """Files that pass the producer's magic-byte check but cannot be decoded."""
    from imagetag.datasets import fashion_mnist_paths, read_idx

    images, labels = fashion_mnist_paths("train")
    png = next(iter(read_idx(images, labels, start=59_999, count=1))).data
    rng = np.random.default_rng(7)
    return [
        ("truncated.png", png[: len(png) // 2]),
        ("header-only.png", png[:33]),
        ("garbage.png", b"\x89PNG\r\n\x1a\n" + rng.bytes(500)),
        ("garbage.jpg", b"\xff\xd8\xff\xe0" + rng.bytes(800)),
        ("bomb.png", _png_bomb_header()),
    ]


def _png_bomb_header() -> bytes:
    """A PNG header claiming 100,000 x 100,000 pixels (refused before any decoding)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00" * 64
    )


def _wait_topics_gone(settings: Settings) -> None:
    from imagetag.kafka_admin import admin_client

    names = set(topic_names(settings))
    for _ in range(60):
        if not names & set(admin_client(settings).list_topics(timeout=10).topics):
            return
        time.sleep(0.5)


def solr_select(settings: Settings, **params: str) -> dict:
    url = f"{settings.solr.url}/{settings.solr.collection}/select"
    response = requests.get(url, params={"wt": "json", **params}, timeout=30)
    response.raise_for_status()
    return dict(response.json())


def main() -> int:
    settings = Settings.load()
    try:
        return run(settings)
    except ImagetagError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


def run(settings: Settings) -> int:
    from imagetag.bundle import ModelStore
    from producers import ImageProducer

    def current_version() -> str | None:
        return ModelStore(settings.model_store).current_version()

    started = step("starting the local stack (Kafka KRaft + SolrCloud)")
    for status in LocalStack(settings).up():
        print(f"    {status.line()}")
    done(started, "stack up")

    started = step("imagetag init from a clean slate: topics, collection, checkpoints emptied")
    # The demo counts what it sent against what arrived, so a previous run's records (which
    # the stream would de-duplicate against) must not be there: start empty every time.
    delete_topics(settings, topic_names(settings))
    _wait_topics_gone(settings)
    ensure_topics(settings)
    collection, _ = SolrAdmin(settings).ensure_collection()
    requests.post(
        f"{settings.solr.url}/{settings.solr.collection}/update",
        params={"commit": "true"},
        json={"delete": {"query": "*:*"}},
        timeout=60,
    ).raise_for_status()
    for folder in (settings.checkpoint_dir, settings.archive_dir):
        shutil.rmtree(folder, ignore_errors=True)
    done(started, f"alias {settings.solr.collection} -> {collection}")

    version = current_version()
    if version is None:
        started = step(f"training on {TRAIN_LIMIT} Fashion-MNIST training images")
        subprocess.run(
            [IMAGETAG, "train", "--data", "fashion-mnist", "--limit", str(TRAIN_LIMIT)],
            check=True,
        )
        version = current_version()
        done(started, f"model {version} promoted")
    else:
        print(f"==> using model {version} from {settings.model_store} (delete it to retrain)")

    logs = settings.stack.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stream_log = logs / "stream.log"
    started = step(f"starting `imagetag stream` (log: {stream_log})")
    with open(stream_log, "wb") as log_file:  # a fresh log: readiness is read from it
        stream = subprocess.Popen([IMAGETAG, "stream"], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: "streaming " in stream_log.read_text(errors="replace"), 180, stream)
        done(started, f"stream running, pid {stream.pid}")
        before = {
            "solr": int(solr_select(settings, rows="0", facet="false")["response"]["numFound"]),
            "review": count_records(settings, settings.kafka.topic_review),
            "dlq": count_records(settings, settings.kafka.topic_dlq),
        }
        started = step(f"producing {PRODUCE} Fashion-MNIST test images + corrupt files")
        from imagetag.datasets import FASHION_MNIST_LABELS, fashion_mnist_paths, read_idx

        images, labels = fashion_mnist_paths("test")
        ids: set[str] = set()
        produce_started = time.time()
        with ImageProducer(settings) as producer:
            for record in read_idx(images, labels, count=PRODUCE, label_names=FASHION_MNIST_LABELS):
                producer.send(record.data, label=record.label, source=f"demo://{record.name}")
                ids.add(hashlib.sha256(record.data).hexdigest())
            bad = corrupt_files()
            for name, data in bad:
                producer.send(data, source=f"demo://corrupt/{name}")
        stats = producer.stats
        done(started, f"sent {stats.sent}, refused {sum(stats.refused.values())}")

        started = step("waiting until every image is accounted for")
        expected_dead = len(bad)

        def counts() -> tuple[int, int, int]:
            return (
                int(solr_select(settings, rows="0", facet="false")["response"]["numFound"])
                - before["solr"],
                count_records(settings, settings.kafka.topic_review) - before["review"],
                count_records(settings, settings.kafka.topic_dlq) - before["dlq"],
            )

        def all_in() -> bool:
            solr, review, dlq = counts()
            print(f"\r    solr={solr} review={review} dlq={dlq}   ", end="", flush=True)
            return solr + review >= len(ids) and dlq >= expected_dead

        requests.get(
            f"{settings.solr.url}/{settings.solr.collection}/update",
            params={"commit": "true"},
            timeout=30,
        )
        _wait(all_in, 1800, stream, interval=2.0)
        print()
        elapsed = time.time() - produce_started
        done(started, "all accounted for")
        report(settings, counts(), len(ids), elapsed, produce_started)
        plots = sorted(Path(settings.model_store, str(version)).glob("*.png"))
        if plots:
            print(f"    model plots: {', '.join(str(p) for p in plots)}")
        step("imagetag status, the stream still running")
        subprocess.run([IMAGETAG, "status"], check=False)
    finally:
        stream.terminate()
        stream.wait(120)
    start_web(settings)
    return 0


def start_web(settings: Settings, timeout_s: float = 60.0) -> str | None:
    """``imagetag web`` as a detached process (its own session, output to
    ``<stack.home>/logs/web.log``, pid in ``<stack.home>/web.pid``), after stopping the one a
    previous demo left; prints and returns its address (None, with the log's end, if it did
    not start)."""
    home = settings.stack.home
    pid_file, log_path = home / "web.pid", home / "logs" / "web.log"
    _stop_web(pid_file)
    started = step("starting the web app on the demo's data (`imagetag web`, detached)")
    with open(log_path, "wb") as log_file:
        web = subprocess.Popen(
            [IMAGETAG, "web"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(f"{web.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and web.poll() is None:
        found = re.findall(r"web on (http://\S+)", log_path.read_text(errors="replace"))
        if found:
            done(started, f"pid {web.pid}, log {log_path}")
            print(f"\n==> the web app: {found[0]}   (stop it: kill $(cat {pid_file}))")
            print(
                "    search needs no login; to upload and review, add yourself:\n"
                "    .venv/bin/imagetag web user add <you> --role uploader --role reviewer"
            )
            return str(found[0])
        time.sleep(0.3)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    print("    the web app did not start: " + " | ".join(tail), file=sys.stderr)
    return None


def _stop_web(pid_file: Path) -> None:
    """Stop the ``imagetag web`` whose pid ``pid_file`` holds, if that process is still ours."""
    try:
        pid = int(pid_file.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if not any(part.endswith(b"imagetag") for part in command) or b"web" not in command:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.2)


def _wait(
    condition: object, timeout_s: float, process: subprocess.Popen[bytes], interval: float = 1.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ImagetagError(f"the stream exited with {process.returncode}; see its log")
        if condition():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise ImagetagError(f"timed out after {timeout_s:.0f}s")


def report(
    settings: Settings, counts: tuple[int, int, int], distinct: int, elapsed: float, since: float
) -> None:
    solr, review, dlq = counts
    since_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since - 1))
    window = f"ingested_at:[{since_iso} TO *]"
    docs = solr_select(
        settings, q=window, fl="label,top_tag,ingested_at,tagged_at", rows="100000", facet="false"
    )["response"]["docs"]
    latencies = [
        _parse(d["tagged_at"]) - _parse(d["ingested_at"])
        for d in docs
        if "tagged_at" in d and "ingested_at" in d
    ]
    labelled = [d for d in docs if d.get("label")]
    n_labelled = len(labelled)
    n_correct = sum(d["label"] == d.get("top_tag") for d in labelled)
    print("\n==> results")
    print(f"    distinct valid images sent     {distinct}")
    print(f"    tagged and indexed in Solr     {solr}")
    print(f"    sent to review (votes < {settings.vote_threshold:.2f})  {review}")
    print(f"    dead-lettered                  {dlq}")
    if n_labelled:
        print(
            f"    precision of indexed top tags  {n_correct / n_labelled:.3f} ({n_correct}/{n_labelled})"
        )
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        print(
            f"    latency produce -> tagged      p50 {p50:.2f}s  p99 {p99:.2f}s "
            f"(a {distinct}-image burst; visible in search within commitWithin="
            f"{settings.solr.commit_within_ms}ms more)"
        )
    print(f"    wall time from first send      {elapsed:.0f}s ({distinct / elapsed:.0f} images/s)")
    base = f"{settings.solr.url}/{settings.solr.collection}"
    print("\n==> try these")
    print(f"    curl '{base}/select?q=*:*&rows=0'                       # tag facets")
    print(f"    curl '{base}/select?q=tags:Sneaker&fq=confidence:[0.8%20TO%20*]'")
    print("    .venv/bin/imagetag search Bag --min-confidence 0.7")
    print("    .venv/bin/imagetag search --similar-to <id from the line above>")
    print("    .venv/bin/imagetag status                             # while a stream runs")
    print("    .venv/bin/imagetag stack down                         # when you are done")
    print(
        "    .venv/bin/imagetag web                                # the web app (the demo starts it)"
    )


def _parse(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    sys.exit(main())
