"""Spark plumbing shared by the stream and the backfill: tag a DataFrame, write the results.

``tag_rows`` runs ``tag_batch`` (through ``imagetag.records``) in ``mapInPandas`` with the
current model broadcast once per version, and in the same Spark job upserts the tagged rows into
Solr from the executors (stalling while Solr is down); ``write_outputs`` then sends the
undecided ones to the review topic and the undecodable ones to the dead-letter topic in one
Kafka transaction. Both the streaming job's ``foreachBatch`` and the backfill call these, so the
two write exactly the same things.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import itertools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from imagetag.contracts import KAFKA_COORDINATES, OUTPUT_SCHEMA, Coords
from imagetag.errors import NoModelError
from imagetag.settings import Settings
from imagetag.sinks import TransactionalSink

if TYPE_CHECKING:
    from pyspark import Accumulator, Broadcast
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


# Test-only hook: a batch holding a record whose value contains this environment variable's
# bytes fails in ``tag_partition``, outside the per-record isolation (``TEST_IMAGETAG_POISON_MODE``
# = ``raise``, the default, or ``crash`` to kill the Python worker as a segfault would). It lets
# the tests prove that a batch failing for a reason nobody foresaw is quarantined.
POISON_ENV = "TEST_IMAGETAG_POISON"
POISON_MODE_ENV = "TEST_IMAGETAG_POISON_MODE"


@dataclass
class SolrTally:
    """Spark accumulators of the Solr upserts a tagging job's executors made (``upsert``):
    writes retried, seconds stalled waiting for Solr, seconds spent upserting."""

    retries: Accumulator[int]
    stalled_s: Accumulator[float]
    seconds: Accumulator[float]

    @classmethod
    def create(cls, spark: SparkSession) -> SolrTally:
        context = spark.sparkContext
        return cls(context.accumulator(0), context.accumulator(0.0), context.accumulator(0.0))


def tag_partition(
    batches: Iterable[pd.DataFrame],
    shared: SharedModel,
    settings_json: str,
    upsert: SolrTally | None = None,
    keep: tuple[str, ...] = (),
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: Kafka rows -> decoded events -> tag_batch -> uniform output rows; with
    ``upsert``, the tagged rows' documents are upserted into Solr here (``upsert_tagged``).
    The input's ``keep`` columns are added to each output row, found by its coordinates."""
    from imagetag.records import tag_kafka_rows

    settings = Settings.from_executors(settings_json)
    model = worker_model(shared)
    poison = os.environ.get(POISON_ENV, "").encode()
    for rows in batches:
        if poison:
            _test_poison(rows, poison)
        out = tag_kafka_rows(rows, model, settings)
        if upsert is not None:
            out = upsert_tagged(out, settings, upsert)
        yield with_columns(out, rows, keep) if keep else out


@dataclass(frozen=True)
class SharedModel:
    """A model bundle broadcast to the executors, and a key naming that one broadcast.

    A reused Python worker keeps the model it unpickled under ``key`` (``worker_model``), not
    under the broadcast object: Spark drops a broadcast from a worker as soon as it runs a task
    that does not use it (the archive query's, between two batches of the tag query) and sends
    it again with the next task that does, as a new object whose ``value`` is unpickled again."""

    key: str
    broadcast: Broadcast[Any]


_worker_model: tuple[str, Any] | None = None  # (key, model) in this Python worker


def worker_model(shared: SharedModel) -> Any:
    """The model ``shared`` names, unpickled once per Python worker; on the first call for a
    model the worker's heap is frozen (``gc.freeze``), the previous model's thawed and collected.

    PySpark's daemon runs a full ``gc.collect()`` after every task of a reused worker, and a
    full collection walks every object the worker holds: 80-125 ms of CPU with the model and
    its libraries loaded (about 98,000 objects); frozen, under a millisecond. Frozen objects
    are still freed by reference counting; only cyclic garbage among them stays, at most what
    was there when the model arrived. Keyed on the broadcast object instead, a worker saw a
    "new" model after every archive task (see ``SharedModel``) and thawed, collected and
    unpickled again: 3.5% of the workers' samples in py-spy at 70 images/s."""
    global _worker_model
    if _worker_model is not None and _worker_model[0] == shared.key:
        return _worker_model[1]
    if _worker_model is not None:
        _worker_model = None
        gc.unfreeze()
        gc.collect()
    model = shared.broadcast.value
    gc.freeze()
    _worker_model = (shared.key, model)
    return model


