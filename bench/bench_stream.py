"""Benchmark: the Spark stream against its peer, the plain consumer loop, side by side.

The stream is ``imagetag stream`` (local[N]: N cores); the peer is ``bench/peer.py``, the loop a
user would write instead (one process, one core for tagging), run as N processes in one consumer
group (``--peer-processes``; at most the topic's partitions), as a user scales it: both then
have the machine's cores, and images/s per core compares like with like. Same model, same
``tag_kafka_rows``, same ``SolrWriter``, same images. Each measure runs each pipeline in a run
of its own (own topics, collection, checkpoints, consumer group), after the stack was warmed up
(``--stack-warm-up`` images through the peer, unmeasured: Solr's and Kafka's JIT compilation
is not charged to whichever pipeline comes first), and prints one table, stream and peer side by
side:

1. sustained throughput (images/s, images/s per core, images per CPU second of every process,
   the services' too) draining a filled topic: warmed up, then the images sent at once, from
   the first send to the last image done; ``tag_batch`` alone in a loop (one core, no Kafka,
   no Solr) as the ceiling;
2. produce -> searchable latency p50 / p99 while producing at half of *that pipeline's own*
   throughput, after a warm-up of 200 images (the first batch's start-up is not the steady
   state) and a soak of ``--soak-seconds`` (240) at the same rate (the JVM's JIT compilation
   goes on for minutes; see ``soak``); searchable is when a poll of Solr, ten a second, first
   finds the image, each poll asking for the documents tagged since the oldest image it still
   waits for (``Pending``: no more work for Solr than the measure needs);
3. idle latency: warmed up and idle, one image every 3 s (``--idle-images``), produce ->
   searchable per image, and the batches each image took and their duration;
4. where the CPU goes, draining and at half load: CPU ms per image of each process tree (the
   pipeline, Solr, Kafka; the stream's split into its driver, JVM and Python workers);
5. where a batch's time goes, draining, at half load and idle: tag, solr, kafka and other
   (the batch's duration minus those phases), per batch with data.

The stream's figures come from its Prometheus endpoint (``IMAGETAG_METRICS__STREAM_PORT=0``: a
free port, read from its log): ``imagetag_stream_batches_total`` (every micro-batch, the ones
without data too: Spark runs one after a batch moved the de-duplication's watermark, and its
foreachBatch still runs a Spark job), ``imagetag_stream_batch_duration_seconds`` (Spark's
trigger execution: offsets, planning, the batch, the checkpoint; batches with data only),
``imagetag_stream_phase_duration_seconds{phase}`` (every foreachBatch call) and
``imagetag_stream_trigger_step_seconds{step}`` (Spark's own steps of the batches with data,
which split "other": latestOffset, queryPlanning, walCommit, commitOffsets, and addBatch, the
foreachBatch that holds the phases). The phases of the batches with data alone are in the
stream's batch log lines (``batch N: input=... duration=...ms (tag ...ms solr ...ms kafka
...ms)``, the same figures): the metrics' phase sums minus those are the batches without data.
The stream's tag phase includes reading the records from Kafka (the Spark job does). The peer's
figures come from its ``--stats`` JSON lines; its batch runs from ``consume()``'s return to the
offset commit, and the wait inside ``consume()`` is shown apart.

Also writes the figures as PNGs into ``--plots DIR`` (default ``bench/out/``): the latency
histograms, the throughput bars, and images/s over time while draining.

Runs on the local stack (started if needed); needs a model in the model store
(``imagetag train``, or ``make demo`` which trains one).

    .venv/bin/python bench/bench_stream.py [--images 4000] [--latency-seconds 60]
        [--idle-images 10] [--only stream|peer|both] [--rate N] [--soak-seconds 240]
        [--stack-warm-up 10000] [--plots DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

from imagetag import metrics, plots
from imagetag.documents import solr_date
from imagetag.instrumentation import cmdline, descendants, process_cpu, tree_cpu
from imagetag.kafka_admin import count_records
from imagetag.settings import Settings
from imagetag.stack import LocalStack
from imagetag.testing.samples import fashion_images
from imagetag.testing.services import isolated_settings, solr_count

ROOT = Path(__file__).resolve().parent.parent
IMAGETAG = str(Path(sys.executable).with_name("imagetag"))
PLOTS_DIR = Path(__file__).resolve().parent / "out"  # ignored by git
KINDS = ("stream", "peer")
PHASES = metrics.PHASES  # tag, solr, kafka
IDLE_PERIOD_S = 3.0
IDLE_TIMEOUT_S = 60.0
METRICS_LINE = re.compile(r"metrics on (http://\S+/metrics)")  # the stream logs its endpoint
# The peer's log line once it consumes (bench.peer.READY_LINE; not imported: this file runs
# as a script, where the bench package is not importable).
PEER_READY = "consuming "


# -- what a pipeline did: counters at a moment -------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A pipeline's counters at one moment (since its process started); differences of two
    are what happened in between.

    ``batches``: batches run (the stream's micro-batches, the ones without data included);
    ``data_batches``: batches with input rows, whose durations ``batch_s`` sums and whose
    seconds per phase ``phase_s`` holds (tag, solr, kafka; the peer's ``consume`` too);
    ``rows``: records done; ``nodata_s``: seconds in the phases of the batches without data;
    ``steps``: the stream's batches with data by Spark's own steps (``addBatch`` is the
    foreachBatch, holding the phases), seconds each.
    """

    batches: float = 0.0
    data_batches: float = 0.0
    batch_s: float = 0.0
    phase_s: Mapping[str, float] = field(default_factory=dict)
    rows: float = 0.0
    nodata_s: float = 0.0
    steps: Mapping[str, float] = field(default_factory=dict)
    # phases timed inside another (the stream's executors upsert into Solr inside the tag job)
    nested: frozenset[str] = frozenset()

    def __sub__(self, other: Snapshot) -> Snapshot:
        return Snapshot(
            batches=self.batches - other.batches,
            data_batches=self.data_batches - other.data_batches,
            batch_s=self.batch_s - other.batch_s,
            phase_s={k: v - other.phase_s.get(k, 0.0) for k, v in self.phase_s.items()},
            rows=self.rows - other.rows,
            nodata_s=self.nodata_s - other.nodata_s,
            steps={k: v - other.steps.get(k, 0.0) for k, v in self.steps.items()},
            nested=self.nested,
        )

    def per_batch(self) -> dict[str, float]:
        """Mean seconds per batch with data: ``batch``, each phase, ``other`` (the batch minus
        tag, solr and kafka); empty without batches."""
        if not self.data_batches:
            return {}
        n = self.data_batches
        out = {"batch": self.batch_s / n} | {k: v / n for k, v in self.phase_s.items()}
        out["other"] = out["batch"] - sum(
            out.get(phase, 0.0) for phase in PHASES if phase not in self.nested
        )
        out |= {f"spark {step}": v / n for step, v in self.steps.items()}
        return out


