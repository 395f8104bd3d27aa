"""``imagetag retrain [--every DURATION]``: train on the labelled corpus, promote only if it
beats CURRENT on the held-out split, then re-tag (see batch/retrain.py).

The parser lives here (light imports); the job, which imports Spark, only when it runs.
"""

from __future__ import annotations

import argparse
import re

from imagetag.settings import Settings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``6h``, ``1d``, ``1w``; ArgumentTypeError else."""
    match = _DURATION.match(value)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration (like 30m, 6h, 1d): {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared by ``imagetag retrain`` and ``spark-submit batch/retrain.py``."""
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
        choices=["older", "review", "all", "none"],
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
    training.add_argument("--featurizer", choices=["dense-sift", "sift", "orb"])
    training.add_argument("--seed", type=int)
    parser.add_argument("--json", action="store_true", help="print each run's result as JSON")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar for the re-tag backfill"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from batch.retrain import run_command

    return run_command(args, settings)