def with_columns(out: pd.DataFrame, rows: pd.DataFrame, keep: tuple[str, ...]) -> pd.DataFrame:
    """``out`` with the ``keep`` columns of the input row each output row is the outcome of."""
    kept = rows[[*KAFKA_COORDINATES, *keep]].astype({"partition": "int64"})
    return out.astype({"partition": "int64"}).merge(
        kept, on=list(KAFKA_COORDINATES), how="left", validate="many_to_one"
    )


REFUSED = "index/solr_refused"  # the cause of a document Solr refused

# A task upserts its documents once they are all tagged. Upserting chunks of 250 (or 500) from
# a thread while the next chunk was tagged was measured and not kept: draining 8000 images,
# Solr's CPU rose from 0.38-0.42 to 0.49-0.59 ms an image (more, smaller requests) and images/s
# did not (307-314 against 294-325): with Solr on the same cores, the task's wait for Solr is
# not idle CPU.


def upsert_tagged(out: pd.DataFrame, settings: Settings, tally: SolrTally) -> pd.DataFrame:
    """Upsert the tagged rows' documents into Solr, from the executor that tagged them (one
    Spark job a batch instead of two); waits while Solr is unavailable (``SolrWriter``). A row
    whose document Solr refused becomes its dead letter (stage ``index``); the written rows
    keep no document (the driver needs only their kind and latency)."""
    from imagetag.records import dead_letter_for_refused_doc
    from imagetag.solr import SolrWriter

    tagged = out.index[out["kind"] == "tagged"]
    if not len(tagged):
        return out
    started = time.monotonic()
    result = SolrWriter(settings).write(json.loads(doc) for doc in out.loc[tagged, "doc"])
    tally.seconds.add(time.monotonic() - started)
    tally.retries.add(result.retries)
    tally.stalled_s.add(result.stalled_s)
    refused = {doc["id"]: (json.dumps(doc), reason) for doc, reason in result.rejected}
    if refused:  # an int64 column would turn the refused rows' None into a NaN
        out["latency_ms"] = out["latency_ms"].astype(object)
    for i in tagged:
        image_id = out.at[i, "id"]
        out.at[i, "doc"] = None
        if image_id in refused:
            key, value = dead_letter_for_refused_doc(image_id, *refused[image_id], settings)
            out.at[i, "kind"], out.at[i, "key"], out.at[i, "value"] = "dead", key, value
            out.at[i, "latency_ms"], out.at[i, "cause"] = None, REFUSED
    return out


def _test_poison(rows: pd.DataFrame, marker: bytes) -> None:
    if any(value is not None and marker in bytes(value) for value in rows["value"]):
        if os.environ.get(POISON_MODE_ENV) == "crash":
            os._exit(70)
        raise RuntimeError("test poison: a record no isolation can catch")


def tag_frame(
    rows: DataFrame,
    shared: SharedModel,
    settings: Settings,
    upsert: SolrTally | None = None,
    keep: Mapping[str, str] | None = None,
) -> DataFrame:
    """Kafka-shaped rows (key, value, topic, partition, offset, timestamp) -> output rows
    (OUTPUT_SCHEMA, then the ``keep`` columns of ``rows``: name -> Spark SQL type), persisted:
    the caller runs several actions on it and unpersists it."""
    settings_json = settings.for_executors()
    names = tuple(keep or {})
    return rows.mapInPandas(
        lambda it: tag_partition(it, shared, settings_json, upsert, names),
        output_schema(keep),
    ).persist()


def output_schema(keep: Mapping[str, str] | None) -> str:
    return ", ".join([OUTPUT_SCHEMA, *(f"{name} {kind}" for name, kind in (keep or {}).items())])


@dataclass
class Tagged:
    """A batch's output rows (OUTPUT_SCHEMA, cached) and, fetched with them, (kind, latency_ms,
    size, cause, key, value, topic, partition, offset, then the ``keep`` columns) per row, key
    and value only for a review or dead row of at most ``INLINE_VALUE_BYTES`` (a larger one is
    fetched from the cache when it is written). ``quarantined`` counts the records
    dead-lettered as ``poison``; ``upserted`` tallies the Solr upserts the tagging job made
    itself (None: the tagged rows still hold their docs). ``write_outputs`` leaves out the
    outcomes of the records at ``ignored`` (``ignoring``)."""

    out: DataFrame
    meta: list[Any]
    quarantined: int = 0
    parts: list[DataFrame] = field(default_factory=list)
    upserted: SolrTally | None = None
    ignored: frozenset[Coords] = frozenset()

    def unpersist(self) -> None:
        for frame in self.parts or [self.out]:
            frame.unpersist()

    def ignoring(self, records: Iterable[Coords]) -> Tagged:
        """This batch without the outcomes of ``records`` (their Solr upserts are made)."""
        ignored = self.ignored | frozenset(records)
        meta = [row for row in self.meta if coords(row) not in ignored]
        return dataclasses.replace(self, meta=meta, ignored=ignored)


