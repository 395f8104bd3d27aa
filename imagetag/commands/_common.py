"""What several commands share: argparse types built from the core's parsers, the backfill
``SOURCE`` argument, the output options of the long-running jobs (``--json``,
``--no-progress``) and how a job's summary is printed.

One definition each, so the commands cannot drift apart in spelling, defaults or output. Not a
command itself (``imagetag.cli`` lists those): nothing here is imported unless a command that
uses it runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

NO_PROGRESS_HELP = "no progress bar (it goes to stderr)"


def argument_type(
    parse: Callable[[str], T], error: type[Exception], expected: str
) -> Callable[[str], T]:
    """An argparse ``type`` from a parser of the core: its ``error`` becomes argparse's usage
    error "not <expected>: 'value'" (exit code 2) instead of a traceback."""

    def convert(value: str) -> T:
        try:
            return parse(value)
        except error as exc:
            raise argparse.ArgumentTypeError(f"not {expected}: {value!r}") from exc

    return convert


def add_source_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The optional positional ``SOURCE`` of the jobs that read through the backfill readers
    (backfill, reindex): the stream's raw archive unless told otherwise."""
    parser.add_argument("source", nargs="?", default="archive", metavar="SOURCE", help=help_text)


def add_output_arguments(
    parser: argparse.ArgumentParser, *, json_help: str, progress_help: str = NO_PROGRESS_HELP
) -> None:
    """``--json`` (the summary as JSON instead of text) and ``--no-progress``: every
    long-running command offers both, under the same names."""
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument("--no-progress", action="store_true", help=progress_help)


def progress_option(args: argparse.Namespace) -> bool | None:
    """The jobs' ``progress`` option from ``--no-progress``: False turns the bar off, None
    leaves it to the job (a bar only when stderr is a terminal)."""
    return False if args.no_progress else None


class Summary(Protocol):
    """What a job returns for the command to print (``BackfillSummary``, ``ReindexResult``,
    ``RetrainResult``)."""

    def as_dict(self) -> dict[str, Any]: ...

    def format(self) -> str: ...


def print_summary(summary: Summary, as_json: bool) -> None:
    """``summary`` on stdout: one JSON line (sorted keys, so runs diff cleanly) with
    ``--json``, else its text."""
    print(json.dumps(summary.as_dict(), sort_keys=True) if as_json else summary.format())