# The stream's line for a batch with data (streaming.job.batch_line).
BATCH_LINE = re.compile(
    r"batch \d+: input=(?P<rows>\d+) .*?duration=(?P<batch>\d+)ms \("
    + " ".join(rf"{phase} (?P<{phase}>\d+)ms" for phase in PHASES)
    + r"\)"
)


def logged_phases(log_text: str) -> dict[str, float]:
    """Seconds per phase over the stream's batch lines in ``log_text`` (batches with data)."""
    phases = dict.fromkeys(PHASES, 0.0)
    for found in BATCH_LINE.finditer(log_text):
        for phase in PHASES:
            phases[phase] += int(found[phase]) / 1000
    return phases


def stream_snapshot(
    samples: Mapping[str, list[tuple[dict[str, str], float]]], log_text: str = ""
) -> Snapshot:
    """The stream's counters from its ``/metrics`` page (``imagetag.metrics.parse``) and, for
    the phases of its batches with data, its log (``logged_phases``)."""

    def total(name: str, **labels: str) -> float:
        return sum(
            value
            for found, value in samples.get(name, [])
            if all(found.get(k) == v for k, v in labels.items())
        )

    every_batch = sum(total("imagetag_stream_phase_duration_seconds_sum", phase=p) for p in PHASES)
    with_data = logged_phases(log_text)
    return Snapshot(
        batches=total("imagetag_stream_batches_total"),
        data_batches=total("imagetag_stream_batch_duration_seconds_count"),
        batch_s=total("imagetag_stream_batch_duration_seconds_sum"),
        phase_s=with_data,
        rows=total("imagetag_stream_records_total"),
        # the log's milliseconds are rounded: never below nothing
        nodata_s=max(0.0, every_batch - sum(with_data.values())),
        nested=frozenset({"solr"}),
        steps={
            labels["step"]: value
            for labels, value in samples.get("imagetag_stream_trigger_step_seconds_sum", [])
            if "step" in labels
        },
    )


def peer_snapshot(lines: Iterable[str]) -> Snapshot:
    """The peer's counters from its ``--stats`` JSON lines (``bench.peer.BatchStats``); a line
    cut short (being written) is skipped."""
    batches = rows = batch_s = 0.0
    phase_s = dict.fromkeys((*PHASES, "consume"), 0.0)
    for line in lines:
        try:
            stats = json.loads(line)
        except ValueError:
            continue
        batches += 1
        rows += stats["rows"]
        batch_s += stats["batch_s"]
        for phase in phase_s:
            phase_s[phase] += stats[f"{phase}_s"]
    return Snapshot(batches, batches, batch_s, phase_s, rows)


@dataclass(frozen=True)
class Cpu:
    """CPU seconds (user + system) spent so far by the pipeline's process tree and by each
    service of the stack, at one moment (monotonic ``at``); differences are what a phase cost.
    """

    seconds: Mapping[str, float]
    at: float

    def __sub__(self, other: Cpu) -> Cpu:
        names = self.seconds.keys() & other.seconds.keys()
        return Cpu({n: self.seconds[n] - other.seconds[n] for n in names}, self.at - other.at)


def cpu_now(run: Running, stack: LocalStack) -> Cpu:
    """The pipeline's trees by part (the peer's processes; the stream's Python driver, the
    Spark JVM and the Python workers below it), then each service's tree."""
    seconds = {"pipeline": 0.0}
    for process in run.processes:
        seconds["pipeline"] += process_cpu(process.pid)
        for child in descendants(process.pid):
            command = cmdline(child)
            part = "spark jvm" if "java" in command.split(" ", 1)[0] else "python workers"
            seconds[part] = seconds.get(part, 0.0) + process_cpu(child)
    for service in stack.services:
        pid = service.pid()
        seconds[service.name] = tree_cpu(pid) if pid is not None else 0.0
    return Cpu(seconds, time.monotonic())


