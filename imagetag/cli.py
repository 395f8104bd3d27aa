"""The ``imagetag`` command line.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and
``run(args, settings) -> int``; the table below is the only place that lists them, and a
module is imported only when its command runs (so ``imagetag stack up`` never imports Spark).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from imagetag.errors import ImagetagError
from imagetag.settings import Settings

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("imagetag.commands.stack", "start, stop or inspect the local Kafka + Solr stack"),
    "init": ("imagetag.commands.init", "create the Kafka topics and the Solr collection + alias"),
    "stream": (
        "imagetag.commands.stream",
        "run the streaming tagging job (Kafka -> Spark -> Solr)",
    ),
    "search": ("imagetag.commands.search", "query Solr: images with a tag, or similar to an image"),
    "config": ("imagetag.commands.config", "print the effective settings (secrets masked)"),
    "produce": ("imagetag.commands.produce", "send images (folders, datasets) to Kafka"),
    "backfill": (
        "imagetag.commands.backfill",
        "tag a historical corpus with Spark (archive, folder, datasets, Kafka); re-tag",
    ),
    "train": ("imagetag.commands.train", "train a model bundle (dictionary + forest) on a corpus"),
    "model": ("imagetag.commands.model", "list, show or promote model bundles in the model store"),
    "retrain": (
        "imagetag.commands.retrain",
        "retrain on the labelled corpus, promote if better, re-tag (once or --every)",
    ),
    "reindex": (
        "imagetag.commands.reindex",
        "rebuild the Solr index into a new collection, then switch the alias (blue/green)",
    ),
    "dlq": (
        "imagetag.commands.dlq",
        "replay dead letters: send their original bytes back to the input topic",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagetag", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="settings file (default: imagetag.yaml if present)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        _lazy_add_arguments(module_name, command_parser)
    return parser


def _lazy_add_arguments(module_name: str, parser: argparse.ArgumentParser) -> None:
    module = importlib.import_module(module_name)
    module.add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
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
