"""Replay dead letters: send the original bytes of chosen ``DeadLetter`` records back to the
input topic, once the fault that killed them is fixed.

``replay_dead_letters(settings, ReplayOptions(...))`` reads the dead-letter topic
(``kafka.topic_dlq``) from the beginning to the end it had when the run started, with a
``read_committed`` consumer on explicitly assigned partitions (no group, no commits), keeps the
letters that pass the filters (:meth:`ReplayOptions.matches`) and sends each one's original key
and value, unchanged, to ``kafka.topic_images`` through an idempotent producer (``acks=all``),
with the header :data:`REPLAY_HEADER` = ``"<dlq topic>:<partition>:<offset>"`` of the letter.
The stream puts that header in its de-duplication key: a replayed image is not dropped as a
duplicate of its first, failed attempt, while the same letter replayed twice is.

Letters that cannot be replayed are counted and skipped (:func:`skip_reason`): stage ``index``
(its value is the document Solr refused, not the original event; the image bytes are in the
archive) and letters without a value. Records of the dead-letter topic that are not DeadLetters
are counted too. The end offsets are fixed at the start, so letters the replayed records cause
(a record that still fails goes to the dead-letter topic again) are not read back in this run.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from imagetag.avro import AvroDeserializer
from imagetag.durations import DurationError, parse_duration
from imagetag.errors import ConfigError, ImagetagError, RecordError, ServiceError
from imagetag.kafka_admin import message_limit
from imagetag.records import REPLAY_HEADER
from imagetag.settings import Settings
from producers.producer import CONFLUENT_DEFAULTS, CONFLUENT_REQUIRED

log = logging.getLogger(__name__)


# Why a matched letter is not sent (the tokens the summary counts), with the sentence to show.
SKIP_INDEX = "index_document"
SKIP_EMPTY = "empty_value"
SKIP_EXPLANATIONS: dict[str, str] = {
    SKIP_INDEX: "stage index: the value is the document Solr refused, not the original event; "
    "the image bytes are in the archive (read by `imagetag backfill archive`, `imagetag reindex`)",
    SKIP_EMPTY: "the letter carries no original value to send",
}


def _client_logging() -> dict[str, Any]:
    """librdkafka logs through this module's logger, and below ERROR only with -v: a broker that
    is down is reported once, as a ServiceError or a delivery failure, not once per retry."""
    return {"logger": log, "log_level": 7 if log.isEnabledFor(logging.DEBUG) else 2}


class ReplayOptionsError(ImagetagError, ValueError):
    """The replay options (or a ``--since`` value) are invalid."""


def parse_since(text: str, now: dt.datetime | None = None) -> int:
    """Epoch milliseconds from ``--since``: an ISO date (``2026-01-31``, midnight UTC), an ISO
    date-time (``2026-01-31T12:00``, UTC unless it has an offset) or a duration back from
    ``now`` (``90s``, ``30m``, ``2h``, ``1d``, ``1w``, combined as ``1h30m``).

    Raises ReplayOptionsError for anything else, and for a time after ``now``.
    """
    now = now or dt.datetime.now(dt.UTC)
    value = text.strip()
    if not value:
        raise ReplayOptionsError("--since is empty")
    try:
        return int((now - dt.timedelta(seconds=parse_duration(value))).timestamp() * 1000)
    except DurationError:
        pass  # not a duration: an ISO date / date-time then
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ReplayOptionsError(
            f"--since {text!r} is neither an ISO date/time (2026-01-31, 2026-01-31T12:00Z) "
            "nor a duration (30m, 2h, 1d)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    if moment > now:
        raise ReplayOptionsError(f"--since {text!r} is in the future")
    return int(moment.timestamp() * 1000)


def _names(values: Any, what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ReplayOptionsError(f"{what} must be a sequence of names, not one string")
    names: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            raise ReplayOptionsError(f"{what}: {value!r} is not a name")
        if value not in names:
            names.append(value)
    return tuple(names)


@dataclass(frozen=True)
class ReplayOptions:
    """Which dead letters to replay.

    ``reasons`` / ``stages``: keep letters with one of these (empty: any). ``since_ms``: keep
    letters whose ``failed_at`` is at or after this epoch-millisecond time (None: any).
    ``dry_run``: count what would be sent, send nothing. Raises ReplayOptionsError when a name
    is empty or padded, or ``since_ms`` is negative.
    """

    reasons: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    since_ms: int | None = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "reasons", _names(self.reasons, "reasons"))
        object.__setattr__(self, "stages", _names(self.stages, "stages"))
        if self.since_ms is not None and (
            isinstance(self.since_ms, bool) or not isinstance(self.since_ms, int)
        ):
            raise ReplayOptionsError(f"since_ms must be epoch milliseconds, not {self.since_ms!r}")
        if self.since_ms is not None and self.since_ms < 0:
            raise ReplayOptionsError(f"since_ms must be >= 0, not {self.since_ms}")
        if not isinstance(self.dry_run, bool):
            raise ReplayOptionsError(f"dry_run must be a bool, not {self.dry_run!r}")

    def matches(self, letter: Mapping[str, Any]) -> bool:
        """Whether a decoded DeadLetter passes the reason, stage and since filters."""
        if self.reasons and letter["reason"] not in self.reasons:
            return False
        if self.stages and letter["stage"] not in self.stages:
            return False
        return self.since_ms is None or failed_at_ms(letter) >= self.since_ms


def failed_at_ms(letter: Mapping[str, Any]) -> int:
    """A DeadLetter's ``failed_at`` as epoch ms (the deserializer gives an aware datetime)."""
    value = letter["failed_at"]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    return int(value)


