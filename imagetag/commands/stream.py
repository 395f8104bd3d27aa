"""``imagetag stream``: run the streaming tagging job until SIGTERM (see streaming/job.py).

``imagetag submit stream`` runs this same command through ``spark-submit``.
"""

from __future__ import annotations

import argparse

from imagetag.settings import Settings
from streaming import job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=None,
        help="give up after this many restarts of a failed query (default: never)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    return job.run(settings, max_restarts=args.max_restarts)
