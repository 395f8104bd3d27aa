"""What ``imagetag status`` shows, gathered: the services, the stream, Solr's documents, the
review and dead-letter topics and the model. ``gather(settings)`` returns a :class:`Status`;
``Status.as_dict()`` is the ``--json`` document; the command prints the text.

Each section is gathered on its own, in parallel, with short timeouts (``StatusOptions``), and
a section that fails becomes a line saying why: a service that is down, refuses our user or
answers nonsense is shown as such, never as a traceback. The sections that read Kafka (the
consumer group's lag, the review and dead-letter counts) run only once Kafka has answered, so a
broker that is down costs one timeout, not one per section. The figures are read at moments a
few seconds apart (the stream's come from the second scrape, after the rate window), so while
the stream runs Solr's count may trail its tagged count by a batch.

Choices, and why:

- **Kafka's version**: a broker does not tell its clients its version (librdkafka negotiates
  API versions and keeps them to itself). When the local stack runs the broker (its pid file,
  under ``stack.home``, names a live process with this stack's marker: ``imagetag.stack``),
  its version is the one of the jars it runs from; otherwise it is unknown, and the broker
  count and cluster id (from a metadata request, which any authenticated user may make) say
  which cluster answered.
- **Spark**: ``local[...]`` runs inside each job (nothing to probe: the version is pyspark's);
  a ``spark://`` master is probed through its web UI's ``/json/`` (port + 1000 for the local
  stack's master, as ``imagetag.stack`` starts it, else Spark's default 8080), and its version is
  pyspark's only for the local stack's master (which runs from pyspark's jars); any other master
  (YARN, Kubernetes) is not probed.
- **The stream is alive** when its ``/metrics`` endpoint (``metrics.host:metrics.stream_port``)
  answers with the stream's metrics. Its **rate** is the number of images its counters
  (``imagetag_stream_records_total``, every outcome) advanced between two scrapes
  ``rate_window_s`` apart, divided by the time between them: the current rate, as Prometheus'
  ``rate()`` computes it, without waiting for a second Prometheus scrape or needing the
  process's start time (the stream's registry has no process collector). The counters move
  when a micro-batch ends, so a window shorter than a batch shows 0 or a burst: status says
  how many batches ended in the window ("no batch ended in it" explains a 0 while a long batch
  runs), and shows beside it the average since the stream started (the counter's ``_created``
  sample is when the stream's metrics were created); the Grafana dashboard's
  ``rate(...[5m])`` is the smooth figure. Waiting for a batch to end would make status as
  slow as a batch (a minute under load), so the window is short (``--window``, 2 s).
- **Lag** comes from two places: the consumer group the stream commits each finished batch's
  end offsets to (``kafka.stream_group``: it is there when the stream is down, and it is what
  Kafka's own lag tools show), and the stream's own gauge (``imagetag_stream_input_lag_records``,
  what Spark saw behind the latest offsets at its last batch).
- **Counting the review and dead-letter topics** means reading them: they are written in
  transactions, whose commit markers take offsets no record has, so the offsets only bound the
  count from above. Each is read ``read_committed`` from the beginning to the end it had when
  the read started, counting without keeping anything (a dead letter holds a whole image: only
  its stage and reason are kept), and the read stops after ``scan_seconds`` or
  ``scan_records``: the count is then "at least" so many, with the offsets' upper bound beside
  it. The dead-letter topic is normally small (hundreds of letters: a read of a second); the
  review topic of a corpus of tens of millions can hold millions of records, where the bound
  keeps status a few seconds long and honest about it.
- **The exit code** (:meth:`Status.exit_code`) is 0 when Kafka, Solr and the stream are all up,
  1 otherwise: a script (or a health check) can wait on ``imagetag status``; Spark and the
  model do not count (local mode has nothing to be down, and the stream says whether it tags).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import requests

from imagetag.errors import ConfigError, ImagetagError, ServiceError
from imagetag.kafka_admin import failure_line, group_lag
from imagetag.metrics import parse
from imagetag.settings import Settings
from imagetag.solr import refusal
from imagetag.spark import pyspark_version

log = logging.getLogger(__name__)

T = TypeVar("T")

# The samples of the stream's /metrics page that status reads (imagetag.metrics names them).
RECORDS = "imagetag_stream_records_total"
BATCHES = "imagetag_stream_batches_total"
STARTED = "imagetag_stream_batches_created"
LAST_BATCH = "imagetag_stream_last_batch_timestamp_seconds"
LAG = "imagetag_stream_input_lag_records"
MODEL = "imagetag_stream_model_info"

# librdkafka error names that mean "no broker answered", as opposed to a refusal.
_UNREACHABLE = frozenset({"_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "_RESOLVE"})
# A Spark standalone master's web UI when it is not the local stack's (Spark's default).
SPARK_UI_DEFAULT_PORT = 8080


@dataclass(frozen=True)
class StatusOptions:
    """How long status may look. ``timeout_s``: each request to a service; ``rate_window_s``:
    between the two scrapes of the stream's ``/metrics``; ``scan_seconds`` / ``scan_records``:
    the bound of each topic read (review, dead letters). Raises ConfigError for a value <= 0."""

    timeout_s: float = 3.0
    rate_window_s: float = 2.0
    scan_seconds: float = 5.0
    scan_records: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("timeout_s", "rate_window_s", "scan_seconds", "scan_records"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class ServiceState:
    """One service: ``up`` (None: not probed), where it is, its version when known, and a
    ``detail``: what answered when up, why not when down."""

    name: str
    up: bool | None
    address: str
    version: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "address": self.address,
            "version": self.version,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class GroupLag:
    """The stream's consumer group on the input topic: ``offsets`` as
    :func:`imagetag.kafka_admin.group_lag` returns them ({partition: (committed or None,
    end)}), or an ``error`` line."""

    group: str
    offsets: dict[int, tuple[int | None, int]] = field(default_factory=dict)
    error: str | None = None

    def behind(self) -> dict[int, int | None]:
        """Records behind the end, per partition (None: the group committed nothing there)."""
        return {
            p: (max(end - committed, 0) if committed is not None else None)
            for p, (committed, end) in sorted(self.offsets.items())
        }

    def total(self) -> int | None:
        """The sum over the partitions with a commit; None when there is none."""
        known = [n for n in self.behind().values() if n is not None]
        return sum(known) if known else None

    def as_dict(self) -> dict[str, Any]:
        behind = self.behind()
        return {
            "group": self.group,
            "partitions": {
                str(p): {"committed": committed, "end": end, "lag": behind[p]}
                for p, (committed, end) in sorted(self.offsets.items())
            },
            "total": self.total(),
            "error": self.error,
        }


@dataclass(frozen=True)
class MetricsSample:
    """What one scrape of the stream's ``/metrics`` says (:func:`read_stream_metrics`)."""

    scraped_at: float
    records: dict[str, int]
    batches: int
    started_at: float | None
    last_batch_at: float | None
    lag: dict[int, int]
    model_version: str | None

    @property
    def images(self) -> int:
        """Images the stream has finished, every outcome, since it started."""
        return sum(self.records.values())


