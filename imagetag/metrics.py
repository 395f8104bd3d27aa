"""Prometheus metrics of the long-running jobs, served on ``/metrics`` (prometheus-client).

The stream serves them on ``metrics.host:metrics.stream_port`` while it runs, the backfill on
``metrics.backfill_port`` (null turns an endpoint off, 0 takes a free port and logs it). The backfill exposes its progress
while it runs rather than pushing it at the end: Prometheus scrapes it like the stream, and a
backfill of tens of millions of images runs for hours, so its rate is worth seeing while it
runs; a Pushgateway would be one more service to run for a figure the summary prints anyway.

Every name is ``imagetag_<job>_<what>``, ``<job>`` being ``stream`` or ``backfill``; the
Grafana dashboard (``deploy/grafana``) and ``imagetag status`` read them by these names
(:data:`NAMES`, checked by the tests). Counters count from the process's start; a restart
starts them at 0 again, which ``rate()`` and ``increase()`` handle.

A port already in use (another stream on the same machine) is logged and the job runs without
its endpoint: metrics are never a reason to stop tagging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

if TYPE_CHECKING:
    from imagetag.pipeline import Written

log = logging.getLogger(__name__)

# Seconds: a micro-batch or one of its phases; produce -> tagged spans queueing, so it is longer.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0)

OUTCOMES = ("tagged", "review", "dead")
PHASES = ("tag", "solr", "kafka")


class JobMetrics:
    """What the stream and the backfill both measure, in a registry of their own."""

    job = "job"

    def __init__(self) -> None:
        job = self.job
        self.registry = CollectorRegistry()
        self.server: Any = None
        name = f"imagetag_{job}"
        unit = "micro-batches" if job == "stream" else "rounds"

        self._name = name

        def counter(what: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(f"{name}_{what}", doc, list(labels), registry=self.registry)

        def gauge(what: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(f"{name}_{what}", doc, list(labels), registry=self.registry)

        self.batches = counter("batches", f"{unit} written (Solr and Kafka accepted everything)")
        self.records = counter("records", "records by outcome", ["outcome"])
        self.dead = counter("dead_letters", "dead letters by stage and reason", ["stage", "reason"])
        self.quarantined = counter(
            "quarantined", "records dead-lettered as poison by a bisected batch"
        )
        self.duplicates = counter(
            "duplicates", "records dropped as repeats of one passed within the dedupe window"
        )
        self.batch_seconds = Histogram(
            f"{name}_batch_duration_seconds",
            f"wall time of one of the {unit}, tagging to the Kafka commit",
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self.phase_seconds = Histogram(
            f"{name}_phase_duration_seconds",
            "wall time of a phase: tag (the Spark job), solr (upserts), kafka (the transaction)",
            ["phase"],
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self.latency = Histogram(
            f"{name}_produce_to_tagged_seconds",
            "from the producer's timestamp to the image's tag, per tagged image",
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.solr_retries = counter("solr_retries", "Solr write attempts retried (Solr away)")
        self.solr_outage = counter(
            "solr_outage_seconds", "seconds spent waiting for an unavailable Solr"
        )
        self.last_batch = gauge(
            "last_batch_timestamp_seconds", f"when the last of the {unit} ended"
        )
        self.model = Info(f"{name}_model", "the model bundle in use", registry=self.registry)
        for outcome in OUTCOMES:
            self.records.labels(outcome)
        for phase in PHASES:
            self.phase_seconds.labels(phase)

    def serve(self, host: str, port: int | None) -> int | None:
        """Serve ``/metrics`` on host:port (0: any free port) in a daemon thread; returns the
        port, or None (logged) when it is off or cannot listen."""
        if port is None:
            return None
        try:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error("no metrics endpoint: cannot listen on %s:%d (%s)", host, port, exc)
            return None
        port = int(self.server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, port)
        return port

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def batch_written(self, written: Written) -> None:
        """Record what one batch wrote (``pipeline.write_outputs``): counts by outcome, dead
        letters by ``stage/reason``, the tagged images' produce->tag latencies, the phase
        durations, Solr's retries and stalls. The batch's own
        duration is the caller's to observe (``batch_seconds``): the stream takes Spark's
        (planning and the checkpoint included), the backfill its round's wall time."""
        self.batches.inc()
        for outcome in OUTCOMES:
            self.records.labels(outcome).inc(written.counts.get(outcome, 0))
        self.quarantined.inc(written.counts.get("quarantined", 0))
        self.duplicates.inc(written.counts.get("duplicate", 0))
        for cause, n in written.dead_reasons.items():
            stage, _, reason = cause.partition("/")
            self.dead.labels(stage, reason or "unknown").inc(n)
        for ms in written.latencies_ms:
            self.latency.observe(max(ms, 0) / 1000)
        for phase, seconds in written.phases.items():
            self.phase_seconds.labels(phase).observe(seconds)
        self.solr_retries.inc(written.solr_retries)
        self.solr_outage.inc(written.solr_stalled_s)
        self.last_batch.set(time.time())

    def model_in_use(self, version: str) -> None:
        self.model.info({"version": version})

    def _gauge(self, what: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(f"{self._name}_{what}", doc, list(labels), registry=self.registry)

    def _counter(self, what: str, doc: str) -> Counter:
        return Counter(f"{self._name}_{what}", doc, registry=self.registry)


class StreamMetrics(JobMetrics):
    job = "stream"

    def __init__(self) -> None:
        super().__init__()
        self.lag = self._gauge(
            "input_lag_records", "records behind the topic's end, per partition", ["partition"]
        )
        self.restarts = self._counter("query_restarts", "queries restarted after a failure")
        self.spark_steps = Histogram(
            "imagetag_stream_trigger_step_seconds",
            "Spark's own timing of a micro-batch's steps (its progress event's durationMs: "
            "latestOffset, queryPlanning, walCommit, addBatch = our foreachBatch, commitOffsets)",
            ["step"],
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )

    def input_lag(self, by_partition: Mapping[str, int]) -> None:
        for partition, behind in by_partition.items():
            self.lag.labels(partition).set(behind)


class BackfillMetrics(JobMetrics):
    job = "backfill"

    def __init__(self) -> None:
        super().__init__()
        # splits, not records: a split of image files has no record count until it is read
        self.planned = self._gauge("planned_splits", "splits in the backfill's plan")
        self.done = self._gauge("done_splits", "splits of the plan done (this run and before)")


_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "info": ("_info",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def names(job: type[JobMetrics]) -> frozenset[str]:
    """Every sample name a job's endpoint serves (counters as ``_total``, histograms as
    ``_bucket``/``_sum``/``_count``): what a dashboard may query."""
    return frozenset(
        family.name + suffix
        for family in job().registry.collect()
        for suffix in _SUFFIXES[family.type]
    )


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A ``/metrics`` page -> {sample name: [(labels, value), ...]} (for ``imagetag status``
    and the tests)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out
