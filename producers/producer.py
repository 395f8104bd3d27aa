"""``ImageProducer``: validated, idempotent, back-pressured image publishing to Kafka.

One image -> one Avro ``ImageEvent`` (single-object encoding) on the ``images`` topic, keyed by
the image id (sha256 hex of the bytes), with two headers: ``content-type`` (the sniffed MIME
type) and ``schema-fingerprint`` (16 hex digits, the writer schema's CRC-64-AVRO fingerprint).

Validation happens before anything is queued: empty input, input over ``limits.max_bytes``,
bytes that are not a supported image format (magic bytes, never the file extension) and
unreadable paths raise :class:`ImageRefused` and are never sent.

Two clients behind the same interface, chosen by ``settings.kafka.client_library``:

- ``"confluent"`` (default): confluent-kafka / librdkafka. Fast; what production uses.
- ``"kafka-python"``: a pure-Python client, for platforms without librdkafka wheels or where a
  C extension is not allowed. Same guarantees (idempotence, ``acks=all``, delivery callbacks);
  slower (see ``bench/bench_producer.py``) and without compression unless the ``lz4`` module
  is installed (its only built-in codec, gzip level 9, costs more CPU than it saves on
  already-compressed image bytes).

Delivery is asynchronous: :meth:`ImageProducer.send` queues and returns the id; delivery
reports are counted in :attr:`ImageProducer.stats` as they arrive (``poll``/``flush``).
When the local queue is full, ``send`` serves delivery reports and waits for room instead of
failing. ``close()`` (or leaving the ``with`` block) flushes; whatever still cannot be delivered
after ``flush_timeout_s`` is purged and counted as failed, so closing never hangs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from imagetag.avro import AvroSerializer
from imagetag.errors import ConfigError, RecordError, ServiceError
from imagetag.formats import CONTENT_TYPES, sniff_format
from imagetag.kafka_admin import failure_line, message_limit
from imagetag.settings import Settings

log = logging.getLogger(__name__)

STAGE = "produce"
# Refusal reasons (the same tokens the stream's decoder uses for the same faults).
EMPTY = "empty"
TOO_MANY_BYTES = "too_many_bytes"
NOT_AN_IMAGE = "not_an_image"
UNREADABLE = "unreadable"
BAD_METADATA = "bad_metadata"
REFUSAL_REASONS = frozenset({EMPTY, TOO_MANY_BYTES, NOT_AN_IMAGE, UNREADABLE, BAD_METADATA})

HEADER_CONTENT_TYPE = "content-type"
HEADER_SCHEMA_FINGERPRINT = "schema-fingerprint"

# Defaults a user may override through ``kafka.client`` pass-through options.
CONFLUENT_DEFAULTS: dict[str, str | int] = {
    "compression.type": "lz4",  # cheap; image bytes are already compressed, headers and Avro less so
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.kbytes": 256 * 1024,  # bound the producer's memory (librdkafka: 1 GB)
    "message.timeout.ms": 120_000,
    "client.id": "imagetag-producer",
}
# Never overridden: the delivery guarantees the design relies on.
CONFLUENT_REQUIRED: dict[str, str | int] = {"enable.idempotence": "true", "acks": "all"}


class ImageRefused(RecordError):
    """An input the producer will not send. ``reason`` is one of :data:`REFUSAL_REASONS`;
    ``source`` names the input; ``original`` holds the bytes when they were read."""

    def __init__(
        self, reason: str, detail: str, source: str, original: bytes | None = None
    ) -> None:
        self.source = source
        super().__init__(STAGE, reason, f"{source}: {detail}", original)


@dataclass
class ProducerStats:
    """What happened so far. ``sent`` counts messages the brokers acknowledged."""

    queued: int = 0
    sent: int = 0
    failed: int = 0
    bytes_sent: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def pending(self) -> int:
        return self.queued - self.sent - self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "sent": self.sent,
            "failed": self.failed,
            "bytes_sent": self.bytes_sent,
            "refused": dict(self.refused),
            "refused_total": sum(self.refused.values()),
            "failures": dict(self.failures),
        }


DeliveryCallback = Callable[[str, str | None], None]  # (image id, error or None)
ClientReport = Callable[[str | None], None]  # a client's delivery report: the error, or None


class OutgoingMessage(NamedTuple):
    """One record as ImageProducer hands it to a client: every client (and a test's fake)
    takes the same four fields, so they travel together instead of as four arguments."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class _Client(Protocol):
    """What ImageProducer needs from a Kafka client library."""

    def produce(self, message: OutgoingMessage, on_delivery: ClientReport) -> None:
        """Queue one message; BufferError when the local queue is full."""

    def poll(self, timeout_s: float) -> None:
        """Serve delivery reports."""

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding messages; returns how many are still undelivered."""

    def purge(self) -> None:
        """Drop everything still queued (its delivery reports fire as failures)."""

    def close(self) -> None: ...


class _ConfluentClient:
    def __init__(self, settings: Settings, overrides: Mapping[str, Any]) -> None:
        from confluent_kafka import KafkaError, KafkaException, Producer

        self._kafka_exception = KafkaException
        self._authentication_error = KafkaError._AUTHENTICATION
        self._settings = settings
        self._address = settings.kafka.bootstrap_servers
        config: dict[str, Any] = dict(CONFLUENT_DEFAULTS)
        config["message.max.bytes"] = message_limit(settings)
        config.update(settings.kafka.client_config())
        config.update(overrides)
        config.update(CONFLUENT_REQUIRED)
        # Errors (e.g. a broker that is down) are reported through delivery reports and
        # the connectivity check; librdkafka's own stderr logging would only duplicate them.
        config.setdefault("log_level", 3)
        # A refused SASL login reaches only the error callback; a metadata request then fails
        # with a transport error. Remember the login failure, so it is the one reported.
        self._login_error: Any = None
        config.setdefault("error_cb", self._on_client_error)
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka producer configuration: {exc}") from exc

    def _on_client_error(self, error: Any) -> None:
        if error.code() == self._authentication_error:
            self._login_error = error

    def list_topics(self, timeout_s: float) -> set[str]:
        try:
            # All topics: asking for one by name would make a broker with
            # auto.create.topics.enable create it, hiding a typo.
            metadata = self._producer.list_topics(timeout=timeout_s)
        except self._kafka_exception as exc:
            self._producer.poll(0)  # serve the queued error callbacks
            cause = self._kafka_exception(self._login_error) if self._login_error else exc
            line = failure_line(self._settings, "list topics", cause)
            raise ServiceError("kafka", self._address, line) from exc
        return {name for name, t in metadata.topics.items() if t.error is None}

    def produce(self, message: OutgoingMessage, on_delivery: ClientReport) -> None:
        def report(err: Any, _msg: Any) -> None:
            on_delivery(None if err is None else f"{err.name()}: {err.str()}")

        try:
            self._producer.produce(
                message.topic,
                value=message.value,
                key=message.key,
                headers=list(message.headers),
                on_delivery=report,
            )
        except self._kafka_exception as exc:  # refused locally, e.g. MSG_SIZE_TOO_LARGE
            error = exc.args[0]
            on_delivery(f"{error.name()}: {error.str()}")

    def poll(self, timeout_s: float) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        return int(self._producer.flush(timeout_s))

    def purge(self) -> None:
        self._producer.purge()
        self._producer.poll(0)

    def close(self) -> None:
        self._producer.flush(0)


# librdkafka property -> kafka-python keyword, for the pass-through options.
_KAFKA_PYTHON_KEYS = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "client.id": "client_id",
    "compression.type": "compression_type",
    "linger.ms": "linger_ms",
    "batch.size": "batch_size",
    "request.timeout.ms": "request_timeout_ms",
    "message.timeout.ms": "delivery_timeout_ms",
    "delivery.timeout.ms": "delivery_timeout_ms",
}


class _KafkaPythonClient:
    """kafka-python's KafkaProducer behind the same interface (callbacks run in its I/O thread)."""

    def __init__(self, settings: Settings, overrides: Mapping[str, Any]) -> None:
        import kafka
        from kafka import codec

        self._errors = kafka.errors
        config: dict[str, Any] = {
            "client_id": "imagetag-producer",
            "compression_type": "lz4" if codec.has_lz4() else None,
            "linger_ms": 20,
            "batch_size": 1_000_000,
            "max_request_size": message_limit(settings),
            "delivery_timeout_ms": 120_000,
            "max_block_ms": 120_000,  # a full buffer blocks send() this long: back-pressure
        }
        # kafka-python 2.2 has no bounded buffer (buffer_memory is deprecated and ignored), so
        # this client bounds what is in flight itself, with librdkafka's two knobs.
        self._max_pending = 100_000
        self._max_pending_bytes = 256 * 1024 * 1024
        for key, value in {**settings.kafka.client_config(), **overrides}.items():
            if key == "bootstrap.servers":
                continue
            if key == "queue.buffering.max.messages":
                self._max_pending = int(value)
                continue
            if key == "queue.buffering.max.kbytes":
                self._max_pending_bytes = int(value) * 1024
                continue
            name = _KAFKA_PYTHON_KEYS.get(key, key if "." not in key else None)
            if name is None:
                raise ConfigError(f"Kafka option {key!r} has no kafka-python equivalent")
            config[name] = int(value) if name.endswith(("_ms", "_size")) else value
        config.update(
            bootstrap_servers=settings.kafka.bootstrap_servers.split(","),
            acks="all",
            enable_idempotence=True,
        )
        self._address = settings.kafka.bootstrap_servers
        self._config = config
        try:
            self._producer = kafka.KafkaProducer(**config)
        except self._errors.NoBrokersAvailable as exc:
            raise ServiceError("kafka", self._address, f"not reachable: {exc}") from exc
        except (TypeError, AssertionError, self._errors.KafkaConfigurationError) as exc:
            raise ConfigError(f"invalid kafka-python producer configuration: {exc}") from exc
        self._futures: dict[Any, int] = {}  # in-flight future -> value size
        self._pending_bytes = 0
        self._lock = threading.Lock()

    def list_topics(self, timeout_s: float) -> set[str]:
        from kafka.admin import KafkaAdminClient

        # An admin listing, not partitions_for(topic): a metadata request naming the topic
        # would make a broker with auto.create.topics.enable create it, hiding a typo.
        admin_config = {
            k: v for k, v in self._config.items() if k in KafkaAdminClient.DEFAULT_CONFIG
        }
        admin_config["request_timeout_ms"] = int(timeout_s * 1000)
        try:
            admin = KafkaAdminClient(**admin_config)
            try:
                return set(admin.list_topics())
            finally:
                admin.close()
        except self._errors.KafkaError as exc:
            raise ServiceError("kafka", self._address, f"not reachable: {exc}") from exc

    def produce(self, message: OutgoingMessage, on_delivery: ClientReport) -> None:
        size = len(message.value)
        with self._lock:
            full = self._futures and (
                len(self._futures) >= self._max_pending
                or self._pending_bytes + size > self._max_pending_bytes
            )
        if full:
            raise BufferError("kafka-python: local queue full")
        try:
            future = self._producer.send(
                message.topic, value=message.value, key=message.key, headers=message.headers
            )
        except self._errors.KafkaTimeoutError as exc:
            raise BufferError(str(exc)) from exc
        except self._errors.KafkaError as exc:  # e.g. MessageSizeTooLargeError, raised locally
            on_delivery(f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._futures[future] = size
            self._pending_bytes += size

        def forget() -> None:
            with self._lock:
                self._pending_bytes -= self._futures.pop(future, 0)

        def done(_: Any) -> None:
            forget()
            on_delivery(None)

        def failed(exc: BaseException) -> None:
            forget()
            on_delivery(f"{type(exc).__name__}: {exc}")

        future.add_callback(done)
        future.add_errback(failed)

    def poll(self, timeout_s: float) -> None:
        if timeout_s > 0:
            time.sleep(min(timeout_s, 0.05))  # callbacks run in the sender thread

    def flush(self, timeout_s: float) -> int:
        with contextlib.suppress(self._errors.KafkaTimeoutError):
            self._producer.flush(timeout=timeout_s)
        with self._lock:
            return len(self._futures)

    def purge(self) -> None:
        # Closing with a zero timeout fails whatever is still in flight (errbacks fire).
        self._producer.close(timeout=0)

    def close(self) -> None:
        self._producer.close(timeout=5)


def validate_image(
    image: bytes | bytearray | memoryview | str | Path, max_bytes: int
) -> tuple[bytes, str, str]:
    """Read and check one input as ``ImageProducer.send`` does, with no Kafka client; returns
    (bytes, format, default source URI).

    Raises ImageRefused (reason ``empty``, ``too_many_bytes``, ``not_an_image`` or
    ``unreadable``). A path is stat'ed before it is read, so an oversize file is refused
    without loading it.
    """

    def check_size(size: int, source: str, data: bytes | None = None) -> None:
        if size == 0:
            raise ImageRefused(EMPTY, "0 bytes", source, data)
        if size > max_bytes:
            raise ImageRefused(
                TOO_MANY_BYTES, f"{size} bytes > limits.max_bytes={max_bytes}", source
            )

    if isinstance(image, str | Path):
        path = Path(image)
        source = path.absolute().as_uri()
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise ImageRefused(UNREADABLE, "not a regular file", source)
            check_size(size, source)
            data = path.read_bytes()
        except OSError as exc:
            raise ImageRefused(UNREADABLE, exc.strerror or str(exc), source) from exc
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        source = ""
    else:
        raise TypeError(f"send() takes bytes or a path, not {type(image).__name__}")
    check_size(len(data), source or "bytes", data)
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRefused(
            NOT_AN_IMAGE,
            f"not a supported image ({', '.join(sorted(CONTENT_TYPES))}); "
            f"starts with {data[:8].hex(' ')}",
            source or "bytes",
            data,
        )
    return data, fmt, source


class ImageProducer:
    """Publishes images to a Kafka topic as Avro ``ImageEvent`` messages.

    ``ImageProducer(settings)`` writes to ``settings.kafka.topic_images`` (or ``topic``) with
    the client named by ``settings.kafka.client_library``. ``check=True`` asks the brokers for
    the topic first and raises ServiceError when they are not reachable or the topic is
    missing. ``client_config`` adds client properties (librdkafka names) over the defaults;
    idempotence and ``acks=all`` cannot be turned off. ``on_delivery(id, error)`` is called for
    each delivery report. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str | None = None,
        *,
        check: bool = True,
        check_timeout_s: float = 15.0,
        flush_timeout_s: float = 120.0,
        client_config: Mapping[str, Any] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.kafka.topic_images
        self.max_bytes = settings.limits.max_bytes
        self.flush_timeout_s = flush_timeout_s
        self.stats = ProducerStats()
        self._on_delivery = on_delivery
        self._lock = threading.Lock()
        self._serialize = AvroSerializer("ImageEvent")
        self._fingerprint_header = self._serialize.fingerprint.hex().encode()
        self.client_library = settings.kafka.client_library
        client: _ConfluentClient | _KafkaPythonClient
        if self.client_library == "kafka-python":
            client = _KafkaPythonClient(settings, client_config or {})
        else:
            client = _ConfluentClient(settings, client_config or {})
        self._client: _Client = client
        self._closed = False
        if check:
            try:
                self._check_topic(client, check_timeout_s)
            except ServiceError:
                client.close()
                raise

    def _check_topic(self, client: _ConfluentClient | _KafkaPythonClient, timeout_s: float) -> None:
        # A topic created a moment ago (`imagetag init` just before) may take a little while
        # to show in every broker's metadata: look again for a few seconds before giving up.
        deadline = time.monotonic() + min(timeout_s, 5.0)
        while self.topic not in client.list_topics(timeout_s):
            if time.monotonic() >= deadline:
                raise ServiceError(
                    "kafka",
                    self.settings.kafka.bootstrap_servers,
                    f"topic {self.topic!r} does not exist (run `imagetag init`)",
                )
            time.sleep(0.25)

    # -- validation ------------------------------------------------------------------------

    def validate(
        self, image: bytes | bytearray | memoryview | str | Path
    ) -> tuple[bytes, str, str]:
        """Read and check one input (:func:`validate_image` with ``limits.max_bytes``)."""
        return validate_image(image, self.max_bytes)

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        image: bytes | bytearray | memoryview | str | Path,
        label: str | None = None,
        metadata: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> str:
        """Validate ``image`` (bytes or a file path) and queue it; returns its id (sha256 hex).

        ``source`` is the URI recorded in the event (default: the file's ``file://`` URI, or
        ``urn:sha256:<id>`` for bytes). ``metadata`` values must be strings. Raises
        ImageRefused (counted in ``stats.refused``) without sending anything when the input is
        refused; waits (serving delivery reports) while the local queue is full.
        """
        if self._closed:
            raise RuntimeError("ImageProducer is closed")
        try:
            data, fmt, default_source = self.validate(image)
            if label is not None and not isinstance(label, str):
                raise ImageRefused(
                    BAD_METADATA, f"label must be a string, not {label!r}", source or default_source
                )
            meta = dict(metadata or {})
            bad = {
                k: v for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)
            }
            if bad:
                raise ImageRefused(
                    BAD_METADATA,
                    f"metadata keys and values must be strings: {bad!r}",
                    source or default_source,
                )
        except ImageRefused as refused:
            with self._lock:
                self.stats.refused[refused.reason] += 1
            raise
        image_id = hashlib.sha256(data).hexdigest()
        event = {
            "id": image_id,
            "image": data,
            "content_type": CONTENT_TYPES[fmt],
            "source": source or default_source or f"urn:sha256:{image_id}",
            "produced_at": datetime.now(UTC),
            "label": label,
            "metadata": meta,
        }
        message = OutgoingMessage(
            self.topic,
            image_id.encode(),
            self._serialize(event),
            [
                (HEADER_CONTENT_TYPE, CONTENT_TYPES[fmt].encode()),
                (HEADER_SCHEMA_FINGERPRINT, self._fingerprint_header),
            ],
        )
        size = len(message.value)

        def delivered(error: str | None) -> None:
            with self._lock:
                if error is None:
                    self.stats.sent += 1
                    self.stats.bytes_sent += size
                else:
                    self.stats.failed += 1
                    self.stats.failures[error.split(":")[0]] += 1
            if error is not None:
                log.warning("delivery of %s failed: %s", image_id, error)
            if self._on_delivery is not None:
                self._on_delivery(image_id, error)

        with self._lock:
            self.stats.queued += 1
        while True:
            try:
                self._client.produce(message, delivered)
                break
            except BufferError:
                # Local queue full: let the brokers catch up (serving delivery reports), retry.
                self._client.poll(0.1)
        self._client.poll(0)
        return image_id

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports (they update :attr:`stats` and call ``on_delivery``)."""
        self._client.poll(timeout_s)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait until every queued message is delivered or failed, at most ``timeout_s``
        (default ``flush_timeout_s``); returns how many are still pending."""
        return self._client.flush(self.flush_timeout_s if timeout_s is None else timeout_s)

    def close(self, timeout_s: float | None = None) -> ProducerStats:
        """Flush, then purge (and count as failed) what could not be delivered in time."""
        if self._closed:
            return self.stats
        remaining = self.flush(timeout_s)
        if remaining:
            log.warning("%d messages undelivered after flush; purging them", remaining)
            self._client.purge()
        self._client.close()
        self._closed = True
        return self.stats

    def __enter__(self) -> ImageProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ImageProducer(topic={self.topic!r}, client={self.client_library}, {self.stats})"