@dataclass(frozen=True)
class StreamState:
    """The streaming job, as its ``/metrics`` and its consumer group show it.

    ``alive``: the endpoint answered with the stream's metrics (else ``reason`` says why and
    the figures are None). ``rate_per_s``: images per second over the ``rate_window_s`` between
    two scrapes, in which ``rate_window_batches`` batches ended (0: the rate is 0 because no
    batch ended, not because the stream is idle); ``average_per_s`` since ``started_at``; ``lag``: the stream's gauge per
    partition; ``group``: the consumer group's lag (None: not read, Kafka is down).
    """

    endpoint: str
    alive: bool
    reason: str = ""
    last_batch_age_s: float | None = None
    rate_per_s: float | None = None
    rate_window_s: float | None = None
    rate_window_batches: int | None = None
    average_per_s: float | None = None
    started_at: float | None = None
    batches: int | None = None
    records: dict[str, int] = field(default_factory=dict)
    model_version: str | None = None
    lag: dict[int, int] = field(default_factory=dict)
    group: GroupLag | None = None

    @property
    def uptime_s(self) -> float | None:
        return None if self.started_at is None else max(time.time() - self.started_at, 0.0)

    def as_service(self) -> ServiceState:
        detail = self.reason if not self.alive else _stream_detail(self)
        return ServiceState("stream", self.alive, self.endpoint, None, detail)

    def as_dict(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "endpoint": self.endpoint,
            "reason": self.reason,
            "last_batch_age_s": _round(self.last_batch_age_s),
            "rate_per_s": _round(self.rate_per_s),
            "rate_window_s": _round(self.rate_window_s),
            "rate_window_batches": self.rate_window_batches,
            "average_per_s": _round(self.average_per_s),
            "uptime_s": _round(self.uptime_s),
            "batches": self.batches,
            "records": dict(self.records),
            "model_version": self.model_version,
            "lag": {
                "stream": {
                    "partitions": {str(p): n for p, n in sorted(self.lag.items())},
                    "total": sum(self.lag.values()) if self.lag else None,
                },
                "group": None if self.group is None else self.group.as_dict(),
            },
        }


