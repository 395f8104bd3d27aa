"""``imagetag dlq replay [--reason R] [--stage S] [--since T] [--dry-run] [--json]``: send the
original bytes of chosen dead letters back to the input topic (``producers.replay``).

Prints a table of counts by (stage, reason), or a JSON summary with ``--json``. The exit code
is 1 when any replayed record failed to deliver, 0 otherwise (skipped letters never reached
Kafka: the table says why).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from imagetag.settings import Settings

if TYPE_CHECKING:
    from producers.replay import ReplaySummary


def _since(value: str) -> int:
    from producers.replay import ReplayOptionsError, parse_since

    try:
        return parse_since(value)
    except ReplayOptionsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    replay = actions.add_parser(
        "replay",
        help="send chosen dead letters' original bytes back to the input topic",
        description="Send the original key and value of chosen dead letters back to the input "
        "topic (kafka.topic_images), with the header imagetag.replay=<dlq topic>:<partition>:"
        "<offset>. Letters of stage index and letters without a value are counted and skipped.",
    )
    replay.add_argument(
        "--reason",
        action="append",
        default=[],
        metavar="R",
        help="only letters with this reason, e.g. not_an_image (repeatable; default: any)",
    )
    replay.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="S",
        help="only letters failed at this stage, e.g. decode (repeatable; default: any)",
    )
    replay.add_argument(
        "--since",
        type=_since,
        metavar="T",
        help="only letters that failed at or after T: an ISO date/time (UTC unless it has an "
        "offset) or a duration back from now (30m, 2h, 1d)",
    )
    replay.add_argument("--dry-run", action="store_true", help="count, send nothing")
    replay.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from producers.replay import ReplayOptions, replay_dead_letters

    options = ReplayOptions(
        reasons=tuple(args.reason),
        stages=tuple(args.stage),
        since_ms=args.since,
        dry_run=args.dry_run,
    )
    summary = replay_dead_letters(settings, options)
    if args.json:
        print(json.dumps(summary.as_dict(), sort_keys=True))
    else:
        print(format_summary(summary))
    return 1 if summary.total("failed") else 0


def format_summary(summary: ReplaySummary) -> str:
    """The human summary: a header, one row per (stage, reason), totals, why letters were
    skipped."""
    from producers.replay import SKIP_EXPLANATIONS

    mode = " (dry run: nothing sent)" if summary.dry_run else ""
    lines = [
        f"{summary.dlq_topic} -> {summary.topic}{mode}",
        f"read {summary.read} records: {summary.total('matched')} matched the filters, "
        f"{summary.filtered_out} filtered out, {summary.not_dead_letters} not DeadLetters",
    ]
    if not summary.groups:
        return "\n".join(lines)
    sent_title = "would send" if summary.dry_run else "sent"
    rows = [["stage", "reason", "matched", sent_title, "failed", "skipped"]]
    skipped = summary.skipped
    for (stage, reason), counts in sorted(summary.groups.items()):
        rows.append(
            [
                stage,
                reason,
                str(counts.matched),
                str(counts.replayable if summary.dry_run else counts.sent),
                str(counts.failed),
                _skipped_cell(sum(counts.skipped.values()), counts.skipped),
            ]
        )
    total_sent = summary.total("replayable" if summary.dry_run else "sent")
    rows.append(
        [
            "total",
            "",
            str(summary.total("matched")),
            str(total_sent),
            str(summary.total("failed")),
            _skipped_cell(sum(skipped.values()), skipped),
        ]
    )
    if summary.dry_run:  # nothing was sent, so nothing failed
        rows = [row[:4] + row[5:] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {2, 3} if summary.dry_run else {2, 3, 4}

    def line(row: list[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    lines.append("")
    lines.append(line(rows[0]))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(row) for row in rows[1:-1])
    lines.append("  ".join("-" * w for w in widths))
    lines.append(line(rows[-1]))
    if summary.failures:
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(summary.failures.items()))
        lines.append(f"delivery failures: {failed}")
    for why in sorted(skipped):
        lines.append(f"skipped {why}: {SKIP_EXPLANATIONS.get(why, why)}")
    return "\n".join(lines)


def _skipped_cell(total: int, by_why: dict[str, int]) -> str:
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{k}: {v}" for k, v in sorted(by_why.items())) + ")"
