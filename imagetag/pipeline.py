"""Spark plumbing shared by the stream and the backfill: tag a DataFrame, write the results.

``tag_frame`` runs ``tag_batch`` (through ``imagetag.records``) in ``mapInPandas`` with the
current model broadcast once per version; ``write_outputs`` sends the tagged rows to Solr
(stalling while Solr is down), the undecided ones to the review topic and the undecodable ones
to the dead-letter topic. Both the streaming job's ``foreachBatch`` and the backfill call these,
so the two write exactly the same things.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from imagetag.contracts import KAFKA_COORDINATES, OUTPUT_SCHEMA
from imagetag.errors import NoModelError
from imagetag.settings import Settings
from imagetag.sinks import TransactionalSink

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


# Test-only hook: a batch holding a record whose value contains this environment variable's
# bytes fails in ``tag_partition``, outside the per-record isolation (``TEST_IMAGETAG_POISON_MODE``
# = ``raise``, the default, or ``crash`` to kill the Python worker as a segfault would). It lets
# the tests prove that a batch failing for a reason nobody foresaw is quarantined.
POISON_ENV = "TEST_IMAGETAG_POISON"
POISON_MODE_ENV = "TEST_IMAGETAG_POISON_MODE"


def tag_partition(
    batches: Iterable[pd.DataFrame], model_bc: Broadcast[Any], settings_json: str
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: Kafka rows -> decoded events -> tag_batch -> uniform output rows."""
    from imagetag.records import tag_kafka_rows

    settings = Settings.from_executors(settings_json)
    model = model_bc.value  # unpickled once per Python worker per model version
    poison = os.environ.get(POISON_ENV, "").encode()
    for rows in batches:
        if poison:
            _test_poison(rows, poison)
        yield tag_kafka_rows(rows, model, settings)


def _test_poison(rows: pd.DataFrame, marker: bytes) -> None:
    if any(value is not None and marker in bytes(value) for value in rows["value"]):
        if os.environ.get(POISON_MODE_ENV) == "crash":
            os._exit(70)
        raise RuntimeError("test poison: a record no isolation can catch")


def tag_frame(rows: DataFrame, model_bc: Broadcast[Any], settings: Settings) -> DataFrame:
    """Kafka-shaped rows (key, value, topic, partition, offset, timestamp) -> output rows
    (OUTPUT_SCHEMA), persisted: the caller runs several actions on it and unpersists it."""
    settings_json = settings.for_executors()
    return rows.mapInPandas(
        lambda it: tag_partition(it, model_bc, settings_json), OUTPUT_SCHEMA
    ).persist()


@dataclass
class Tagged:
    """A batch's output rows (OUTPUT_SCHEMA, cached) and, fetched with them, (kind, latency_ms,
    size, cause) per row. ``quarantined`` counts the records dead-lettered as ``poison``."""

    out: DataFrame
    meta: list[Any]
    quarantined: int = 0
    parts: list[DataFrame] = field(default_factory=list)

    def unpersist(self) -> None:
        for frame in self.parts or [self.out]:
            frame.unpersist()


def tag_rows(rows: DataFrame, model_bc: Broadcast[Any], settings: Settings, what: str) -> Tagged:
    """Tag Kafka-shaped rows in one Spark job; a batch that fails deterministically for a reason
    that is not an infrastructure fault is quarantined instead of failing.

    Per-record isolation (``tag_batch``, ``records``) keeps any one record from failing the
    batch; this is the net below it, for what isolation cannot catch (a Python worker that
    crashes, a bug outside the per-record steps). A failed batch is run again in halves, and a
    failing half in halves again, down to single records (the first two halves are the retry: a
    transient fault passes there): the parts that pass are kept, and every record that fails
    alone goes to the dead-letter topic as ``poison`` with its original bytes. Infrastructure
    faults (Kafka, Solr, an executor lost) are raised, so the caller stalls and retries as for
    any outage. ``what`` names the batch in the logs.
    """
    try:
        return _materialize(rows, model_bc, settings)
    except Exception as exc:
        if not is_data_fault(exc):
            raise
        fault = fault_summary(exc)
    log.warning("%s failed (%s); running it again in halves to find the cause", what, fault)
    started = time.monotonic()
    tagged = _quarantine(rows, model_bc, settings, fault)
    if tagged.quarantined:
        log.error(
            "%s: quarantined %d poison record(s) of %d in %.1fs (%s); the rest went on",
            what,
            tagged.quarantined,
            len(tagged.meta),
            time.monotonic() - started,
            fault,
        )
    else:
        log.warning("%s passed when run again in halves (a transient fault)", what)
    return tagged