@dataclass(frozen=True)
class TopicCount:
    """Committed records of a topic, read from its beginning (:func:`count_topic`).

    ``records`` were counted; ``complete``: the read reached the end the topic had when it
    started (else ``records`` is a lower bound: the read stopped at its bound, or an open
    transaction held it back); ``offsets``: the sum of the partitions' offset spans, an upper
    bound (it counts transaction markers and aborted records too); ``by_reason``: dead letters
    by (stage, reason), for the dead-letter topic. ``error``: why it was not read.
    """

    topic: str
    records: int = 0
    complete: bool = False
    offsets: int | None = None
    by_reason: dict[tuple[str, str], int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self, reasons: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "topic": self.topic,
            "records": None if self.error else self.records,
            "complete": self.complete,
            "offsets": self.offsets,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }
        if reasons:
            out["by_reason"] = [
                {"stage": stage, "reason": reason, "count": n}
                for (stage, reason), n in by_count(self.by_reason)
            ]
        return out


@dataclass(frozen=True)
class SolrDocuments:
    """The documents behind the alias: ``total`` and ``by_model_version`` (documents without a
    ``model_version`` are under ``""``); ``collections`` the alias points at (empty when our
    user may not list aliases); ``error`` when they could not be counted."""

    alias: str
    total: int | None = None
    by_model_version: dict[str, int] = field(default_factory=dict)
    collections: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "collections": list(self.collections),
            "total": self.total,
            "by_model_version": dict(sorted(self.by_model_version.items())),
            "error": self.error,
        }


@dataclass(frozen=True)
class ModelState:
    """The store's CURRENT model and its manifest (None when there is none, or ``error``)."""

    store: str
    current: str | None = None
    manifest: dict[str, Any] | None = None
    error: str | None = None

    def metrics(self) -> dict[str, float | int]:
        """The manifest's scalar metrics (accuracy, coverage, macro_f1, ...): the confusion
        matrix, per-class figures and timings stay in ``imagetag model show``."""
        found = (self.manifest or {}).get("metrics", {})
        return {
            k: v
            for k, v in sorted(found.items())
            if isinstance(v, int | float) and not isinstance(v, bool)
        }

    def as_dict(self) -> dict[str, Any]:
        manifest = self.manifest or {}
        return {
            "store": self.store,
            "current": self.current,
            "created": manifest.get("created"),
            "featurizer": manifest.get("featurizer", {}).get("name"),
            "k": manifest.get("k"),
            "trees": manifest.get("trees"),
            "depth": manifest.get("depth"),
            "data": manifest.get("data", {}).get("source"),
            "metrics": self.metrics(),
            "error": self.error,
        }


