"""``imagetag backfill SOURCE``: tag a historical corpus with Spark (see batch/backfill/).

The parser lives here and turns the arguments into the job's ``BackfillOptions``; the job
(``batch.backfill.run``) returns a ``BackfillSummary``, printed here.
``imagetag submit backfill ...`` runs this same command through ``spark-submit``.
"""

from __future__ import annotations

import argparse
import datetime as dt

from batch import backfill as job
from batch.backfill import KINDS, RETAG_MODES, BackfillOptions
from imagetag.commands import _common
from imagetag.settings import Settings

# argparse type of ``--since``.
parse_date = _common.argument_type(dt.date.fromisoformat, ValueError, "a date (YYYY-MM-DD)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``imagetag backfill``."""
    _common.add_source_argument(
        parser,
        "archive[:PATH] (default: the stream's raw archive), a folder, Parquet, "
        "SequenceFile(s), CIFAR batch(es), Tiny Images .bin, or kafka[:TOPIC]",
    )
    parser.add_argument("--format", dest="kind", choices=KINDS, help="source format (sniffed)")
    parser.add_argument(
        "--since", type=parse_date, metavar="DATE", help="archive: only ingest_date >= DATE"
    )
    parser.add_argument(
        "--retag",
        choices=RETAG_MODES,
        help="re-tag archived images: Solr docs not tagged by CURRENT (older), "
        "the review topic's images (review), or both (all)",
    )
    parser.add_argument(
        "--state", metavar="DIR", help="progress folder (default: one per source and options)"
    )
    parser.add_argument("--fresh", action="store_true", help="forget earlier progress first")
    parser.add_argument(
        "--split-size",
        type=int,
        metavar="N",
        help="records (files, for a folder) per split (default 5000; 1000 files)",
    )
    parser.add_argument(
        "--split-mb", type=int, default=64, metavar="MB", help="Parquet/archive split size"
    )
    parser.add_argument(
        "--splits-per-round",
        type=int,
        metavar="N",
        help="splits per Spark job (default: Spark's default parallelism)",
    )
    parser.add_argument("--max-splits", type=int, metavar="N", help="stop after N splits")
    parser.add_argument(
        "--glob", metavar="PATTERN", help="folder: only file names matching (pathGlobFilter)"
    )
    parser.add_argument(
        "--label-from", choices=["folder"], help="folder: label with the parent folder's name"
    )
    parser.add_argument(
        "--bytes-column", default="image", help="Parquet: the image bytes column (image)"
    )
    parser.add_argument("--label-column", help="Parquet: a ground-truth label column")
    archive = parser.add_mutually_exclusive_group()
    archive.add_argument(
        "--archive",
        dest="archive",
        action="store_true",
        default=None,
        help="also write the images to the archive (default for files, not for kafka)",
    )
    archive.add_argument(
        "--no-archive", dest="archive", action="store_false", help="do not archive them"
    )
    parser.add_argument(
        "--batch-size", type=int, default=500, metavar="N", help="images per tag_batch call"
    )
    _common.add_output_arguments(parser, json_help="print the summary as JSON")


def options_from_args(args: argparse.Namespace) -> BackfillOptions:
    """The job's options from parsed arguments. Raises ConfigError for out-of-range values."""
    return BackfillOptions(
        source=args.source,
        kind=args.kind,
        since=args.since,
        retag=args.retag,
        state_dir=args.state,
        split_size=args.split_size,
        split_bytes=args.split_mb * 1024 * 1024,
        splits_per_round=args.splits_per_round,
        max_splits=args.max_splits,
        glob=args.glob,
        label_from_folder=args.label_from == "folder",
        bytes_column=args.bytes_column,
        label_column=args.label_column,
        archive=args.archive,
        batch_size=args.batch_size,
        progress=_common.progress_option(args),
        fresh=args.fresh,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the backfill and print its summary (it says how many splits are left when
    ``--max-splits`` stopped it early). Returns the exit code, 0."""
    _common.print_summary(job.run(settings, options_from_args(args)), args.json)
    return 0