def skip_reason(letter: Mapping[str, Any]) -> str | None:
    """Why a matched DeadLetter cannot be replayed (a key of SKIP_EXPLANATIONS), or None."""
    if letter["stage"] == "index":
        return SKIP_INDEX
    if not letter["value"]:
        return SKIP_EMPTY
    return None


def replay_header(dlq_topic: str, partition: int, offset: int) -> tuple[str, bytes]:
    """The header a replayed record carries: the coordinates of the letter it came from."""
    return REPLAY_HEADER, f"{dlq_topic}:{partition}:{offset}".encode()


@dataclass
class GroupCounts:
    """Counts for one (stage, reason). ``replayable`` = matched minus skipped: what was queued
    (or, in a dry run, what would be sent); ``sent`` + ``failed`` = ``replayable`` after a run."""

    matched: int = 0
    replayable: int = 0
    sent: int = 0
    failed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "replayable": self.replayable,
            "sent": self.sent,
            "failed": self.failed,
            "skipped": sum(self.skipped.values()),
            "skipped_by_why": dict(self.skipped),
        }


@dataclass
class ReplaySummary:
    """What a replay did. ``read`` counts every committed record of the dead-letter topic up to
    its end at the start; ``not_dead_letters`` those that were not DeadLetters; ``filtered_out``
    the letters the filters left out; ``groups`` the rest by (stage, reason)."""

    dlq_topic: str
    topic: str
    dry_run: bool
    read: int = 0
    not_dead_letters: int = 0
    filtered_out: int = 0
    groups: dict[tuple[str, str], GroupCounts] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def group(self, stage: str, reason: str) -> GroupCounts:
        return self.groups.setdefault((stage, reason), GroupCounts())

    def total(self, name: str) -> int:
        return sum(getattr(g, name) for g in self.groups.values())

    @property
    def skipped(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for counts in self.groups.values():
            out.update(counts.skipped)
        return out

    def as_dict(self) -> dict[str, Any]:
        skipped = self.skipped
        return {
            "dlq_topic": self.dlq_topic,
            "topic": self.topic,
            "dry_run": self.dry_run,
            "read": self.read,
            "not_dead_letters": self.not_dead_letters,
            "filtered_out": self.filtered_out,
            "matched": self.total("matched"),
            "replayable": self.total("replayable"),
            "sent": self.total("sent"),
            "failed": self.total("failed"),
            "failed_by_reason": dict(self.failures),
            "skipped": sum(skipped.values()),
            "skipped_by_why": dict(skipped),
            "groups": [
                {"stage": stage, "reason": reason, **counts.as_dict()}
                for (stage, reason), counts in sorted(self.groups.items())
            ],
            "seconds": round(self.seconds, 3),
        }


class DlqRecord(NamedTuple):
    """One committed record of the dead-letter topic with its coordinates."""

    partition: int
    offset: int
    value: bytes


def read_dead_letter_records(
    settings: Settings, topic: str, idle_timeout_s: float = 60.0
) -> Iterator[DlqRecord]:
    """Every committed record of ``topic`` from the beginning up to the end offsets it has when
    the read starts, as they arrive (the letters carry whole images: nothing is collected).

    Like ``imagetag.kafka_admin.read_topic`` (``read_committed``, assigned partitions, stops at
    end-of-partition, which counts transaction markers right), and also stops a partition at
    its starting high watermark, so records appended meanwhile are left for the next run.
    Raises ServiceError when Kafka cannot be reached, the topic does not exist, or no progress
    is made for ``idle_timeout_s`` (an open transaction holds read_committed readers back).
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
    from confluent_kafka import TopicPartition as Tp

    address = settings.kafka.bootstrap_servers
    config = settings.kafka.client_config() | {
        "group.id": f"imagetag-replay-{time.time_ns()}",  # librdkafka wants one; never joined
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        **_client_logging(),
    }
    try:
        consumer = Consumer(config)
    except KafkaException as exc:
        raise ConfigError(f"invalid Kafka consumer configuration: {exc}") from exc
    try:
        try:
            found = consumer.list_topics(timeout=10).topics.get(topic)
            if found is None or found.error is not None:
                raise ServiceError("kafka", address, f"no topic {topic}")
            watermarks = {
                p: consumer.get_watermark_offsets(Tp(topic, p), timeout=10)
                for p in found.partitions
            }
        except KafkaException as exc:
            raise ServiceError("kafka", address, f"not reachable: {exc.args[0].str()}") from exc
        ends = {p: high for p, (_, high) in watermarks.items()}
        pending = {p for p, (low, high) in watermarks.items() if high > low}
        consumer.assign([Tp(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        deadline = time.monotonic() + idle_timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise ServiceError(
                    "kafka",
                    address,
                    f"{topic} not read to its end: no progress in {idle_timeout_s:.0f}s "
                    f"(partitions {sorted(pending)})",
                )
            for message in consumer.consume(500, timeout=1.0):
                error = message.error()
                partition = int(message.partition() or 0)
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(partition)
                        deadline = time.monotonic() + idle_timeout_s
                    elif error.fatal():
                        raise ServiceError("kafka", address, f"reading {topic}: {error.str()}")
                    else:  # e.g. a broker connection lost: librdkafka retries by itself
                        log.warning("reading %s: %s", topic, error.str())
                    continue
                if partition not in pending:
                    continue
                offset = int(message.offset() or 0)
                if offset >= ends[partition]:
                    pending.discard(partition)
                    continue
                deadline = time.monotonic() + idle_timeout_s
                yield DlqRecord(partition, offset, message.value() or b"")
                if offset + 1 >= ends[partition]:
                    pending.discard(partition)
    finally:
        consumer.close()


class _ReplayProducer:
    """An idempotent ``acks=all`` producer to the input topic that counts delivery reports into
    the GroupCounts each record belongs to."""

    def __init__(self, settings: Settings, topic: str, flush_timeout_s: float) -> None:
        from confluent_kafka import KafkaException, Producer

        self._kafka_exception = KafkaException
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        config: dict[str, Any] = dict(CONFLUENT_DEFAULTS)
        config["client.id"] = "imagetag-replay"
        config["message.max.bytes"] = message_limit(settings)
        config.update(_client_logging())
        config.update(settings.kafka.client_config())  # SASL/SSL and overrides pass through
        config.update(CONFLUENT_REQUIRED)  # idempotence and acks=all, never overridden
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka producer configuration: {exc}") from exc
        self._queued: list[GroupCounts] = []
        self.failures: Counter[str] = Counter()

    def send(
        self, key: bytes | None, value: bytes, header: tuple[str, bytes], counts: GroupCounts
    ) -> None:
        def report(err: Any, _msg: Any) -> None:
            if err is None:
                counts.sent += 1
            else:
                counts.failed += 1
                self.failures[err.name()] += 1

        counts.replayable += 1
        while True:
            try:
                self._producer.produce(
                    self.topic, value=value, key=key, headers=[header], on_delivery=report
                )
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.5)
            except self._kafka_exception as exc:  # refused locally, e.g. MSG_SIZE_TOO_LARGE
                counts.failed += 1
                self.failures[exc.args[0].name()] += 1
                break
        self._producer.poll(0)

    def flush(self, groups: Mapping[Any, GroupCounts]) -> None:
        """Wait for every delivery report; what is still undelivered after the timeout is
        purged and counted as failed (``TIMED_OUT``)."""
        self._producer.flush(self.flush_timeout_s)
        self._producer.purge()
        self._producer.poll(0)
        for counts in groups.values():
            lost = counts.replayable - counts.sent - counts.failed
            if lost > 0:
                counts.failed += lost
                self.failures["TIMED_OUT"] += lost


def _check_topic(settings: Settings, topic: str) -> None:
    """ServiceError unless ``topic`` exists (all topics are listed: asking for one by name could
    make a broker with auto.create.topics.enable create it)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    address = settings.kafka.bootstrap_servers
    admin = AdminClient({**settings.kafka.client_config(), **_client_logging()})
    try:
        topics = admin.list_topics(timeout=10).topics
    except KafkaException as exc:
        raise ServiceError("kafka", address, f"not reachable: {exc.args[0].str()}") from exc
    if topic not in topics:
        raise ServiceError("kafka", address, f"no topic {topic}")


def replay_dead_letters(
    settings: Settings,
    options: ReplayOptions,
    *,
    idle_timeout_s: float = 60.0,
    flush_timeout_s: float = 120.0,
) -> ReplaySummary:
    """Replay the dead letters ``options`` selects from ``kafka.topic_dlq`` to
    ``kafka.topic_images`` (see the module docstring). Returns the counts; delivery failures
    are counted in it, not raised. Raises ServiceError when Kafka cannot be reached or a topic
    is missing.
    """
    started = time.monotonic()
    dlq, images = settings.kafka.topic_dlq, settings.kafka.topic_images
    summary = ReplaySummary(dlq_topic=dlq, topic=images, dry_run=options.dry_run)
    _check_topic(settings, images)
    deserialize = AvroDeserializer("DeadLetter")
    producer = None if options.dry_run else _ReplayProducer(settings, images, flush_timeout_s)
    for record in read_dead_letter_records(settings, dlq, idle_timeout_s):
        summary.read += 1
        try:
            letter = deserialize(record.value)
        except RecordError as err:
            summary.not_dead_letters += 1
            log.debug("%s:%d:%d is not a DeadLetter: %s", dlq, record.partition, record.offset, err)
            continue
        if not options.matches(letter):
            summary.filtered_out += 1
            continue
        counts = summary.group(letter["stage"], letter["reason"])
        counts.matched += 1
        why = skip_reason(letter)
        if why is not None:
            counts.skipped[why] += 1
        elif producer is None:
            counts.replayable += 1
        else:
            header = replay_header(dlq, record.partition, record.offset)
            producer.send(letter["key"], letter["value"], header, counts)
    if producer is not None:
        producer.flush(summary.groups)
        summary.failures = producer.failures
    summary.seconds = time.monotonic() - started
    return summary
