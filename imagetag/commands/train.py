"""``imagetag train``: train a model bundle from a labelled corpus (see ``batch/train.py``).

This module only declares the arguments (the CLI imports it to build its parser); the job
itself, and everything heavy it imports, loads when the command runs.
"""

from __future__ import annotations

import argparse

from imagetag.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``imagetag train`` and ``spark-submit batch/train.py``."""
    parser.add_argument(
        "--data",
        required=True,
        metavar="SOURCE",
        help="fashion-mnist | a CIFAR-10 batches folder | a class-per-folder tree | a path,label CSV",
    )
    parser.add_argument("--featurizer", default="dense-sift", choices=["dense-sift", "sift", "orb"])
    parser.add_argument(
        "--featurizer-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="featurizer parameter (JSON value), e.g. step=4 or scales=[3,5]; repeatable",
    )
    parser.add_argument("--k", type=int, default=256, help="visual words (default 256)")
    parser.add_argument("--levels", type=int, default=2, help="spatial pyramid levels (default 2)")
    parser.add_argument(
        "--neighbors",
        type=int,
        default=5,
        help="soft assignment over this many nearest words (1 = hard; default 5)",
    )
    parser.add_argument("--pooling", default="sum", choices=["count", "sum", "max"])
    parser.add_argument("--normalization", default="sqrt", choices=["none", "l1", "l2", "sqrt"])
    parser.add_argument("--trees", type=int, default=100, help="trees in the forest (default 100)")
    parser.add_argument("--depth", type=int, default=20, help="maximum tree depth (default 20)")
    parser.add_argument(
        "--max-bins", type=int, default=12, help="split candidates per feature (default 12)"
    )
    parser.add_argument(
        "--min-instances", type=int, default=3, help="minimum rows per leaf (default 3)"
    )
    parser.add_argument("--subsampling", type=float, default=1.0, help="bootstrap sample rate")
    parser.add_argument(
        "--sample-size", type=int, default=100_000, help="descriptors for KMeans (default 100k)"
    )
    parser.add_argument("--kmeans-iterations", type=int, default=15)
    parser.add_argument("--limit", type=int, help="at most N records per split (quick runs)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="folders/CSV only")
    parser.add_argument("--seed", type=int, default=1)
    promote = parser.add_mutually_exclusive_group()
    promote.add_argument(
        "--promote-if-better",
        dest="promote",
        action="store_const",
        const="if-better",
        help="make it CURRENT if it beats CURRENT on the held-out split (or there is none)",
    )
    promote.add_argument(
        "--promote",
        dest="promote",
        action="store_const",
        const="always",
        help="make it CURRENT whatever its score (the default)",
    )
    promote.add_argument(
        "--no-promote", dest="promote", action="store_const", const="never", help="never promote"
    )
    parser.set_defaults(promote="always")
    parser.add_argument("--json", action="store_true", help="print the final manifest as JSON")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from batch.train import run as run_training

    return run_training(args, settings)
