"""``imagetag reindex``: blue/green rebuild of the Solr index (see batch/reindex.py).

The parser lives here and turns the arguments into the job's ``ReindexOptions``; the job
(``batch.reindex.run``) returns a ``ReindexResult``, printed here.
``imagetag submit reindex ...`` runs this same command through ``spark-submit``.
"""

from __future__ import annotations

import argparse

from batch import reindex as job
from batch.reindex import ReindexOptions
from imagetag.commands import _common
from imagetag.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``imagetag reindex``."""
    _common.add_source_argument(parser, "what to index (default: the archive); any backfill SOURCE")
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
    _common.add_output_arguments(parser, json_help="print the result as JSON")


def options_from_args(args: argparse.Namespace) -> ReindexOptions:
    """The job's options from parsed arguments. Raises ConfigError for out-of-range values."""
    return ReindexOptions(
        source=args.source,
        drop_old=args.drop_old,
        fresh=args.fresh,
        min_fraction=args.min_fraction,
        max_splits=args.max_splits,
        progress=_common.progress_option(args),
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild and switch; print the result. Exit code 0 when the alias was switched, 1 when
    the rebuild is unfinished (``--max-splits``) and the alias stayed."""
    result = job.run(settings, options_from_args(args))
    _common.print_summary(result, args.json)
    return 0 if result.switched else 1
