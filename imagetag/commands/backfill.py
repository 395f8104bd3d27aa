"""``imagetag backfill SOURCE``: tag a historical corpus with Spark (see batch/backfill.py).

The parser lives here (light imports: the CLI builds every command's parser); the job, which
imports Spark and pandas, is imported only when the command runs. ``spark-submit
batch/backfill.py`` uses the same parser.
"""

from __future__ import annotations

import argparse
import datetime as dt

from imagetag.settings import Settings

KINDS = ("archive", "folder", "parquet", "sequencefile", "cifar", "tiny", "kafka")
RETAG_MODES = ("older", "review", "all")


def parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        nargs="?",
        default="archive",
        metavar="SOURCE",
        help="archive[:PATH] (default: the stream's raw archive), a folder, Parquet, "
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
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it goes to stderr)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from batch.backfill import run_command

    return run_command(args, settings)
