"""``imagetag train``: train a model bundle from a labelled corpus (see ``batch/train.py``).

The parser lives here and turns the arguments into the job's ``TrainOptions``; the job
(``batch.train.train``) returns a ``TrainResult`` whose manifest ``--json`` prints.
``imagetag submit train ...`` runs this same command through ``spark-submit``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from batch.train import (
    DEFAULT_FEATURIZER,
    FEATURIZER_NAMES,
    PROMOTE_POLICIES,
    TrainOptions,
    train,
)
from imagetag.dictionary import NORMALIZATIONS, POOLINGS
from imagetag.errors import ConfigError
from imagetag.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``imagetag train``."""
    parser.add_argument(
        "--data",
        required=True,
        metavar="SOURCE",
        help="fashion-mnist | a CIFAR-10 batches folder | a class-per-folder tree | a path,label CSV",
    )
    parser.add_argument("--featurizer", default=DEFAULT_FEATURIZER, choices=FEATURIZER_NAMES)
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
    parser.add_argument("--pooling", default="sum", choices=POOLINGS)
    parser.add_argument("--normalization", default="sqrt", choices=NORMALIZATIONS)
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
    parser.set_defaults(promote=PROMOTE_POLICIES[0])
    parser.add_argument("--json", action="store_true", help="print the final manifest as JSON")


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The job's options from parsed arguments. Raises ConfigError for a ``--featurizer-param``
    that is not NAME=VALUE and for out-of-range values."""
    params: dict[str, Any] = {}
    for item in args.featurizer_param:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--featurizer-param expects NAME=VALUE, got {item!r}")
        try:
            params[name.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[name.strip().replace("-", "_")] = value
    return TrainOptions(
        data=args.data,
        featurizer=args.featurizer,
        featurizer_params=params,
        k=args.k,
        levels=args.levels,
        neighbors=args.neighbors,
        pooling=args.pooling,
        normalization=args.normalization,
        trees=args.trees,
        depth=args.depth,
        max_bins=args.max_bins,
        min_instances=args.min_instances,
        subsampling=args.subsampling,
        sample_size=args.sample_size,
        kmeans_iterations=args.kmeans_iterations,
        limit=args.limit,
        test_fraction=args.test_fraction,
        promote=args.promote,
        seed=args.seed,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Train (per-stage progress and the metrics go to stdout as it runs); with ``--json``,
    print the final manifest. 0 on success."""
    result = train(settings, options_from_args(args))
    if args.json:
        print(json.dumps(result.manifest, indent=2, sort_keys=True))
    return 0
