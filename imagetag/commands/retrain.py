"""``imagetag retrain [--every DURATION]``: train on the labelled corpus, promote only if it
beats CURRENT on the held-out split, then re-tag (see batch/retrain.py).

The parser lives here and turns the arguments into the job's ``RetrainOptions``; the job
(``batch.retrain.run``) hands back each run's ``RetrainResult``, printed here as it comes.
``imagetag submit retrain ...`` runs this same command through ``spark-submit``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from batch import retrain as job
from batch.retrain import RETAG_MODES, RetrainOptions, RetrainResult
from batch.train import FEATURIZER_NAMES
from imagetag.commands import _common
from imagetag.durations import DurationError, parse_duration
from imagetag.settings import Settings

# Training knobs `imagetag retrain` passes through to TrainOptions (as `imagetag train` names them).
TRAIN_ARGUMENTS = ("k", "trees", "depth", "levels", "limit", "sample_size", "featurizer", "seed")

# argparse type of ``--every``: seconds.
_duration = _common.argument_type(
    functools.partial(parse_duration, bare_seconds=True),
    DurationError,
    "a duration (like 30m, 6h, 1d)",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``imagetag retrain``."""
    parser.add_argument(
        "--data",
        action="append",
        metavar="SOURCE",
        help="a training set: fashion-mnist, a CIFAR-10 batches folder, a class-per-folder "
        "tree or a path,label CSV (repeatable); archived labelled images are always added",
    )
    parser.add_argument(
        "--no-archive-labels",
        action="store_true",
        help="do not add the archived images that carry a ground-truth label",
    )
    parser.add_argument(
        "--every",
        type=_duration,
        metavar="DURATION",
        help="run now and then every DURATION (30m, 6h, 1d) in the foreground",
    )
    parser.add_argument("--max-runs", type=int, metavar="N", help="with --every: stop after N")
    parser.add_argument(
        "--retag",
        choices=[*RETAG_MODES, "none"],
        default="all",
        help="after a promotion, re-tag Solr docs of older models (older), the review topic "
        "(review), both (all, the default) or nothing (none)",
    )
    parser.add_argument(
        "--force", action="store_true", help="train even if CURRENT was trained on this corpus"
    )
    training = parser.add_argument_group("training (as imagetag train)")
    training.add_argument("--k", type=int, help="visual words")
    training.add_argument("--trees", type=int, help="trees in the forest")
    training.add_argument("--depth", type=int, help="maximum tree depth")
    training.add_argument("--levels", type=int, help="spatial pyramid levels")
    training.add_argument("--limit", type=int, help="at most N images per split")
    training.add_argument("--sample-size", type=int, help="descriptors for KMeans")
    training.add_argument("--featurizer", choices=FEATURIZER_NAMES)
    training.add_argument("--seed", type=int)
    _common.add_output_arguments(
        parser,
        json_help="print each run's result as JSON",
        progress_help="no progress bar for the re-tag backfill",
    )


def options_from_args(args: argparse.Namespace) -> RetrainOptions:
    """The job's options from parsed arguments. Raises ConfigError for out-of-range values."""
    train: dict[str, Any] = {}
    for name in TRAIN_ARGUMENTS:
        value = getattr(args, name, None)
        if value is not None:
            train[name] = value
    return RetrainOptions(
        data=tuple(args.data or ()),
        archive_labels=not args.no_archive_labels,
        retag=None if args.retag == "none" else args.retag,
        train=train,
        force=args.force,
        progress=_common.progress_option(args),
        every_s=args.every,
        max_runs=args.max_runs,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Retrain once, or every ``--every``, printing each run's result as it finishes. Exit
    code 1 when a scheduled run failed (it was logged and the schedule went on), else 0."""

    def show(result: RetrainResult) -> None:
        _common.print_summary(result, args.json)
        sys.stdout.flush()

    summary = job.run(settings, options_from_args(args), on_result=show)
    return 1 if summary.failures else 0
