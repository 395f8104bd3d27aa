"""``imagetag submit [--print] JOB ...``: run a Spark job through ``spark-submit`` with the
project's code shipped as a zip (``--py-files``) and the connector jars (``--jars``); see
``imagetag.cluster``."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from imagetag.errors import ConfigError
from imagetag.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the spark-submit command (after building the code zip) instead of running it",
    )
    parser.add_argument(
        "--dist", help="folder for the code zip and the launcher (default: <stack.home>/dist)"
    )
    parser.add_argument(
        "job",
        nargs=argparse.REMAINDER,
        metavar="JOB ...",
        help="the imagetag command to run: stream, backfill, train, retrain or reindex, "
        "with its arguments",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from imagetag.cluster import (
        SUBMITTABLE,
        build_code_zip,
        run_submitted,
        submit_command,
        submit_env,
    )

    if not args.job or args.job[0] not in SUBMITTABLE:
        raise ConfigError(f"submit runs one of {', '.join(SUBMITTABLE)}, not {args.job[:1]}")
    folder = Path(args.dist) if args.dist else settings.stack.home / "dist"
    command = submit_command(settings, list(args.job), build_code_zip(folder))
    if args.print_only:
        print(shlex.join(command))
        return 0
    return run_submitted(command, submit_env(settings))