@dataclass(frozen=True)
class Status:
    """Everything ``imagetag status`` shows, at ``taken_at`` (epoch seconds)."""

    taken_at: float
    kafka: ServiceState
    solr: ServiceState
    spark: ServiceState
    stream: StreamState
    documents: SolrDocuments
    review: TopicCount
    dead_letters: TopicCount
    model: ModelState

    @property
    def services(self) -> list[ServiceState]:
        return [self.kafka, self.solr, self.spark, self.stream.as_service()]

    @property
    def ok(self) -> bool:
        """Kafka, Solr and the stream are all up."""
        return bool(self.kafka.up and self.solr.up and self.stream.alive)

    @property
    def exit_code(self) -> int:
        """0 when :attr:`ok`, else 1."""
        return 0 if self.ok else 1

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document (keys stable; times in seconds, rates in images/s)::

            ok, exit_code, taken_at (ISO 8601, UTC)
            services: {kafka|solr|spark|stream: {up (null: not probed), address, version,
                       detail}}
            stream: {alive, endpoint, reason, last_batch_age_s, rate_per_s, rate_window_s,
                     rate_window_batches, average_per_s, uptime_s, batches, records: {outcome: n}, model_version,
                     lag: {stream: {partitions: {p: n}, total},
                           group: {group, partitions: {p: {committed, end, lag}}, total,
                                   error} | null}}
            solr: {alias, collections, total, by_model_version: {version: n}, error}
            review: {topic, records, complete, offsets, seconds, error}
            dead_letters: {... as review, by_reason: [{stage, reason, count}]}
            model: {store, current, created, featurizer, k, trees, depth, data,
                    metrics: {name: value}, error}

        ``records`` is null when the topic was not read; with ``complete`` false it is a lower
        bound, ``offsets`` an upper one. Figures that are not known are null.
        """
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "taken_at": dt.datetime.fromtimestamp(self.taken_at, dt.UTC).isoformat(
                timespec="seconds"
            ),
            "services": {s.name: s.as_dict() for s in self.services},
            "stream": self.stream.as_dict(),
            "solr": self.documents.as_dict(),
            "review": self.review.as_dict(),
            "dead_letters": self.dead_letters.as_dict(reasons=True),
            "model": self.model.as_dict(),
        }


# -- gathering -------------------------------------------------------------------------------


def gather(settings: Settings, options: StatusOptions | None = None) -> Status:
    """Look at everything (see the module docstring) and return what was seen. Never raises
    for a service that is down or refuses: that is part of the status."""
    options = options or StatusOptions()
    k = settings.kafka
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="imagetag-status") as pool:

        def run(what: str, fn: Callable[[], T], fallback: Callable[[str], T]) -> Future[T]:
            return pool.submit(_guarded, what, fn, fallback)

        kafka = run(
            "kafka",
            lambda: probe_kafka(settings, options.timeout_s),
            lambda why: ServiceState("kafka", False, k.bootstrap_servers, None, why),
        )
        solr = run(
            "solr",
            lambda: probe_solr(settings, options.timeout_s),
            lambda why: (
                ServiceState("solr", False, settings.solr.url, None, why),
                SolrDocuments(settings.solr.collection, error=why),
            ),
        )
        spark = run(
            "spark",
            lambda: probe_spark(settings, options.timeout_s),
            lambda why: ServiceState("spark", False, settings.spark.master, None, why),
        )
        stream = run(
            "stream",
            lambda: probe_stream(settings, options),
            lambda why: StreamState(stream_endpoint(settings) or "-", False, why),
        )
        model = run(
            "model",
            lambda: read_model(settings),
            lambda why: ModelState(settings.model_store, error=why),
        )
        kafka_state = kafka.result()
        if kafka_state.up:
            group = run(
                "stream group",
                lambda: read_group_lag(settings, options.timeout_s),
                lambda why: GroupLag(k.stream_group, error=why),
            )
            review = run(
                "review topic",
                lambda: count_topic(settings, k.topic_review, options),
                lambda why: TopicCount(k.topic_review, error=why),
            )
            dead = run(
                "dead-letter topic",
                lambda: count_topic(settings, k.topic_dlq, options, dead_letters=True),
                lambda why: TopicCount(k.topic_dlq, error=why),
            )
            group_state: GroupLag = group.result()
            review_count, dead_count = review.result(), dead.result()
        else:
            skipped = "not read: Kafka is down"
            group_state = GroupLag(k.stream_group, error=skipped)
            review_count = TopicCount(k.topic_review, error=skipped)
            dead_count = TopicCount(k.topic_dlq, error=skipped)
        solr_state, documents = solr.result()
        stream_now = stream.result()
    return Status(
        taken_at=time.time(),
        kafka=kafka_state,
        solr=solr_state,
        spark=spark.result(),
        stream=replace(stream_now, group=group_state),
        documents=documents,
        review=review_count,
        dead_letters=dead_count,
        model=model.result(),
    )


def _guarded(what: str, fn: Callable[[], T], fallback: Callable[[str], T]) -> T:
    """``fn()``, or ``fallback(one line)`` when it raises: each probe catches the failures it
    expects; this is the net under them, so that one section's surprise (a bug, a service
    answering nonsense) is a line in its own section and the others are still shown."""
    try:
        return fn()
    except ImagetagError as exc:
        return fallback(str(exc))
    except Exception as exc:  # isolation: see the docstring
        log.debug("status: %s failed", what, exc_info=True)
        return fallback(f"{type(exc).__name__}: {exc}")


# -- Kafka -----------------------------------------------------------------------------------


def _kafka_config(settings: Settings) -> dict[str, Any]:
    """The clients' configuration: librdkafka logs only critical lines unless ``-v`` (a broker
    that is down is one line of the status, not a screen of connection retries on stderr).
    No Python ``logger``: an admin client serves its logs only when polled, and status's
    clients live in worker threads that never poll them."""
    return settings.kafka.client_config() | {
        "log_level": 7 if log.isEnabledFor(logging.DEBUG) else 2
    }


def kafka_reason(settings: Settings, operation: str, exc: Exception) -> str:
    """One line for a failed Kafka request: "not reachable: ..." when no broker answered,
    else :func:`imagetag.kafka_admin.failure_line` (a refused login or permission names the
    user)."""
    error: Any = exc.args[0] if exc.args else None
    if hasattr(error, "name") and str(error.name()) in _UNREACHABLE:
        return f"not reachable ({error.str()})"
    return failure_line(settings, operation, exc)


def probe_kafka(settings: Settings, timeout_s: float) -> ServiceState:
    """Kafka: a metadata request (brokers, cluster id, our topics); the version only when the
    local stack runs the broker (see the module docstring)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    address = settings.kafka.bootstrap_servers
    try:
        metadata = AdminClient(_kafka_config(settings)).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        reason = kafka_reason(settings, "read the cluster metadata", exc)
        return ServiceState("kafka", False, address, None, reason)
    brokers = len(metadata.brokers)
    parts = [f"{brokers} broker{'s' if brokers != 1 else ''}", f"cluster {metadata.cluster_id}"]
    version = local_kafka_version(settings)
    if version is None:
        parts.append("version unknown (brokers do not tell clients)")
    k = settings.kafka
    missing = [t for t in (k.topic_images, k.topic_review, k.topic_dlq) if t not in metadata.topics]
    if missing:
        parts.append(f"missing topics: {', '.join(missing)} (run `imagetag init`)")
    return ServiceState("kafka", True, address, version, ", ".join(parts))