def coords(row: Any) -> Coords:
    return (str(row.topic), int(row.partition), int(row.offset))


def tag_rows(
    rows: DataFrame,
    shared: SharedModel,
    settings: Settings,
    what: str,
    *,
    upsert: bool = False,
    keep: Mapping[str, str] | None = None,
) -> Tagged:
    """Tag Kafka-shaped rows in one Spark job; a batch that fails deterministically for a reason
    that is not an infrastructure fault is quarantined instead of failing. With ``upsert``, the
    same job upserts the tagged documents into Solr (``upsert_tagged``), so that
    ``write_outputs`` has only the Kafka transaction left to do. ``keep`` names columns of
    ``rows`` (name -> Spark SQL type) that come back with each row's outcome in ``meta``.

    Per-record isolation (``tag_batch``, ``records``) keeps any one record from failing the
    batch; this is the net below it, for what isolation cannot catch (a Python worker that
    crashes, a bug outside the per-record steps). A failed batch is run again in halves, and a
    failing half in halves again, down to single records (the first two halves are the retry: a
    transient fault passes there): the parts that pass are kept, and every record that fails
    alone goes to the dead-letter topic as ``poison`` with its original bytes. Infrastructure
    faults (Kafka, Solr, an executor lost) are raised, so the caller stalls and retries as for
    any outage. ``what`` names the batch in the logs.
    """
    tally = SolrTally.create(rows.sparkSession) if upsert else None
    try:
        return _materialize(rows, shared, settings, tally, keep)
    except Exception as exc:
        if not is_data_fault(exc):
            raise
        fault = fault_summary(exc)
    log.warning("%s failed (%s); running it again in halves to find the cause", what, fault)
    started = time.monotonic()
    tagged = _quarantine(rows, shared, settings, fault, tally, keep)
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


# A review or dead row's Kafka record up to this size comes back with the batch's meta, in the
# tagging job itself; a larger one (a dead letter carries the whole image) is fetched after.
INLINE_VALUE_BYTES = 16 * 1024
_INLINE = f"kind != 'tagged' AND length(value) <= {INLINE_VALUE_BYTES}"
META_COLUMNS = (
    "kind",
    "latency_ms",
    "length(value) AS size",
    "cause",
    f"IF({_INLINE}, key, NULL) AS key",
    f"IF({_INLINE}, value, NULL) AS value",
    *KAFKA_COORDINATES,
)


def _materialize(
    rows: DataFrame,
    shared: SharedModel,
    settings: Settings,
    tally: SolrTally | None,
    keep: Mapping[str, str] | None,
) -> Tagged:
    out = tag_frame(rows, shared, settings, tally, keep)
    try:
        meta = out.selectExpr(*META_COLUMNS, *(keep or {})).collect()
    except BaseException:
        out.unpersist()
        raise
    return Tagged(out, meta, parts=[out], upserted=tally)