def _materialize(rows: DataFrame, model_bc: Broadcast[Any], settings: Settings) -> Tagged:
    out = tag_frame(rows, model_bc, settings)
    try:
        meta = out.selectExpr("kind", "latency_ms", "length(value) AS size", "cause").collect()
    except BaseException:
        out.unpersist()
        raise
    return Tagged(out, meta, parts=[out])


Coords = tuple[str, int, int]


def _quarantine(
    rows: DataFrame, model_bc: Broadcast[Any], settings: Settings, fault: str
) -> Tagged:
    """Narrow a failing batch down by bisection over its (topic, partition, offset) order."""
    from pyspark import StorageLevel
    from pyspark.sql import Row

    from imagetag.records import dead_letter

    coords: list[Coords] = sorted(
        (str(r.topic), int(r.partition), int(r.offset))
        for r in rows.select("topic", "partition", "offset").collect()
    )
    good: list[Tagged] = []
    poison: list[Coords] = []
    pending = [coords]
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)  # read once, probed many times
    cores = max(1, rows.sparkSession.sparkContext.defaultParallelism)
    try:
        while pending:
            chunk = pending.pop()
            # Small probes in one task: the job's fixed cost, not the tagging, dominates them.
            tasks = max(1, min(cores, len(chunk) // PROBE_ROWS_PER_TASK))
            probe = rows.where(_coords_filter(chunk)).coalesce(tasks)
            try:
                good.append(_materialize(probe, model_bc, settings))
            except Exception as exc:
                if not is_data_fault(exc):
                    raise
                if len(chunk) == 1:
                    poison.extend(chunk)
                else:
                    half = len(chunk) // 2
                    pending += [chunk[half:], chunk[:half]]
    except BaseException:
        for part in good:
            part.unpersist()
        rows.unpersist()
        raise
    letters = []
    if poison:
        detail = f"its batch failed twice and it fails alone: {fault}"
        for r in rows.where(_coords_filter(poison, exact=True)).select(*KAFKA_ROW).collect():
            place = (str(r.topic), int(r.partition), int(r.offset))
            key, value = dead_letter(r.key, r.value or b"", place, "tag", "poison", detail)
            letters.append(("dead", _text(key), None, key, value, None, "tag/poison"))
    rows.unpersist()  # the good parts' outputs are cached on their own
    spark = rows.sparkSession
    quarantined = spark.createDataFrame(letters, OUTPUT_SCHEMA)
    parts = [part.out for part in good]
    out = functools.reduce(lambda a, b: a.unionByName(b), parts, quarantined)
    meta = [m for part in good for m in part.meta]
    meta += [
        Row(kind="dead", latency_ms=None, size=len(letter[4]), cause="tag/poison")
        for letter in letters
    ]
    return Tagged(out, meta, quarantined=len(letters), parts=parts)


KAFKA_ROW = ("key", "value", *KAFKA_COORDINATES)  # what a poison record's dead letter keeps
PROBE_ROWS_PER_TASK = 500


def _coords_filter(chunk: list[Coords], exact: bool = False) -> str:
    """A SQL filter selecting the rows at ``chunk``'s coordinates. A chunk is a contiguous run
    of the batch's sorted coordinates, so one offset range per topic partition holds exactly
    its rows; ``exact`` matches each coordinate itself instead (for scattered ones)."""

    def quoted(topic: str) -> str:
        return "'" + topic.replace("\\", "\\\\").replace("'", "\\'") + "'"

    if exact:
        return " OR ".join(
            f"(topic = {quoted(t)} AND partition = {p} AND offset = {o})" for t, p, o in chunk
        )
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for topic, partition, offset in chunk:
        low, high = ranges.get((topic, partition), (offset, offset))
        ranges[(topic, partition)] = (min(low, offset), max(high, offset))
    return " OR ".join(
        f"(topic = {quoted(topic)} AND partition = {partition} AND offset BETWEEN {low} AND {high})"
        for (topic, partition), (low, high) in ranges.items()
    )


def _text(key: bytes | None) -> str:
    try:
        return "" if key is None else key.decode("ascii")
    except UnicodeDecodeError:
        return ""


def is_data_fault(exc: BaseException) -> bool:
    """Did a batch fail because of what is in it, not because a service is away?

    Yes for an exception raised by our Python code on an executor (pyspark's
    ``PythonException``) and for a Python worker that died (a segfault or an OOM kill while
    handling some record): Spark reports that as a ``SparkException`` thrown by its Python
    runner (``org.apache.spark.api.python``) around the broken pipe to the worker, an
    ``EOFException`` or a ``SocketException`` (connection reset), with no error condition to
    tell it by. No for everything else: Kafka or Solr unreachable, an executor lost, the
    driver's own errors.
    """
    from pyspark.errors.exceptions.base import PythonException

    if isinstance(exc, PythonException):
        return True
    causes = _java_causes(exc)
    if any(name == "org.apache.spark.api.python.PythonException" for name, _ in causes):
        return True
    return any(
        outer == "org.apache.spark.SparkException"
        and thrower.startswith("org.apache.spark.api.python.")
        and inner in _WORKER_GONE
        for (outer, thrower), (inner, _) in itertools.pairwise(causes)
    )


# How the pipe to a Python worker that died breaks, as its runner sees it.
_WORKER_GONE = frozenset({"java.io.EOFException", "java.net.SocketException"})


def _java_causes(exc: BaseException) -> list[tuple[str, str]]:
    """(class name, class of the top stack frame) of a py4j error's Java exception and its
    causes, outermost first."""
    java = getattr(exc, "java_exception", None)
    causes: list[tuple[str, str]] = []
    while java is not None and len(causes) < 20:
        try:
            frames = java.getStackTrace()
            thrower = str(frames[0].getClassName()) if len(frames) else ""
            causes.append((str(java.getClass().getName()), thrower))
            java = java.getCause()
        except Exception:  # the gateway is gone: nothing more to learn
            break
    return causes


def fault_summary(exc: BaseException | str) -> str:
    """The telling line of a Spark / py4j error: the innermost Python or Java exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*", line) and not line.startswith("at "):
            return line[:500]
    return lines[0][:500] if lines else repr(exc)[:500]


class CurrentModel:
    """The model bundle named by the store's CURRENT pointer, broadcast once per version.

    ``get()`` is called at every micro-batch (or backfill round); it reads only the pointer
    unless the version changed, in which case the new bundle is loaded and broadcast and the
    old broadcast freed. The one watcher of the current model: the stream and the backfill
    both use it.
    """

    def __init__(self, spark: SparkSession, settings: Settings) -> None:
        self.spark = spark
        self.settings = settings
        self.version: str | None = None
        self.broadcast: Broadcast[Any] | None = None

    def get(self) -> Broadcast[Any]:
        """The broadcast bundle CURRENT names. Raises NoModelError when there is none yet."""
        from imagetag.bundle import ModelStore

        store = ModelStore(self.settings.model_store, self.spark)
        version = store.current_version()
        if version is None:
            raise NoModelError(self.settings.model_store)
        if version != self.version or self.broadcast is None:
            model = store.load(version)
            old = self.broadcast
            self.broadcast = self.spark.sparkContext.broadcast(model)
            if old is not None:
                old.unpersist()
            if self.version is not None:
                log.info("model swapped: %s -> %s", self.version, version)
            else:
                log.info("model %s loaded", version)
            self.version = version
        return self.broadcast


def kafka_options(settings: Settings) -> dict[str, str]:
    """Spark's Kafka source / sink options: the Java client's configuration, ``kafka.``-prefixed."""
    return {f"kafka.{k}": v for k, v in settings.kafka.java_client_config().items()}


def solr_partition(settings_json: str) -> Callable[[Iterable[Any]], Iterator[tuple[Any, ...]]]:
    """mapPartitions body: upsert one partition's documents; yield ("refused", id, doc, reason)
    per document Solr refused, then ("stalled", "", retries, seconds waited for Solr)."""

    def write(rows: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
        from imagetag.solr import SolrWriter

        settings = Settings.from_executors(settings_json)
        docs = [json.loads(row.doc) for row in rows]
        if not docs:
            return
        result = SolrWriter(settings).write(docs)
        for doc, reason in result.rejected:
            yield "refused", doc["id"], json.dumps(doc), reason
        if result.retries:
            yield "stalled", "", result.retries, result.stalled_s

    return write


def _bytes(value: bytes | bytearray | None) -> bytes | None:
    """Spark hands binary columns to Python as bytearray; Kafka clients want bytes."""
    return None if value is None else bytes(value)


# Review and dead-letter records of a batch up to this size are fetched in one Spark job; a larger
# batch (dead letters carry whole images) is streamed partition by partition.
COLLECT_MAX_BYTES = 64 * 2**20


@dataclass
class Written:
    """What a batch wrote: counts by kind (tagged, review, dead, quarantined), dead letters by
    ``stage/reason``, the tagged images' produce-to-tag latencies (ms), the seconds each phase
    took (solr, kafka; the caller adds tag), and the Solr writes retried and seconds stalled."""

    counts: dict[str, int]
    latencies_ms: list[int]
    dead_reasons: dict[str, int] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    solr_retries: int = 0
    solr_stalled_s: float = 0.0


def write_outputs(
    settings: Settings,
    tagged: Tagged,
    sink: TransactionalSink,
    token: str,
    *,
    appends: bool = True,
) -> Written:
    """Solr first (stalls while Solr is unavailable), then the review and dead-letter records in
    one Kafka transaction marked ``token`` (skipped when the sink's ledger says this batch's
    records were committed already, or when there is nothing to append). With ``appends``
    false (a re-index), review and dead rows are counted, not written.

    Two Spark jobs a batch on top of the tagging (whose collect of (kind, latency, size) per
    row filled the cache of ``tagged.out``): the Solr upserts and the review / dead-letter
    records."""
    from imagetag.records import dead_letter_for_refused_doc

    out = tagged.out
    counts: dict[str, int] = {}
    causes: dict[str, int] = {}
    sink_bytes = 0
    for row in tagged.meta:
        counts[row.kind] = counts.get(row.kind, 0) + 1
        if row.kind != "tagged":
            sink_bytes += row.size or 0
        if row.kind == "dead":
            causes[row.cause or "tag/unknown"] = causes.get(row.cause or "tag/unknown", 0) + 1
    latencies = [
        int(r.latency_ms) for r in tagged.meta if r.kind == "tagged" and r.latency_ms is not None
    ]

    settings_json = settings.for_executors()
    solr_rows: list[Any] = []
    started = time.monotonic()
    if counts.get("tagged"):
        solr_rows = (
            out.where("kind = 'tagged'")
            .select("doc")
            .rdd.mapPartitions(solr_partition(settings_json))
            .collect()
        )
    phases = {"solr": time.monotonic() - started}
    refused = [row[1:] for row in solr_rows if row[0] == "refused"]
    stalls = [row[2:] for row in solr_rows if row[0] == "stalled"]
    started = time.monotonic()
    appended = counts.get("review", 0) + counts.get("dead", 0) if appends else 0
    if (appended or refused) and not sink.done(token):
        topics = {"review": settings.kafka.topic_review, "dead": settings.kafka.topic_dlq}
        rows = out.where("kind IN ('review', 'dead')").select("kind", "key", "value")
        fetched: Iterable[Any] = (
            []
            if not appended
            else rows.collect()
            if sink_bytes <= COLLECT_MAX_BYTES
            else rows.toLocalIterator(prefetchPartitions=True)
        )
        records = ((topics[row.kind], _bytes(row.key), bytes(row.value)) for row in fetched)
        letters = (
            (settings.kafka.topic_dlq, key, value)
            for key, value in (
                dead_letter_for_refused_doc(image_id, doc, reason, settings)
                for image_id, doc, reason in refused
            )
        )
        sink.write(token, itertools.chain(records, letters))
    elif appended or refused:
        log.info("batch %s: review and dead letters were committed before; not again", token)
    phases["kafka"] = time.monotonic() - started
    counts["tagged"] = counts.get("tagged", 0) - len(refused)
    counts["dead"] = counts.get("dead", 0) + len(refused)
    if refused:
        causes["index/solr_refused"] = causes.get("index/solr_refused", 0) + len(refused)
    if tagged.quarantined:
        counts["quarantined"] = tagged.quarantined
    return Written(
        counts,
        latencies,
        causes,
        phases,
        solr_retries=sum(int(n) for n, _ in stalls),
        solr_stalled_s=sum(float(s) for _, s in stalls),
    )
