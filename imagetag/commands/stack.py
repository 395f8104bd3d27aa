"""``imagetag stack up | down | status``: the embedded local Kafka + Solr."""

from __future__ import annotations

import argparse
import time

from imagetag.settings import Settings
from imagetag.stack import LocalStack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status"])


def run(args: argparse.Namespace, settings: Settings) -> int:
    stack = LocalStack(settings)
    if args.action == "up":
        started = time.monotonic()
        statuses = stack.up()
        for status in statuses:
            print(status.line())
        print(f"stack up in {time.monotonic() - started:.1f}s (data and logs in {stack.home})")
        return 0
    if args.action == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    statuses = stack.status()
    for status in statuses:
        print(status.line())
    return 0 if all(s.running for s in statuses) else 1
