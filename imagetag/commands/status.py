"""``imagetag status [--json] [--timeout S] [--window S] [--scan-seconds S] [--scan-records N]``:
one screen with the services (up, version, address), the stream (alive, last batch, rate,
lag), Solr's documents by model version, the review and dead-letter counts and the current
model (``imagetag.status`` gathers it all, and says how and why).

``--json`` prints :meth:`imagetag.status.Status.as_dict` as one JSON line instead. The exit code
is 0 when Kafka, Solr and the stream are all up, 1 otherwise (2 for bad options, as for every
command): ``until imagetag status >/dev/null; do sleep 5; done`` waits for a working pipeline.
"""

from __future__ import annotations

import argparse
import json

from imagetag.commands.model import manifest_summary
from imagetag.settings import Settings
from imagetag.status import (
    GroupLag,
    ServiceState,
    Status,
    StatusOptions,
    TopicCount,
    by_count,
    format_duration,
    gather,
)

# Dead-letter reasons shown on the screen; the rest are summed on one line (all are in --json).
MAX_REASONS = 8
_LABEL_WIDTH = 15


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = StatusOptions()
    parser.add_argument("--json", action="store_true", help="print the status as one JSON line")
    parser.add_argument(
        "--timeout",
        type=float,
        default=defaults.timeout_s,
        metavar="S",
        help=f"seconds each service has to answer (default {defaults.timeout_s:g})",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=defaults.rate_window_s,
        metavar="S",
        help="seconds between the two scrapes of the stream's /metrics that give its rate "
        f"(default {defaults.rate_window_s:g})",
    )
    parser.add_argument(
        "--scan-seconds",
        type=float,
        default=defaults.scan_seconds,
        metavar="S",
        help="stop counting the review and dead-letter topics after S seconds each: the count "
        f"is then a lower bound (default {defaults.scan_seconds:g})",
    )
    parser.add_argument(
        "--scan-records",
        type=int,
        default=defaults.scan_records,
        metavar="N",
        help=f"... or after N records (default {defaults.scan_records:,})",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    options = StatusOptions(
        timeout_s=args.timeout,
        rate_window_s=args.window,
        scan_seconds=args.scan_seconds,
        scan_records=args.scan_records,
    )
    status = gather(settings, options)
    print(json.dumps(status.as_dict(), sort_keys=True) if args.json else format_status(status))
    return status.exit_code


def format_status(status: Status) -> str:
    """The screen: a verdict, the services table, then one block per section with labels in
    one column (sub-rows indented), like ``systemctl status``."""
    lines = [_verdict(status), "", *_services_table(status.services), ""]
    rows: list[tuple[str, str]] = []
    rows += _stream_rows(status)
    rows += _documents_rows(status)
    rows += _topic_rows("review", status.review)
    rows += _topic_rows("dead letters", status.dead_letters)
    rows += _model_rows(status)
    lines += [f"{label:<{_LABEL_WIDTH}}{value}".rstrip() for label, value in rows]
    return "\n".join(lines)


def _verdict(status: Status) -> str:
    if status.ok:
        return "ok: Kafka, Solr and the stream are up"
    down = [s.name for s in (status.kafka, status.solr) if not s.up]
    if not status.stream.alive:
        down.append("stream")
    return f"NOT OK: {', '.join(down)} down"


def _state(service: ServiceState) -> str:
    return {True: "up", False: "down", None: "unknown"}[service.up]


def _services_table(services: list[ServiceState]) -> list[str]:
    rows = [["SERVICE", "STATE", "VERSION", "ADDRESS", "DETAIL"]]
    rows += [[s.name, _state(s), s.version or "-", s.address, s.detail] for s in services]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    ]


def _n(value: int) -> str:
    return f"{value:,}"


def _partitions(values: dict[int, int | None]) -> str:
    return ", ".join(f"p{p} {'-' if n is None else _n(n)}" for p, n in sorted(values.items()))


