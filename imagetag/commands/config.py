"""``imagetag config``: print the effective settings as JSON, secrets masked."""

from __future__ import annotations

import argparse
import json

from imagetag.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace, settings: Settings) -> int:
    del args
    print(json.dumps(settings.public_dict(), indent=2, default=str))
    return 0