def local_kafka_version(settings: Settings) -> str | None:
    """The version of the Kafka jars the local stack runs the broker from, when the local
    stack (``stack.home``) runs the broker of these settings; None otherwise."""
    from imagetag.stack import KafkaService

    service = KafkaService(settings, settings.stack.home.resolve())
    return service.version() if service.pid() is not None else None


def read_group_lag(settings: Settings, timeout_s: float) -> GroupLag:
    """The stream's consumer group's offsets on the input topic (see :class:`GroupLag`)."""
    from confluent_kafka import KafkaException

    group = settings.kafka.stream_group
    try:
        offsets = group_lag(settings, group, settings.kafka.topic_images, timeout_s=timeout_s)
    except KafkaException as exc:
        return GroupLag(group, error=kafka_reason(settings, f"describe group {group}", exc))
    except ServiceError as exc:
        return GroupLag(group, error=exc.reason)
    return GroupLag(group, offsets)


def count_topic(
    settings: Settings, topic: str, options: StatusOptions, *, dead_letters: bool = False
) -> TopicCount:
    """Count the committed records of ``topic`` (and, with ``dead_letters``, the letters by
    (stage, reason)) from its beginning to the end it had when the read started, within
    ``options.scan_seconds`` and ``options.scan_records`` (see :class:`TopicCount`).

    The read is that of ``producers.replay``'s reader (``read_committed``, partitions assigned,
    no group joined and nothing committed, a partition done at its end-of-partition event or
    its starting high watermark, whichever comes first), with a bound instead of an error. A
    dead letter is decoded for its stage and reason, then dropped (a record that is not a
    DeadLetter counts as ``?/not_a_dead_letter``).
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
    from confluent_kafka import TopicPartition as Tp

    started = time.monotonic()
    deadline = started + options.scan_seconds
    reasons: Counter[tuple[str, str]] = Counter()
    decode = dead_letter_cause() if dead_letters else None
    consumer = Consumer(
        _kafka_config(settings)
        | {
            "group.id": f"imagetag-status-{time.time_ns()}",  # librdkafka wants one; never joined
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    counted = 0
    try:
        try:
            # All topics: asking for one by name makes a broker that auto-creates topics do so.
            found = consumer.list_topics(timeout=options.timeout_s).topics.get(topic)
            if found is None or found.error is not None:
                return TopicCount(topic, error=f"no topic {topic} (run `imagetag init`)")
            marks = {
                p: consumer.get_watermark_offsets(Tp(topic, p), timeout=options.timeout_s)
                for p in found.partitions
            }
        except KafkaException as exc:
            return TopicCount(topic, error=kafka_reason(settings, f"read {topic}", exc))
        ends = {p: high for p, (_, high) in marks.items()}
        offsets = sum(max(high - low, 0) for low, high in marks.values())
        pending = {p for p, (low, high) in marks.items() if high > low}
        if pending:
            consumer.assign([Tp(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        batch = 100 if dead_letters else 1000  # letters hold whole images: fetch fewer at once
        while pending and counted < options.scan_records:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for message in consumer.consume(batch, timeout=min(left, 0.5)):
                error = message.error()
                partition = int(message.partition() or 0)
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(partition)
                    elif error.fatal():
                        why = f"reading {topic}: {error.str()}"
                        return TopicCount(topic, counted, False, offsets, dict(reasons), error=why)
                    continue
                offset = int(message.offset() or 0)
                if partition not in pending or offset >= ends[partition]:
                    pending.discard(partition)
                    continue
                if counted >= options.scan_records:
                    break  # the bound: this record and the rest are not counted
                counted += 1
                if decode is not None:
                    reasons[decode(message.value())] += 1
                if offset + 1 >= ends[partition]:
                    pending.discard(partition)
        return TopicCount(topic, counted, not pending, offsets, dict(reasons), _since(started))
    finally:
        consumer.close()


def dead_letter_cause() -> Callable[[bytes | None], tuple[str, str]]:
    """A function: a dead-letter topic's record value -> its (stage, reason)."""
    from imagetag.avro import AvroDeserializer
    from imagetag.errors import RecordError

    deserialize = AvroDeserializer("DeadLetter")

    def cause(value: bytes | None) -> tuple[str, str]:
        try:
            letter = deserialize(value or b"")
        except RecordError:
            return ("?", "not_a_dead_letter")
        return (str(letter["stage"]), str(letter["reason"]))

    return cause