# -- running a pipeline ---------------------------------------------------------------------


class Running:
    """A started pipeline (``stream``: one process; ``peer``: one or more in one consumer
    group, each with its ``--stats`` file), their shared log and their counters."""

    def __init__(
        self,
        kind: str,
        processes: Sequence[subprocess.Popen[bytes]],
        log: Path,
        log_start: int,
        stats: Sequence[Path] = (),
    ) -> None:
        self.kind = kind
        self.processes = list(processes)
        self.log = log
        self.log_start = log_start
        self.stats = list(stats)
        self.metrics_url: str | None = None

    def log_text(self) -> str:
        """What the process logged (the log file may hold earlier runs' lines)."""
        with open(self.log, "rb") as file:
            file.seek(self.log_start)
            return file.read().decode(errors="replace")

    def check(self, doing: str) -> None:
        if any(process.poll() is not None for process in self.processes):
            raise SystemExit(f"{self.kind} died while {doing}; see {self.log}")

    def snapshot(self) -> Snapshot:
        if self.kind == "peer":
            return peer_snapshot(
                line
                for path in self.stats
                if path.exists()
                for line in path.read_text().splitlines()
            )
        assert self.metrics_url is not None
        page = requests.get(self.metrics_url, timeout=10)
        page.raise_for_status()
        return stream_snapshot(metrics.parse(page.text), self.log_text())


@contextmanager
def running(
    kind: str, settings: Settings, tmp: Path, label: str, processes: int = 1
) -> Iterator[Running]:
    """Start ``kind`` on ``settings`` (the peer as ``processes`` processes in one consumer
    group), wait until it consumes, yield it, stop it (SIGTERM)."""
    log = tmp / f"{kind}-{label}.log"
    log_start = log.stat().st_size if log.exists() else 0
    env = settings.child_env()
    stats: list[Path] = []
    group = f"{settings.solr.collection}.peer"  # the peer's: the run's own base name
    commands: list[list[str]] = []
    if kind == "stream":
        commands, ready = [[IMAGETAG, "stream"]], "streaming "
        env["IMAGETAG_METRICS__STREAM_PORT"] = "0"  # any free port: the demo's may be taken
    else:
        for i in range(processes):
            stats.append(tmp / f"peer-{label}-{settings.solr.collection}-{i}.jsonl")
            stats[-1].unlink(missing_ok=True)
            command = [sys.executable, "-m", "bench.peer", "--group", group]
            command += ["--stats", str(stats[-1])]
            commands.append([*command, "--poll-seconds", str(settings.spark.trigger_seconds)])
        ready = PEER_READY
        env |= {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        started = [
            subprocess.Popen(command, env=env, stdout=out, stderr=out, cwd=ROOT)
            for command in commands
        ]
    run = Running(kind, started, log, log_start, stats)
    try:
        deadline = time.monotonic() + 180
        while run.log_text().count(ready) < len(started):
            run.check("starting")
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind} did not start; see {log}")
            time.sleep(0.5)
        if kind == "stream":
            found = METRICS_LINE.search(run.log_text())
            if found is None:
                raise SystemExit(f"stream logged no metrics endpoint; see {log}")
            run.metrics_url = found.group(1)
        yield run
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        delete_group(settings, group if kind == "peer" else settings.kafka.stream_group)


def delete_group(settings: Settings, group: str) -> None:
    """Remove a run's consumer group (the peer's, or the one the stream commits to for lag
    tools): its topics go with the run. A failure is a note."""
    from concurrent.futures import TimeoutError as FutureTimeout

    from confluent_kafka import KafkaError, KafkaException

    from imagetag.kafka_admin import admin_client

    admin = admin_client(settings)  # kept alive until the futures are done: they die with it
    for future in admin.delete_consumer_groups([group], request_timeout=10).values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                note(f"consumer group {group} not deleted: {exc}")
        except FutureTimeout:
            note(f"consumer group {group} not deleted in 30s")


def isolated_run(settings: Settings, tag: str, tmp: Path) -> AbstractContextManager[Settings]:
    """Settings with the run's own topics, collection and checkpoints, created and removed; the
    rest as deployed (``spark.max_offsets_per_trigger`` too: a drained backlog is tagged in the
    batches a user's stream would run)."""
    base = f"bench_{tag}_{uuid.uuid4().hex[:6]}"
    return isolated_settings(
        settings,
        base,
        checkpoint_dir=str(tmp / base / "checkpoints"),
        archive_dir=str(tmp / base / "archive"),
    )


# -- the images ---------------------------------------------------------------------------