def _quarantine(
    rows: DataFrame,
    shared: SharedModel,
    settings: Settings,
    fault: str,
    tally: SolrTally | None,
    keep: Mapping[str, str] | None,
) -> Tagged:
    """Narrow a failing batch down by bisection over its (topic, partition, offset) order."""
    from pyspark import StorageLevel
    from pyspark.sql import Row

    from imagetag.records import dead_letter

    places = sorted(coords(r) for r in rows.select(*KAFKA_COORDINATES).collect())
    good: list[Tagged] = []
    poison: list[Coords] = []
    pending = [places]
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)  # read once, probed many times
    cores = max(1, rows.sparkSession.sparkContext.defaultParallelism)
    try:
        while pending:
            chunk = pending.pop()
            # Small probes in one task: the job's fixed cost, not the tagging, dominates them.
            tasks = max(1, min(cores, len(chunk) // PROBE_ROWS_PER_TASK))
            probe = rows.where(_coords_filter(chunk)).coalesce(tasks)
            try:
                good.append(_materialize(probe, shared, settings, tally, keep))
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
    kept = tuple(keep or {})
    if poison:
        detail = f"its batch failed twice and it fails alone: {fault}"
        where = _coords_filter(poison, exact=True)
        for r in rows.where(where).select(*KAFKA_ROW, *kept).collect():
            place = coords(r)
            key, value = dead_letter(r.key, r.value or b"", place, "tag", "poison", detail)
            row = ("dead", _text(key), None, key, value, None, "tag/poison", *place)
            letters.append((row, tuple(r[name] for name in kept)))
    rows.unpersist()  # the good parts' outputs are cached on their own
    spark = rows.sparkSession
    quarantined = spark.createDataFrame([(*r, *k) for r, k in letters], output_schema(keep))
    parts = [part.out for part in good]
    out = functools.reduce(lambda a, b: a.unionByName(b), parts, quarantined)
    meta = [m for part in good for m in part.meta]
    meta += [
        Row(
            kind="dead",
            latency_ms=None,
            size=len(value),
            cause="tag/poison",
            key=key,
            value=value if len(value) <= INLINE_VALUE_BYTES else None,
            topic=topic,
            partition=partition,
            offset=offset,
            **dict(zip(kept, values, strict=True)),
        )
        for (_, _, _, key, value, _, _, topic, partition, offset), values in letters
    ]
    return Tagged(out, meta, quarantined=len(letters), parts=parts, upserted=tally)


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
        self.shared: SharedModel | None = None

    def get(self) -> SharedModel:
        """The broadcast bundle CURRENT names. Raises NoModelError when there is none yet."""
        from imagetag.bundle import ModelStore

        store = ModelStore(self.settings.model_store, self.spark)
        version = store.current_version()
        if version is None:
            raise NoModelError(self.settings.model_store)
        if version != self.version or self.shared is None:
            model = store.load(version)
            old = self.shared
            # A key of its own, not the version: two stores (or a store rebuilt) may both hold
            # a "v0001", and a reused worker must never take one for the other.
            self.shared = SharedModel(uuid.uuid4().hex, self.spark.sparkContext.broadcast(model))
            if old is not None:
                old.broadcast.unpersist()
            if self.version is not None:
                log.info("model swapped: %s -> %s", self.version, version)
            else:
                log.info("model %s loaded", version)
            self.version = version
        return self.shared


def kafka_options(settings: Settings) -> dict[str, str]:
    """Spark's Kafka source / sink options: the Java client's configuration, ``kafka.``-prefixed."""
    return {f"kafka.{k}": v for k, v in settings.kafka.java_client_config().items()}


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
    """After the tagging job upserted the tagged documents into Solr (``tag_rows(...,
    upsert=True)``: Solr first, stalling while it is unavailable), the review and dead-letter
    records in one Kafka transaction marked ``token`` (skipped when the sink's ledger says this
    batch's records were committed already, or when there is nothing to append). With
    ``appends`` false (a re-index), review and dead rows are counted, not written, except the
    dead letters of documents Solr refused (they were indexed, and now they are not).

    No Spark job unless a review or dead record was too large to come back with the batch's
    meta (``INLINE_VALUE_BYTES``): then the records are fetched from the cached output."""
    if tagged.upserted is None:
        raise ValueError("write_outputs needs a batch tagged with tag_rows(..., upsert=True)")
    counts: dict[str, int] = {}
    causes: dict[str, int] = {}

    def sent(row: Any) -> bool:
        return bool(row.kind != "tagged" and (appends or row.cause == REFUSED))

    sink_bytes = 0
    inline = True
    for row in tagged.meta:
        counts[row.kind] = counts.get(row.kind, 0) + 1
        if sent(row):
            sink_bytes += row.size or 0
            inline = inline and row.value is not None
        if row.kind == "dead":
            causes[row.cause or "tag/unknown"] = causes.get(row.cause or "tag/unknown", 0) + 1
    latencies = [
        int(r.latency_ms) for r in tagged.meta if r.kind == "tagged" and r.latency_ms is not None
    ]
    started = time.monotonic()
    appended = sum(1 for row in tagged.meta if sent(row))
    if appended and not sink.done(token):
        topics = {"review": settings.kafka.topic_review, "dead": settings.kafka.topic_dlq}
        fetched: Iterable[Any] = [row for row in tagged.meta if sent(row)]
        if not inline:
            which = "kind IN ('review', 'dead')" if appends else f"cause = '{REFUSED}'"
            rows = tagged.out.where(which).select("kind", "key", "value", *KAFKA_COORDINATES)
            fetched = (
                rows.collect()
                if sink_bytes <= COLLECT_MAX_BYTES
                else rows.toLocalIterator(prefetchPartitions=True)
            )
            if tagged.ignored:
                fetched = (row for row in fetched if coords(row) not in tagged.ignored)
        sink.write(
            token, ((topics[row.kind], _bytes(row.key), bytes(row.value)) for row in fetched)
        )
    elif appended:
        log.info("batch %s: review and dead letters were committed before; not again", token)
    phases = {"solr": float(tagged.upserted.seconds.value), "kafka": time.monotonic() - started}
    if tagged.quarantined:
        counts["quarantined"] = tagged.quarantined
    return Written(
        counts,
        latencies,
        causes,
        phases,
        solr_retries=int(tagged.upserted.retries.value),
        solr_stalled_s=float(tagged.upserted.stalled_s.value),
    )
