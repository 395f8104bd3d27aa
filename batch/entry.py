"""The ``spark-submit`` entry point the batch jobs share: arguments, settings, one error line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from imagetag.errors import ImagetagError
from imagetag.settings import Settings


def job_main(
    prog: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run_command: Callable[[argparse.Namespace, Settings], int],
    argv: list[str] | None = None,
    *,
    log: bool = True,
) -> int:
    """Parse ``argv`` (the job's own options plus ``--config``), load the settings (environment
    and ``imagetag.yaml``) and run; an ImagetagError is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or prog).splitlines()[0])
    parser.add_argument("--config", help="settings file (default: imagetag.yaml if present)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if log:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        return run_command(args, Settings.load(args.config))
    except ImagetagError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