# -- Solr ------------------------------------------------------------------------------------


def probe_solr(settings: Settings, timeout_s: float) -> tuple[ServiceState, SolrDocuments]:
    """Solr: its version and mode (``/admin/info/system``), then the documents behind the
    alias by ``model_version`` (a facet query) and the collections the alias points at.

    A refused login (401) is Solr down for us; a user who may read documents but not the
    system information (403: the secured stack's searcher and indexer) sees Solr up, its
    version unknown."""
    from imagetag.solr_admin import SolrAdmin

    admin = SolrAdmin(settings)
    base, session = admin.base_url, admin.session
    alias = settings.solr.collection
    address = settings.solr.url
    try:
        response = session.get(
            f"{base}/admin/info/system", params={"wt": "json"}, timeout=timeout_s
        )
    except requests.RequestException as exc:
        why = request_reason(exc, timeout_s)
        return ServiceState("solr", False, address, None, why), SolrDocuments(alias, error=why)
    denied = refusal(settings, response.status_code, "read the system information")
    if response.status_code == 401 or (denied is None and response.status_code != 200):
        why = denied or f"HTTP {response.status_code} from /admin/info/system"
        return ServiceState("solr", False, address, None, why), SolrDocuments(alias, error=why)
    if denied is not None:
        state = ServiceState("solr", True, address, None, denied)
    else:
        info = _json(response)
        lucene = info.get("lucene")
        version = lucene.get("solr-spec-version") if isinstance(lucene, dict) else None
        mode = str(info.get("mode") or "standalone")
        state = ServiceState("solr", True, address, str(version) if version else None, mode)
    return state, count_documents(settings, session, timeout_s)


def count_documents(
    settings: Settings, session: requests.Session, timeout_s: float
) -> SolrDocuments:
    """The documents behind the alias by ``model_version`` (see :class:`SolrDocuments`)."""
    base = settings.solr.url.rstrip("/")
    alias = settings.solr.collection
    try:
        response = session.get(
            f"{base}/{alias}/select",
            params={
                "q": "*:*",
                "rows": "0",
                "facet": "true",
                "facet.field": "model_version",
                "facet.limit": "-1",
                "facet.mincount": "1",
                "json.nl": "map",
                "wt": "json",
            },
            timeout=timeout_s,
        )
    except requests.RequestException as exc:
        return SolrDocuments(alias, error=request_reason(exc, timeout_s))
    denied = refusal(settings, response.status_code, f"search {alias}")
    if denied is not None:
        return SolrDocuments(alias, error=denied)
    if response.status_code == 404:
        return SolrDocuments(alias, error=f"no collection or alias {alias} (run `imagetag init`)")
    body = _json(response)
    if response.status_code != 200:
        message = (body.get("error") or {}).get("msg") or f"HTTP {response.status_code}"
        return SolrDocuments(alias, error=f"search {alias}: {str(message).splitlines()[0]}")
    total = int(body.get("response", {}).get("numFound", 0))
    facets = body.get("facet_counts", {}).get("facet_fields", {}).get("model_version", {})
    by_version = {str(v): int(n) for v, n in dict(facets).items()}
    unversioned = total - sum(by_version.values())
    if unversioned > 0:
        by_version[""] = unversioned
    return SolrDocuments(alias, total, by_version, _alias_collections(settings, session, timeout_s))