def image_id(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def image_frame(data: Sequence[tuple[bytes, str]]) -> pd.DataFrame:
    """ImageEvents as ``tag_batch`` takes them."""
    return pd.DataFrame(
        {
            "id": [image_id(d) for d, _ in data],
            "image": [d for d, _ in data],
            "content_type": "image/png",
            "source": "bench://raw",
            "produced_at": int(time.time() * 1000),
            "label": [label for _, label in data],
            "metadata": [{} for _ in data],
        }
    )


def raw_loop(
    settings: Settings, model: Any, data: list[tuple[bytes, str]]
) -> tuple[float, set[str]]:
    """images/s of tag_batch in one process, one core (OpenCV single-threaded), and the ids of
    the images of ``data`` it tagged (the ones a pipeline with this model makes searchable)."""
    import cv2

    from imagetag.tagging import tag_batch

    cv2.setNumThreads(1)
    frame = image_frame(data)
    tag_batch(
        frame.iloc[:50], model, threshold=settings.vote_threshold, limits=settings.limits
    )  # warm up
    tagged: set[str] = set()
    started = time.perf_counter()
    for lo in range(0, len(frame), 500):
        done, _, _ = tag_batch(
            frame.iloc[lo : lo + 500],
            model,
            threshold=settings.vote_threshold,
            limits=settings.limits,
        )
        tagged.update(done["id"] if len(done) else ())
    return len(frame) / (time.perf_counter() - started), tagged


def tagged_images(
    settings: Settings, model: Any, candidates: list[tuple[bytes, str]], count: int
) -> list[tuple[bytes, str]]:
    """The first ``count`` distinct candidates the model tags (not sent to review): an idle
    image must become searchable for its latency to be measured."""
    from imagetag.tagging import tag_batch

    tagged, _, _ = tag_batch(
        image_frame(candidates), model, threshold=settings.vote_threshold, limits=settings.limits
    )
    ids = set(tagged["id"]) if len(tagged) else set()
    chosen: dict[str, tuple[bytes, str]] = {}
    for payload, label in candidates:
        if image_id(payload) in ids:
            chosen.setdefault(image_id(payload), (payload, label))
    return list(chosen.values())[:count]


def produce(
    settings: Settings,
    data: Sequence[tuple[bytes, str]],
    rate: float | None = None,
    source: str = "bench://stream",
    sent: list[tuple[str, float]] | None = None,
) -> list[tuple[str, float]]:
    """Send images (at `rate` per second if given); returns (id, send time) pairs, appended to
    ``sent`` (if given) as each is sent."""
    from producers import ImageProducer

    sent = [] if sent is None else sent
    with ImageProducer(settings) as producer:
        started = time.time()
        for i, (payload, label) in enumerate(data):
            if rate:
                wait = started + i / rate - time.time()
                if wait > 0:
                    time.sleep(wait)
            sent.append((image_id(payload), time.time()))
            producer.send(payload, label=label, source=source)
            producer.poll(0)
    return sent


def done_count(settings: Settings) -> int:
    """Images through the pipeline: searchable in Solr or sent to review."""
    return solr_count(settings) + count_records(settings, settings.kafka.topic_review)


# -- the measures -----------------------------------------------------------------------------


# Images the throughput run drains before it measures: the first thousands of records through
# a JVM run while its JIT compiles, Solr's and Kafka's too (in the first pipeline measured after
# the stack started, upserting a batch of 2000 documents took 3.2 s, in the next one 0.35 s).
DRAIN_WARM_UP = 2000


def throughput(
    kind: str,
    settings: Settings,
    data: list[tuple[bytes, str]],
    tmp: Path,
    progress: list[tuple[float, float]] | None = None,
    processes: int = 1,
) -> tuple[float, Snapshot, Cpu]:
    """images/s of ``kind`` (the peer as ``processes`` processes) draining ``data`` as a
    backlog, its counters and the CPU spent over the drain.

    The pipeline is warmed up first by draining DRAIN_WARM_UP other images (a cold first
    batch is start-up, not throughput: Spark's takes tens of seconds; and the JVMs compile),
    then ``data`` is sent at once (a fraction of a second next to the tagging, so the pipeline
    finds a filled topic) and the rate is from the first send to the last image done. Appends
    (s since the first send, images done) to ``progress`` at each poll."""
    distinct = len({image_id(d) for d, _ in data})
    with running(kind, settings, tmp, "throughput", processes) as run:
        warm_up(run, settings, DRAIN_WARM_UP)
        stack = LocalStack(settings)
        before, done_before = run.snapshot(), done_count(settings)
        cpu_before = cpu_now(run, stack)
        started = time.monotonic()
        produce(settings, data, source=f"bench://{kind}")
        while True:
            done = done_count(settings) - done_before
            elapsed = time.monotonic() - started
            if progress is not None:
                progress.append((elapsed, done))
            if done >= distinct:
                break
            run.check("draining the topic")
            time.sleep(0.25)
        cpu = cpu_now(run, stack) - cpu_before
        time.sleep(2)  # the last batch's duration is recorded after its documents are visible
        spent = run.snapshot() - before
    return distinct / elapsed, spent, cpu


# Images the peer drains in a run of its own before the first measure (``warm_stack``).
STACK_WARM_UP = 10_000


def warm_stack(settings: Settings, tmp: Path, images: int, processes: int) -> None:
    """``images`` images through the peer (``processes`` processes) in a run of its own, not
    measured: whichever pipeline is measured first then meets Solr and Kafka past their JIT
    warm-up, as the one measured after it does. Without it the first pipeline paid for it:
    draining first on a fresh stack, the peer's Solr took 1.5 ms of CPU per image and the peer
    did 253 images/s; draining after the stream's runs, 0.5 ms and 281 images/s."""
    with (
        isolated_run(settings, "stack_warm_up", tmp) as run,
        running("peer", run, tmp, "stack-warm-up", processes) as started,
    ):
        warm_up(started, run, images)


def warm_up(run: Running, settings: Settings, count: int = 200) -> None:
    """``count`` images sent at once through ``run`` (Python workers started, model loaded,
    first batches run), then wait until it is idle."""
    warm = fashion_images(count, start=50_000)
    produce(settings, warm, source=f"bench://{run.kind}/warm-up")
    distinct = len({image_id(d) for d, _ in warm})
    deadline = time.monotonic() + 300
    while done_count(settings) < distinct:
        run.check("warming up")
        if time.monotonic() > deadline:
            raise SystemExit(f"{run.kind} did not warm up; see {run.log}")
        time.sleep(0.5)
    wait_idle(run)


SOAK_START, SOAK_MAX = 10_000, 40_000  # training-split images no other measure sends


def soak(run: Running, settings: Settings, rate: float, seconds: float) -> None:
    """Produce at ``rate`` for ``seconds`` through ``run``, images none of the measures
    send, then wait until it is idle. The JVM compiles Spark's code for minutes after the
    first batches (at 70 images/s here, its CPU per 30 s fell from 21 to 12 s over 4.5
    minutes, the JIT compiler's share from 11 to 4 s): without a soak, the latency run
    measures that, not a stream that has been up for a day."""
    count = min(SOAK_MAX, max(1, int(rate * seconds)))
    produce(settings, fashion_images(count, start=SOAK_START), rate, f"bench://{run.kind}/soak")
    wait_idle(run)


def wait_idle(run: Running, quiet_s: float = 3.0, timeout_s: float = 300.0) -> None:
    """Until ``run`` has done no record for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    rows = run.snapshot().rows
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = run.snapshot().rows
        if now == rows:
            return
        rows = now


# How far back the latency run's poll looks at most (``tagged_at``), and the margin it keeps
# before the oldest image it still waits for (same machine, same clock: tagged_at follows the
# send).
POLL_WINDOW_S, POLL_MARGIN_S = 20.0, 1.0


class Pending:
    """The images sent so far and the oldest one still expected in Solr: where the latency
    poll's window starts (``since``).

    The poll asks Solr for the documents tagged since then, ten times a second. It used to ask
    for the last 20 s whatever it still waited for: at 148 images/s, about 3000 documents a
    poll, which cost Solr 15.7 ms of CPU a poll (4.6 ms for 300, 2.0 for none; measured on
    the demo's collection), about 0.9 ms of Solr's CPU per image measured, on the cores the
    pipeline under test runs on. ``expected`` are the images the model tags (``raw_loop``):
    an image it sends to review never shows up and would hold the window open."""

    def __init__(self, expected: set[str] | None) -> None:
        self.sent: list[tuple[str, float]] = []
        self.expected = expected
        self.oldest = 0  # sent[oldest:] holds every image still expected

    def since(self, seen: Mapping[str, float], now: float) -> float:
        """The start of the poll's window: the send time of the oldest image expected and not
        seen yet (now if none), less the margin; never more than POLL_WINDOW_S back."""
        sent = self.sent
        while self.oldest < len(sent) and (
            sent[self.oldest][0] in seen
            or (self.expected is not None and sent[self.oldest][0] not in self.expected)
        ):
            self.oldest += 1
        start = sent[self.oldest][1] if self.oldest < len(sent) else now
        return max(start - POLL_MARGIN_S, now - POLL_WINDOW_S)


def latency(
    run: Running,
    settings: Settings,
    data: list[tuple[bytes, str]],
    rate: float,
    expected: set[str] | None = None,
) -> list[float]:
    """Produce -> searchable seconds of the images of ``data`` sent at ``rate`` to the started
    pipeline ``run`` (warmed up); images not searchable 10 s after the last was sent (sent to
    review, or late) are left out. ``expected``: the ids the pipeline should make searchable
    (``Pending``; None: any may)."""
    seen: dict[str, float] = {}
    stop = threading.Event()
    url = f"{settings.solr.url}/{settings.solr.collection}/select"
    pending = Pending(expected)

    def poll() -> None:
        while not stop.is_set():
            since = pending.since(seen, time.time())
            body = requests.get(
                url,
                params={
                    "q": f"tagged_at:[{solr_date(since * 1000)} TO *]",
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
        sent = produce(settings, data, rate, f"bench://{run.kind}/latency", sent=pending.sent)
        time.sleep(10)
        run.check("measuring latency")
    finally:
        stop.set()
        poller.join()
    return [seen[i] - t for i, t in sent if i in seen]


def searchable(settings: Settings, image: str) -> bool:
    response = requests.get(
        f"{settings.solr.url}/{settings.solr.collection}/select",
        params={"q": f'id:"{image}"', "rows": "0", "facet": "false", "wt": "json"},
        timeout=30,
    )
    response.raise_for_status()
    return int(response.json()["response"]["numFound"]) > 0


@dataclass(frozen=True)
class IdleImage:
    """One image sent to an idle pipeline: produce -> searchable seconds (None: not within
    the timeout), the batches run until the next image was sent, and their mean duration."""

    latency_s: float | None
    batches: float
    batch_s: float | None


def idle_latency(
    run: Running, settings: Settings, images: list[tuple[bytes, str]]
) -> tuple[list[IdleImage], Snapshot]:
    """One image every ``IDLE_PERIOD_S`` (or once the previous one is searchable, if later) to
    the idle ``run``; returns each image's figures and the counters' difference over all."""
    wait_idle(run)
    first = run.snapshot()
    results: list[IdleImage] = []
    for payload, label in images:
        before = run.snapshot()
        started = time.monotonic()
        ((image, sent_at),) = produce(
            settings, [(payload, label)], source=f"bench://{run.kind}/idle"
        )
        seen_at = None
        while time.time() - sent_at < IDLE_TIMEOUT_S:
            if searchable(settings, image):
                seen_at = time.time()
                break
            run.check("measuring idle latency")
            time.sleep(0.05)
        # The batches it took: all of them until the next image (the no-data one after it too).
        time.sleep(max(0.0, started + IDLE_PERIOD_S - time.monotonic()))
        spent = run.snapshot() - before
        results.append(
            IdleImage(
                None if seen_at is None else seen_at - sent_at,
                spent.batches,
                spent.batch_s / spent.data_batches if spent.data_batches else None,
            )
        )
    return results, run.snapshot() - first


def spark_cores(master: str) -> int:
    """Cores a local master uses: local[N] -> N, local[*] -> all, local -> 1."""
    if master == "local":
        return 1
    if master.startswith("local["):
        inner = master[len("local[") :].rstrip("]").split(",")[0]
        return (os.cpu_count() or 1) if inner == "*" else int(inner)
    return os.cpu_count() or 1


# -- the tables ---------------------------------------------------------------------------------


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 99)) -> list[float]:
    """The ``qs`` percentiles of ``values`` (linear interpolation); NaN each when empty."""
    if not len(values):
        return [math.nan for _ in qs]
    return [float(v) for v in np.percentile(np.asarray(values, dtype=float), list(qs))]


def fmt(value: float | None, spec: str = ".2f") -> str:
    """``value`` formatted, or ``-`` when it is missing (None or NaN)."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:{spec}}"


def format_table(
    title: str, rows: Sequence[tuple[str, str, str]], columns: Sequence[str] = ("measure", *KINDS)
) -> str:
    """A titled text table: the first column left-aligned, the others right-aligned, each as
    wide as its widest cell."""
    table = [tuple(columns), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(table[0]))
    return "\n".join([title, line(table[0]), rule, *(line(row) for row in rows)])


def breakdown_rows(by_kind: Mapping[str, Snapshot | None]) -> list[tuple[str, str, str]]:
    """The rows of a "where a batch's time goes" table: counts, then ms per batch with data
    and its share of the batch, per phase and other, then the stream's batch by Spark's own
    steps (other = the steps outside ``addBatch`` plus what ``addBatch``, the foreachBatch,
    spends beyond the phases), the peer's wait in ``consume()`` and the batches without data."""

    def cells(render: Callable[[Snapshot], str]) -> tuple[str, str]:
        got = [by_kind.get(kind) for kind in KINDS]
        return (render(got[0]) if got[0] else "-", render(got[1]) if got[1] else "-")

    def share(name: str) -> Callable[[Snapshot], str]:
        def render(snap: Snapshot) -> str:
            means = snap.per_batch()
            if name not in means:
                return "-"
            ms = means[name] * 1000
            pct = 100 * means[name] / means["batch"] if means["batch"] else math.nan
            inside = name not in ("batch", "consume")  # a share of the batch
            within = " inside tag" if name in snap.nested else ""
            return f"{ms:.0f} ms" + (f" ({fmt(pct, '.0f')}%{within})" if inside else "")

        return render

    rows = [
        ("batches with data", *cells(lambda s: f"{s.data_batches:.0f}")),
        (
            "images per batch",
            *cells(lambda s: fmt(s.rows / s.data_batches if s.data_batches else None, ".1f")),
        ),
        ("batch", *cells(share("batch"))),
    ]
    rows += [(phase, *cells(share(phase))) for phase in (*PHASES, "other")]
    steps = sorted({step for snap in by_kind.values() if snap for step in snap.steps})
    rows += [(f"  spark {step}", *cells(share(f"spark {step}"))) for step in steps]
    rows.append(("consume wait (outside the batch)", *cells(share("consume"))))

    def nodata(snap: Snapshot) -> str:
        n = snap.batches - snap.data_batches
        return f"{n:.0f}" + (f" x {snap.nodata_s / n * 1000:.0f} ms" if n > 0 else "")

    rows.append(("batches without data", *cells(nodata)))
    return rows


@dataclass
class Result:
    """One pipeline's figures over the whole bench."""

    kind: str
    cores: int
    throughput: float = math.nan
    drained: Snapshot | None = None
    timeline: list[tuple[float, float]] = field(default_factory=list)
    rate: float = math.nan
    latencies: list[float] = field(default_factory=list)
    loaded: Snapshot | None = None  # the counters over the half-load run, its 10 s after too
    idle: list[IdleImage] = field(default_factory=list)
    idle_spent: Snapshot | None = None
    drained_cpu: tuple[Cpu, int] | None = None  # CPU spent draining, and the images
    loaded_cpu: tuple[Cpu, int] | None = None  # CPU spent at half load, and the images sent


def per_cpu_second(result: Result) -> str:
    """Images drained per CPU second of every process (pipeline, Kafka, Solr): throughput per
    core that counts the cores the services took too, however busy the machine was."""
    if result.drained_cpu is None:
        return "-"
    cpu, images = result.drained_cpu
    return fmt(images / max(sum(cpu.seconds.values()), 1e-9), ".0f")


def cpu_rows(results: Mapping[str, Result]) -> list[tuple[str, str, str]]:
    """The rows of the "where the CPU goes" table: ms of CPU per image by process, and how
    many of the machine's cores all of them kept busy, draining and at half load."""
    rows: list[tuple[str, str, str]] = []
    spent: dict[str, tuple[Cpu, int]] = {}

    def line(label: str, render: Callable[[Cpu, int], str]) -> tuple[str, str, str]:
        stream, peer = (render(*spent[k]) if k in spent else "-" for k in KINDS)
        return (label, stream, peer)

    for what, pick in (
        ("draining", lambda r: r.drained_cpu),
        ("half load+10s", lambda r: r.loaded_cpu),
    ):
        spent = {kind: got for kind, r in results.items() if (got := pick(r))}

        names = sorted({name for cpu, _ in spent.values() for name in cpu.seconds})
        for name in [*names, "all"]:

            def per_image(cpu: Cpu, images: int, name: str = name) -> str:
                used = sum(cpu.seconds.values()) if name == "all" else cpu.seconds.get(name, 0.0)
                return f"{used / max(images, 1) * 1000:.1f}"

            rows.append(line(f"{what}: {name} (ms/image)", per_image))
        rows.append(
            line(
                f"{what}: cores busy",
                lambda cpu, _: fmt(sum(cpu.seconds.values()) / cpu.at if cpu.at else None),
            )
        )
    return rows


def report(
    results: Mapping[str, Result],
    raw: float,
    images: int,
    settings: Settings,
    rate: float | None = None,
    soak_s: float = 0.0,
) -> str:
    """Every table, stream and peer side by side (``-`` for a pipeline not run)."""

    def both(render: Callable[[Result], str]) -> tuple[str, str]:
        got = [results.get(kind) for kind in KINDS]
        return (render(got[0]) if got[0] else "-", render(got[1]) if got[1] else "-")

    peers = str(results["peer"].cores) if "peer" in results else "-"
    tables = [
        format_table(
            f"throughput, draining {images} Fashion-MNIST 28x28 PNGs sent at once, warmed up "
            f"(stream {settings.spark.master}, peer {peers} processes)",
            [
                ("images/s", *both(lambda r: fmt(r.throughput, ".0f"))),
                ("cores", *both(lambda r: str(r.cores))),
                ("images/s/core", *both(lambda r: fmt(r.throughput / r.cores, ".0f"))),
                (
                    "per core / tag_batch alone",
                    *both(lambda r: fmt(r.throughput / r.cores / raw, ".2f")),
                ),
                ("images per CPU s, all processes", *both(per_cpu_second)),
            ],
        )
        + f"\ntag_batch alone, one process, one core, no Kafka or Solr: {raw:.0f} images/s",
    ]
    lat = {kind: percentiles(r.latencies) for kind, r in results.items()}
    tables.append(
        format_table(
            "latency produce -> searchable, producing at "
            + (f"{rate:g} images/s " if rate else "half each pipeline's own throughput ")
            + (f"after a {soak_s:g}s soak at that rate " if soak_s > 0 else "")
            + f"(trigger / poll {settings.spark.trigger_seconds:g}s, "
            f"commitWithin {settings.solr.commit_within_ms}ms)",
            [
                ("rate (images/s)", *both(lambda r: fmt(r.rate, ".0f"))),
                ("images measured", *both(lambda r: str(len(r.latencies)))),
                ("p50 (s)", *both(lambda r: fmt(lat[r.kind][0]))),
                ("p99 (s)", *both(lambda r: fmt(lat[r.kind][1]))),
            ],
        )
    )

    def idle_latencies(r: Result) -> list[float]:
        return [i.latency_s for i in r.idle if i.latency_s is not None]

    def mean(values: Iterable[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return sum(kept) / len(kept) if kept else None

    tables.append(
        format_table(
            f"idle: warmed up, one image every {IDLE_PERIOD_S:g}s, produce -> searchable",
            [
                ("images searchable", *both(lambda r: f"{len(idle_latencies(r))}/{len(r.idle)}")),
                ("p50 (s)", *both(lambda r: fmt(percentiles(idle_latencies(r), [50])[0]))),
                ("max (s)", *both(lambda r: fmt(max(idle_latencies(r), default=None)))),
                ("batches per image", *both(lambda r: fmt(mean(i.batches for i in r.idle)))),
                (
                    "batch duration (s)",
                    *both(lambda r: fmt(mean(i.batch_s for i in r.idle), ".3f")),
                ),
            ],
        )
        + "".join(
            f"\n{kind} per image (s): " + " ".join(fmt(i.latency_s) for i in results[kind].idle)
            for kind in KINDS
            if kind in results
        )
    )
    tables.append(
        format_table(
            f"where the CPU goes: CPU ms per image by process tree ({os.cpu_count()} cores)",
            cpu_rows(results),
        )
    )
    for what, pick in (
        ("draining the topic", lambda r: r.drained),
        ("at half load", lambda r: r.loaded),
        ("idle, one image a batch", lambda r: r.idle_spent),
    ):
        tables.append(
            format_table(
                f"where a batch's time goes, {what} (mean per batch with data)",
                breakdown_rows({kind: pick(r) for kind, r in results.items()}),
            )
        )
    return "\n\n".join(tables)


def note(message: str) -> None:
    print(f"bench_stream: {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--idle-images", type=int, default=10)
    parser.add_argument("--only", choices=("stream", "peer", "both"), default="both")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="images/s of the latency run (default: half the run's own throughput); a fixed "
        "rate compares two settings at the same load on a noisy machine",
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=240.0,
        help="before the latency run, produce at its rate for this long (other images), so "
        "that it measures a JVM past its JIT compilation (about 4 minutes at half load here; "
        "0: measure the first minutes of a stream instead)",
    )
    parser.add_argument(
        "--peer-processes",
        type=int,
        default=None,
        help="peer processes in one consumer group (default: as many as the stream has "
        "cores, at most the topic's partitions): both pipelines then have the machine's cores",
    )
    parser.add_argument(
        "--stack-warm-up",
        type=int,
        default=STACK_WARM_UP,
        help="images the peer drains, unmeasured, before the first measure, so that Solr and "
        "Kafka are past their JIT warm-up for both pipelines (0: none)",
    )
    parser.add_argument("--plots", type=Path, default=PLOTS_DIR, help="folder for the PNGs")
    args = parser.parse_args()
    settings = Settings.load()
    LocalStack(settings).up()
    tmp = ROOT / ".stack" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)
    kinds = KINDS if args.only == "both" else (args.only,)
    data = fashion_images(args.images)

    from imagetag.bundle import load_current

    model = load_current(settings.model_store)
    raw, tagged = raw_loop(settings, model, data)
    idle_images = tagged_images(
        settings,
        model,
        fashion_images(max(50, 5 * args.idle_images), start=55_000),
        args.idle_images,
    )
    del model
    stream_cores = spark_cores(settings.spark.master)
    peers = args.peer_processes or min(stream_cores, settings.kafka.partitions)
    cores = {"stream": stream_cores, "peer": peers}
    if args.stack_warm_up > 0:
        note(f"warming the stack up: the peer drains {args.stack_warm_up} images")
        warm_stack(settings, tmp, args.stack_warm_up, peers)
    results: dict[str, Result] = {}
    for kind in kinds:
        result = results[kind] = Result(kind, cores[kind])
        processes = cores[kind] if kind == "peer" else 1  # the stream is one process
        note(f"{kind}: throughput over {len(data)} images")
        with isolated_run(settings, f"{kind}_tput", tmp) as run:
            result.throughput, result.drained, cpu = throughput(
                kind, run, data, tmp, result.timeline, processes
            )
            result.drained_cpu = (cpu, len({image_id(d) for d, _ in data}))
        result.rate = args.rate or result.throughput / 2
        count = max(1, int(result.rate * args.latency_seconds))
        note(f"{kind}: latency at {result.rate:.0f} images/s, then {len(idle_images)} idle images")
        with (
            isolated_run(settings, f"{kind}_latency", tmp) as run,
            running(kind, run, tmp, "latency", processes) as started,
        ):
            warm_up(started, run)
            if args.soak_seconds > 0:
                note(f"{kind}: soaking {args.soak_seconds:g}s at {result.rate:.0f} images/s")
                soak(started, run, result.rate, args.soak_seconds)
            stack = LocalStack(run)
            before, counters = cpu_now(started, stack), started.snapshot()
            result.latencies = latency(
                started,
                run,
                fashion_images(count),
                result.rate,
                tagged if count <= len(data) else None,
            )
            result.loaded_cpu = (cpu_now(started, stack) - before, count)
            result.loaded = started.snapshot() - counters
            result.idle, result.idle_spent = idle_latency(started, run, idle_images)
    print()
    print(report(results, raw, len(data), settings, args.rate, args.soak_seconds))
    written = write_plots(
        args.plots,
        latencies_s={kind: r.latencies for kind, r in results.items()},
        rates={"tag_batch alone": (raw, 1)}
        | {
            f"{kind} {settings.spark.master if kind == 'stream' else f'({r.cores} processes)'}": (
                r.throughput,
                r.cores,
            )
            for kind, r in results.items()
        },
        progress={kind: r.timeline for kind, r in results.items()},
        subtitle=(f"{args.rate:g} images/s, " if args.rate else "half each pipeline's throughput, ")
        + f"trigger / poll {settings.spark.trigger_seconds:g}s",
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

    ``latencies_s``: produce -> searchable latencies per series (``stream``, ``peer``) ->
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
                title="draining a filled topic",
                xlabel="s since the images were sent",
            ),
        },
        warn=lambda message: print(f"bench_stream: plot {message}", file=sys.stderr),
    )
    return plots.save_pngs(folder, pngs)


if __name__ == "__main__":
    sys.exit(main())
