"""The ``imagetag`` command line.

The top of the project: nothing imports it. Each sub-command lives in its own module
(``imagetag.commands.*``) exposing ``add_arguments(parser)`` and ``run(args, settings) -> int``:
it owns the command's parser, turns the parsed arguments into its job's typed options, runs the
job and prints the job's typed summary. The table below is the only place that lists them, and a module is imported only
when its command runs (so ``imagetag stack up`` imports neither Spark nor the jobs).
``imagetag submit COMMAND ...`` runs this same ``main`` through ``spark-submit`` (``imagetag.cluster``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Collection, Sequence

from imagetag.errors import ImagetagError
from imagetag.settings import Settings

# command name -> one-line help; the command is the module imagetag.commands.<name>
COMMANDS: dict[str, str] = {
    "stack": "start, stop or inspect the local Kafka + Solr stack",
    "init": "create the Kafka topics and the Solr collection + alias",
    "stream": "run the streaming tagging job (Kafka -> Spark -> Solr)",
    "search": "query Solr: images with a tag, or similar to an image",
    "status": "one screen: services, the stream (rate, lag), Solr documents, dead letters, model",
    "config": "print the effective settings (secrets masked)",
    "produce": "send images (folders, datasets) to Kafka",
    "backfill": "tag a historical corpus with Spark (archive, folder, datasets, Kafka); re-tag",
    "train": "train a model bundle (dictionary + forest) on a corpus",
    "model": "list, show or promote model bundles in the model store",
    "retrain": "retrain on the labelled corpus, promote if better, re-tag (once or --every)",
    "reindex": "rebuild the Solr index into a new collection, then switch the alias (blue/green)",
    "dlq": "replay dead letters: send their original bytes back to the input topic",
    "submit": "run a Spark job (stream, backfill, train, ...) through spark-submit on spark.master",
    "web": "serve the web app: search with facets and a confidence slider, images, status",
}


def command_module(name: str) -> str:
    """The module of the sub-command ``name``: each lives in its own, named after it, so the
    table above need not (and cannot wrongly) spell the module out."""
    return f"imagetag.commands.{name}"


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the whole command line. Only the sub-commands in ``commands`` (default:
    all) get their arguments, and so have their module imported; ``main`` passes just the one
    it runs."""
    parser = argparse.ArgumentParser(prog="imagetag", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="settings file (default: imagetag.yaml if present)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module_name = command_module(name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        if commands is None or name in commands:
            importlib.import_module(module_name).add_arguments(command_parser)
    return parser


def requested_command(argv: Sequence[str]) -> list[str]:
    """The sub-command ``argv`` names (as a list of one), or none: the first word that is not
    a global option (``--config`` takes the next word)."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return [word] if word in COMMANDS else []
    return []


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), load the settings and run the command.
    Returns its exit code; an ImagetagError is one line on stderr and exit code 2."""
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(requested_command(words))
    args = parser.parse_args(words)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:  # py4j logs every gateway command and connection at INFO
        logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        settings = Settings.load(args.config)
        module = importlib.import_module(args._module)
        return int(module.run(args, settings) or 0)
    except ImagetagError as exc:
        print(f"imagetag {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
