"""``imagetag reindex``: blue/green rebuild of the Solr index (see batch/reindex.py).

The parser lives here and turns the arguments into the job's ``ReindexOptions``; the job
(``batch.reindex.run``) returns a ``ReindexResult``, printed here.
``spark-submit submit.py reindex ...`` runs this same command.
"""

from __future__ import annotations

import argparse
import json

from batch import reindex as job
from batch.reindex import ReindexOptions
from imagetag.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``imagetag reindex``."""
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


def options_from_args(args: argparse.Namespace) -> ReindexOptions:
    """The job's options from parsed arguments. Raises ConfigError for out-of-range values."""
    return ReindexOptions(
        source=args.source,
        drop_old=args.drop_old,
        fresh=args.fresh,
        min_fraction=args.min_fraction,
        max_splits=args.max_splits,
        progress=False if args.no_progress else None,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild and switch; print the result. Exit code 0 when the alias was switched, 1 when
    the rebuild is unfinished (``--max-splits``) and the alias stayed."""
    result = job.run(settings, options_from_args(args))
    print(json.dumps(result.as_dict(), sort_keys=True) if args.json else result.format())
    return 0 if result.switched else 1
