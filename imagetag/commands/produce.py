"""``imagetag produce SOURCE...``: send images to Kafka, with a progress bar and a summary.

Refused inputs (empty, oversize, not an image, unreadable) are counted by reason and the run
goes on; the exit code is 1 when any message failed to deliver, 0 otherwise (refusals alone
do not fail the run: they never reached Kafka, and the summary lists them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imagetag.commands import _common
from imagetag.errors import ImagetagError
from imagetag.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="folder, image file, fashion-mnist[:train|test], CIFAR batch/folder, "
        "Tiny Images .bin, Hadoop SequenceFile, idx file; indexable ones take [start:stop]",
    )
    parser.add_argument(
        "--label-from",
        metavar="folder|csv:PATH",
        help="label folder images with their parent folder's name, or from a path,label CSV",
    )
    parser.add_argument(
        "--glob",
        action="append",
        metavar="PATTERN",
        help="only files under a folder matching this glob (repeatable; default **/*)",
    )
    parser.add_argument("--topic", help="topic to write to (default: kafka.topic_images)")
    parser.add_argument("--limit", type=int, metavar="N", help="stop after N inputs in all")
    _common.add_output_arguments(parser, json_help="print the summary as JSON on stdout")


def _label_from(value: str | None) -> str | Path | None:
    if value is None:
        return None
    if value == "folder":
        return "folder"
    if value.startswith("csv:") and len(value) > 4:
        return Path(value[4:])
    raise ImagetagError(f"--label-from must be 'folder' or 'csv:PATH', not {value!r}")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from producers.producer import ImageProducer, ImageRefused
    from producers.sources import SourceItem, open_source

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO
    if args.limit is not None and args.limit < 0:
        raise ImagetagError("--limit must be >= 0")
    label_from = _label_from(args.label_from)
    patterns = tuple(args.glob or ("**/*",))
    sources = [open_source(spec, label_from=label_from, patterns=patterns) for spec in args.sources]
    hints = [s.len_hint() for s in sources]
    total = sum(h for h in hints if h is not None) if all(h is not None for h in hints) else None
    if args.limit is not None:
        total = args.limit if total is None else min(total, args.limit)

    def items() -> Iterator[SourceItem]:
        emitted = 0
        for source in sources:
            for item in source:
                if args.limit is not None and emitted >= args.limit:
                    return
                emitted += 1
                yield item

    started = time.monotonic()
    bar = tqdm(
        total=total,
        unit="img",
        file=sys.stderr,
        disable=args.no_progress or None,  # None: only on a terminal
        dynamic_ncols=True,
        desc="produce",
    )
    last_postfix = 0.0
    with ImageProducer(settings, topic=args.topic) as producer:
        for item in items():
            # A refusal is counted in producer.stats.refused; the summary lists them.
            with contextlib.suppress(ImageRefused):
                producer.send(
                    item.image, label=item.label, metadata=item.metadata, source=item.source
                )
            bar.update(1)
            now = time.monotonic()
            if now - last_postfix > 0.5:
                last_postfix = now
                bar.set_postfix_str(_rate(producer.stats.bytes_sent, now - started), refresh=False)
        producer.flush()
    elapsed = time.monotonic() - started
    bar.set_postfix_str(_rate(producer.stats.bytes_sent, elapsed))
    bar.close()

    summary = _summary(producer.stats.as_dict(), elapsed, producer.topic)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(_format(summary))
    return 1 if summary["failed"] else 0


def _rate(bytes_sent: int, elapsed: float) -> str:
    return f"{bytes_sent / 1e6 / max(elapsed, 1e-9):.1f} MB/s"


def _summary(stats: dict[str, Any], elapsed: float, topic: str) -> dict[str, Any]:
    return {
        "topic": topic,
        "sent": stats["sent"],
        "refused": stats["refused_total"],
        "refused_by_reason": stats["refused"],
        "failed": stats["failed"] + (stats["queued"] - stats["sent"] - stats["failed"]),
        "failed_by_reason": stats["failures"],
        "bytes": stats["bytes_sent"],
        "seconds": round(elapsed, 3),
        "images_per_s": round(stats["sent"] / elapsed, 1) if elapsed > 0 else None,
        "mb_per_s": round(stats["bytes_sent"] / 1e6 / elapsed, 2) if elapsed > 0 else None,
    }


def _format(summary: dict[str, Any]) -> str:
    def reasons(counts: dict[str, int]) -> str:
        if not counts:
            return ""
        return " (" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")"

    return "\n".join(
        [
            f"topic:    {summary['topic']}",
            f"sent:     {summary['sent']}  ({summary['bytes'] / 1e6:.1f} MB in "
            f"{summary['seconds']:.1f} s, {summary['images_per_s']} img/s, "
            f"{summary['mb_per_s']} MB/s)",
            f"refused:  {summary['refused']}{reasons(summary['refused_by_reason'])}",
            f"failed:   {summary['failed']}{reasons(summary['failed_by_reason'])}",
        ]
    )