def _alias_collections(
    settings: Settings, session: requests.Session, timeout_s: float
) -> list[str]:
    """The collections the alias points at; empty when they cannot be listed (a user without
    the admin role may search but not list aliases; that is not worth a line)."""
    alias = settings.solr.collection
    try:
        response = session.get(
            f"{settings.solr.url.rstrip('/')}/admin/collections",
            params={"action": "LISTALIASES", "wt": "json"},
            timeout=timeout_s,
        )
    except requests.RequestException:
        return []
    if response.status_code != 200:
        return []
    target = _json(response).get("aliases", {}).get(alias)
    return [name for name in str(target or "").split(",") if name]


def request_reason(exc: requests.RequestException, timeout_s: float) -> str:
    """One short line for a failed HTTP request (requests' own messages run to three lines of
    urllib3 internals)."""
    if isinstance(exc, requests.Timeout):
        return f"no answer in {timeout_s:g}s"
    if isinstance(exc, requests.ConnectionError):
        match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        return f"not reachable ({match.group(1).strip() if match else 'connection failed'})"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# -- Spark -----------------------------------------------------------------------------------


def probe_spark(settings: Settings, timeout_s: float) -> ServiceState:
    """Spark (see the module docstring): local mode, a standalone master's ``/json/``, or not
    probed."""
    from imagetag.spark import standalone_master

    master = settings.spark.master
    if master.startswith("local"):
        return ServiceState(
            "spark", True, master, pyspark_version(), "in-process: each job runs its own"
        )
    if not master.startswith("spark://"):
        return ServiceState("spark", None, master, None, "not probed (not a standalone master)")
    stack_master = standalone_master(settings)
    host = master.removeprefix("spark://").split(",")[0].partition(":")[0]
    ui_port = stack_master[1] + 1000 if stack_master else SPARK_UI_DEFAULT_PORT
    url = f"http://{host}:{ui_port}/json/"
    version = pyspark_version() if stack_master else None
    try:
        response = requests.get(url, timeout=timeout_s)
    except requests.RequestException as exc:
        why = f"web UI {url}: {request_reason(exc, timeout_s)}"
        return ServiceState("spark", False, master, version, why)
    if response.status_code != 200:
        why = f"web UI {url}: HTTP {response.status_code}"
        return ServiceState("spark", False, master, version, why)
    return spark_master_state(master, version, _json(response))


def spark_master_state(master: str, version: str | None, state: Mapping[str, Any]) -> ServiceState:
    """A standalone master's ``/json/`` status -> its ServiceState (up when ALIVE)."""
    status = str(state.get("status", "?"))
    workers = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
    apps = [str(a.get("name", a.get("id", "?"))) for a in state.get("activeapps", [])]
    detail = (
        f"{len(workers)} worker{'s' if len(workers) != 1 else ''}, "
        f"{state.get('coresused', 0)}/{state.get('cores', 0)} cores used, "
        + (f"running: {', '.join(apps)}" if apps else "no application running")
    )
    if status != "ALIVE":
        detail = f"master {status}; {detail}"
    return ServiceState("spark", status == "ALIVE", master, version, detail)


# -- the stream ------------------------------------------------------------------------------


def stream_endpoint(settings: Settings) -> str | None:
    """The URL of the stream's ``/metrics``, or None when its endpoint is off or on a port
    chosen at start (``metrics.stream_port`` null or 0). A wildcard listen address is
    scraped on loopback."""
    port = settings.metrics.stream_port
    if not port:
        return None
    host = settings.metrics.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def read_stream_metrics(text: str, scraped_at: float) -> MetricsSample | None:
    """A stream's ``/metrics`` page -> what status reads of it; None when the page does not
    hold the stream's metrics (something else answers on that port). Raises ValueError for a
    page that is not the Prometheus text format."""
    samples = parse(text)
    if BATCHES not in samples:
        return None

    def first(name: str) -> float | None:
        values = samples.get(name)
        return values[0][1] if values else None

    records = {labels.get("outcome", "?"): int(value) for labels, value in samples.get(RECORDS, [])}
    lag = {
        int(labels["partition"]): int(value)
        for labels, value in samples.get(LAG, [])
        if labels.get("partition", "").isdigit()
    }
    versions = [labels["version"] for labels, _ in samples.get(MODEL, []) if "version" in labels]
    last = first(LAST_BATCH)
    return MetricsSample(
        scraped_at=scraped_at,
        records=records,
        batches=int(first(BATCHES) or 0),
        started_at=first(STARTED),
        last_batch_at=last if last else None,  # 0: no batch yet
        lag=lag,
        model_version=versions[0] if versions else None,
    )


