"""``imagetag reindex``: blue/green rebuild of the Solr index (see batch/reindex.py).

The parser lives here (light imports); the job, which imports Spark, only when it runs.
"""

from __future__ import annotations

import argparse

from imagetag.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared by ``imagetag reindex`` and ``spark-submit batch/reindex.py``."""
    parser.add_argument(
        "source",
        nargs="?",
        default="archive",
        metavar="SOURCE",
        help="what to index (default: the archive); any backfill SOURCE",
    )
    parser.add_argument(
        "--drop-old", action="store_true", help="delete the old collection after the switch"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="discard an unfinished rebuild and start over"
    )
    parser.add_argument(
        "--min-fraction",
        type=float,
        default=0.9,
        metavar="F",
        help="switch only if the new collection holds at least F x the old one's documents "
        "(default 0.9; 0 to switch whatever it holds)",
    )
    parser.add_argument("--max-splits", type=int, metavar="N", help="stop after N splits")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it goes to stderr)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from batch.reindex import run_command

    return run_command(args, settings)