def _group_lag(group: GroupLag | None) -> str:
    if group is None:
        return "not read"
    if group.error:
        return f"{group.error} [group {group.group}]"
    total = group.total()
    if total is None:
        return f"no offsets committed yet [group {group.group}]"
    return f"{_n(total)}: {_partitions(dict(group.behind()))} [group {group.group}]"


def _stream_rows(status: Status) -> list[tuple[str, str]]:
    stream = status.stream
    group_row = ("  lag (group)", _group_lag(stream.group))
    if not stream.alive:
        return [("stream", f"down: {stream.reason}"), group_row]
    alive = "alive"
    if stream.uptime_s is not None:
        alive += f", up {format_duration(stream.uptime_s)}"
    if stream.batches is not None:
        alive += f", {_n(stream.batches)} batches"
    if stream.reason:
        alive += f" ({stream.reason})"
    age = stream.last_batch_age_s
    rate = "-"
    if stream.rate_per_s is not None and stream.rate_window_s is not None:
        rate = f"{stream.rate_per_s:.1f} images/s over {stream.rate_window_s:.1f}s"
        if stream.rate_window_batches == 0:
            rate += " (no batch ended in it)"
    if stream.average_per_s is not None:
        rate += f" (average {stream.average_per_s:.1f}/s since start)"
    images = "  ".join(f"{_n(n)} {outcome}" for outcome, n in stream.records.items()) or "-"
    lag = f"{_n(sum(stream.lag.values()))}: {_partitions(dict(stream.lag))}" if stream.lag else "-"
    return [
        ("stream", alive),
        ("  last batch", "none yet" if age is None else f"{format_duration(age)} ago"),
        ("  rate", rate),
        ("  images", images),
        ("  model", stream.model_version or "-"),
        ("  lag (stream)", lag),
        group_row,
    ]


def _documents_rows(status: Status) -> list[tuple[str, str]]:
    docs = status.documents
    if docs.error is not None or docs.total is None:
        return [("solr docs", docs.error or "not counted")]
    where = docs.alias + (f" -> {', '.join(docs.collections)}" if docs.collections else "")
    counts = [
        (n, version or "(no version)") for version, n in sorted(docs.by_model_version.items())
    ]
    return [("solr docs", f"{_n(docs.total)} in {where}"), *_counted(counts)]


def _counted(counts: list[tuple[int, str]]) -> list[tuple[str, str]]:
    """Sub-rows of counts, right-aligned before their names (as ``uniq -c`` shows them)."""
    width = max((len(_n(n)) for n, _ in counts), default=0)
    return [("", f"{_n(n):>{width}}  {name}") for n, name in counts]


def _topic_rows(label: str, count: TopicCount) -> list[tuple[str, str]]:
    if count.error is not None and not count.records:
        return [(label, count.error)]
    if count.complete:
        head = f"{_n(count.records)} in {count.topic}"
    else:
        bound = f"; offsets span {_n(count.offsets)}" if count.offsets is not None else ""
        why = count.error or f"read stopped after {count.seconds:.1f}s"
        head = f"at least {_n(count.records)} in {count.topic} ({why}{bound})"
    ranked = by_count(count.by_reason)
    counts = [(n, f"{stage}/{reason}") for (stage, reason), n in ranked[:MAX_REASONS]]
    rest = ranked[MAX_REASONS:]
    if rest:
        counts.append((sum(n for _, n in rest), f"({len(rest)} more reasons)"))
    return [(label, head), *_counted(counts)]


def _model_rows(status: Status) -> list[tuple[str, str]]:
    model = status.model
    if model.error is not None or model.manifest is None:
        return [("model", model.error or f"none in {model.store}")]
    rows = [("model", f"{model.current} (CURRENT)"), ("", manifest_summary(model.manifest))]
    in_stream = status.stream.model_version
    if status.stream.alive and in_stream and in_stream != model.current:
        rows.append(("  in stream", f"{in_stream} (it switches to CURRENT at its next batch)"))
    return rows