def stream_state(
    endpoint: str, first: MetricsSample, last: MetricsSample | None, reason: str = ""
) -> StreamState:
    """The stream from one or two scrapes (:func:`read_stream_metrics`): the rate needs both;
    the rest is read from the latest."""
    latest = last or first
    rate = window = None
    ended = None
    if last is not None and last.scraped_at > first.scraped_at:
        window = last.scraped_at - first.scraped_at
        # A counter that went down is a restarted stream: its new value is all it did since.
        restarted = last.batches < first.batches or last.images < first.images
        done = last.images if restarted else last.images - first.images
        ended = last.batches if restarted else last.batches - first.batches
        rate = done / window
    average = None
    if latest.started_at is not None and latest.scraped_at > latest.started_at:
        average = latest.images / (latest.scraped_at - latest.started_at)
    age = None
    if latest.last_batch_at is not None:
        age = max(latest.scraped_at - latest.last_batch_at, 0.0)
    return StreamState(
        endpoint=endpoint,
        alive=True,
        reason=reason,
        last_batch_age_s=age,
        rate_per_s=rate,
        rate_window_s=window,
        rate_window_batches=ended,
        average_per_s=average,
        started_at=latest.started_at,
        batches=latest.batches,
        records=dict(latest.records),
        model_version=latest.model_version,
        lag=dict(latest.lag),
    )


def probe_stream(settings: Settings, options: StatusOptions) -> StreamState:
    """Scrape the stream's ``/metrics`` twice, ``options.rate_window_s`` apart (once when the
    first does not answer)."""
    endpoint = stream_endpoint(settings)
    if endpoint is None:
        port = settings.metrics.stream_port
        why = (
            "no metrics endpoint (metrics.stream_port is null)"
            if port is None
            else "metrics.stream_port is 0 (a free port, chosen at start): set a fixed port"
        )
        return StreamState("-", False, why)

    def scrape() -> MetricsSample | str:
        try:
            response = requests.get(endpoint, timeout=options.timeout_s)
        except requests.RequestException as exc:
            return request_reason(exc, options.timeout_s)
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        try:
            sample = read_stream_metrics(response.text, time.time())
        except ValueError as exc:
            return f"not a Prometheus /metrics page ({exc})"
        return sample if sample is not None else "answers, but not with the stream's metrics"

    first = scrape()
    if isinstance(first, str):
        return StreamState(endpoint, False, first)
    time.sleep(options.rate_window_s)
    second = scrape()
    if isinstance(second, str):
        return stream_state(endpoint, first, None, f"second scrape failed: {second}")
    return stream_state(endpoint, first, second)


# -- the model -------------------------------------------------------------------------------


def read_model(settings: Settings) -> ModelState:
    """The CURRENT model of a local store and its manifest. A store on a Hadoop filesystem
    needs a Spark session to be read (``imagetag model show`` starts one): status does not."""
    from imagetag.bundle import BundleError, ModelStore, is_local

    uri = settings.model_store
    if not is_local(uri):
        return ModelState(uri, error="not read: a Hadoop store needs Spark (`imagetag model show`)")
    store = ModelStore(uri)
    try:
        current = store.current_version()
        if current is None:
            return ModelState(uri, error="no CURRENT model (run `imagetag train`)")
        return ModelState(uri, current, store.manifest(current))
    except (BundleError, OSError, ValueError) as exc:
        return ModelState(uri, error=str(exc))


# -- helpers ---------------------------------------------------------------------------------


def _since(started: float) -> float:
    return time.monotonic() - started


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def by_count(counts: Mapping[tuple[str, str], int]) -> list[tuple[tuple[str, str], int]]:
    """Most frequent first, then by name (a stable order for the JSON and the screen)."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def format_duration(seconds: float) -> str:
    """``42s``, ``5m03s``, ``3h05m``, ``2d03h``: an age or an uptime at a glance."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _stream_detail(stream: StreamState) -> str:
    parts = []
    if stream.last_batch_age_s is not None:
        parts.append(f"last batch {format_duration(stream.last_batch_age_s)} ago")
    else:
        parts.append("no batch yet")
    if stream.rate_per_s is not None:
        parts.append(f"{stream.rate_per_s:.1f} images/s")
    if stream.reason:
        parts.append(stream.reason)
    return ", ".join(parts)
