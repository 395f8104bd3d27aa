"""End-to-end fixtures: a trained model, the stream as a real `imagetag stream` process, and
readers of Solr and Kafka that count what the stream wrote (``imagetag.testing.services``)."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from imagetag.kafka_admin import group_lag
from imagetag.settings import Settings
from imagetag.testing import services
from producers import ImageProducer

ROOT = Path(__file__).resolve().parents[2]
IMAGETAG = str(Path(sys.executable).with_name("imagetag"))


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as IMAGETAG_* environment variables (for a child `imagetag` process)."""
    return settings.child_env()


def wait_until(
    condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 1.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def solr_count(settings: Settings) -> int:
    """Documents in the collection; -1 while Solr is down or the collection still recovering."""
    try:
        return services.solr_count(settings)
    except requests.RequestException:
        return -1


def raw_send(settings: Settings, records: list[tuple[bytes | None, bytes]]) -> None:
    """Send records bypassing ImageProducer's validation (a misbehaving client)."""
    from confluent_kafka import Producer

    producer = Producer(settings.kafka.client_config())
    for key, value in records:
        producer.produce(settings.kafka.topic_images, key=key, value=value)
    assert producer.flush(30) == 0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StreamProcess:
    """`imagetag stream` (or another command running the stream, e.g. `imagetag submit
    stream`) as a child process with the given settings."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = ("stream",),
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.env = env or {}
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> StreamProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 (lives as long as the child)
        self.process = subprocess.Popen(
            [IMAGETAG, *self.command],
            env=settings_env(self.settings) | self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        wait_until(lambda: "streaming " in self.log(), 120, "the stream to start")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """A scrape of the stream's ``/metrics``, at the address it logged (the tests give it
        port 0: any free port)."""
        from imagetag.metrics import parse

        urls = re.findall(r"metrics on (http://\S+/metrics)", self.log())
        assert urls, "the stream logged no metrics address"
        response = requests.get(urls[-1], timeout=10)
        response.raise_for_status()
        return parse(response.text)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return int(self.process.returncode)


@pytest.fixture
def stream_factory(tmp_path: Path) -> Iterator[Callable[..., StreamProcess]]:
    started: list[StreamProcess] = []

    def make(
        settings: Settings,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = ("stream",),
    ) -> StreamProcess:
        stream = StreamProcess(settings, tmp_path / f"stream-{len(started)}.log", env, command)
        started.append(stream)
        return stream

    yield make
    for stream in started:
        if stream.process is not None and stream.process.poll() is None:
            stream.stop()


# -- a model trained once per session, the stream's settings, accounting --------------------

TRAIN_ARGS = ["--data", "fashion-mnist", "--limit", "3000", "--k", "64", "--trees", "30"]


def run_imagetag(
    settings: Settings, *args: str, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """``imagetag <args>`` as a child process with the settings, its output captured."""
    return subprocess.run(
        [IMAGETAG, *args],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def train(settings: Settings, *extra: str) -> None:
    result = run_imagetag(settings, "train", *TRAIN_ARGS, *extra, timeout_s=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="session")
def model_store(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    store = str(tmp_path_factory.mktemp("e2e-models"))
    train(settings.derive(model_store=store))
    return store


@pytest.fixture
def stream_settings(isolated_settings: Settings, model_store: str, tmp_path: Path) -> Settings:
    return isolated_settings.derive(
        model_store=model_store,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        archive_dir=str(tmp_path / "archive"),
        spark={"trigger_seconds": 1.0, "max_offsets_per_trigger": 200},
        metrics={"stream_port": 0},
    )


def produce(settings: Settings, images: list[tuple[bytes, str]]) -> set[str]:
    with ImageProducer(settings) as producer:
        for data, label in images:
            producer.send(data, label=label, source="test://fashion")
    assert producer.stats.failed == 0
    return {sha256(data) for data, _ in images}


def accounted(settings: Settings, valid: int, dead: int) -> Callable[[], bool]:
    def check() -> bool:
        review = len(services.topic_records(settings, settings.kafka.topic_review))
        dlq = len(services.topic_records(settings, settings.kafka.topic_dlq))
        return solr_count(settings) + review >= valid and dlq >= dead

    return check


def metric(
    scrape: dict[str, list[tuple[dict[str, str], float]]], name: str, label: str
) -> dict[str, float]:
    """One labelled metric of a scrape as {label value: value}."""
    return {labels[label]: value for labels, value in scrape.get(name, [])}


def group_caught_up(settings: Settings) -> bool:
    """Has the stream's consumer group committed every partition's end offset?"""
    lag = group_lag(settings, settings.kafka.stream_group, settings.kafka.topic_images)
    return bool(lag) and all(committed == end for committed, end in lag.values())


def assert_exact(settings: Settings, ids: set[str], dead: int) -> None:
    docs = services.solr_docs(settings)
    solr_ids = [d["id"] for d in docs]
    assert len(solr_ids) == len(set(solr_ids)), "duplicate ids in Solr"
    review = [
        k.decode() for k, _ in services.topic_records(settings, settings.kafka.topic_review) if k
    ]
    assert len(review) == len(set(review)), "an image went to review twice"
    assert set(solr_ids).isdisjoint(review)
    assert set(solr_ids) | set(review) == ids
    assert len(services.topic_records(settings, settings.kafka.topic_dlq)) == dead


def start_web(settings: Settings, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`imagetag web` as its own process on ``settings`` (a free port: ``web.port`` 0), its
    output in ``log_path``; returns the process and its address, once it listens."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [IMAGETAG, "web"],
            env=settings_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    found: list[str] = []

    def started() -> bool:
        assert process.poll() is None, log_path.read_text()
        found.extend(re.findall(r"web on (http://\S+)", log_path.read_text()))
        return bool(found)

    wait_until(started, 60, "imagetag web to listen", interval_s=0.2)
    return process, found[0]
