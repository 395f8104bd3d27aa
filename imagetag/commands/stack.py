"""``imagetag stack up | down | status``: the embedded local Kafka + Solr (and the Spark
standalone cluster when ``spark.master`` is on loopback). ``imagetag stack credentials
COMPONENT`` prints the settings a component of the secured stack runs with."""

from __future__ import annotations

import argparse
import shlex
import time

from imagetag.settings import Settings
from imagetag.stack import LocalStack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "credentials", "solr-security"])
    parser.add_argument(
        "component",
        nargs="?",
        help="with credentials: admin, stream, backfill, search or produce (the users it runs "
        "as); with solr-security: the ZooKeeper (host:port) to write Solr's security.json to",
    )
    parser.add_argument(
        "--only",
        choices=["solr", "kafka"],
        help="with credentials: print only this service's (a deployment securing only one)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    stack = LocalStack(settings)
    if args.action == "credentials":
        return _print_credentials(settings, args.component, args.only)
    if args.action == "solr-security":
        return _write_solr_security(settings, args.component)
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


def _print_credentials(settings: Settings, component: str | None, only: str | None) -> int:
    """``export IMAGETAG_...`` lines for ``eval``: the least-privileged Solr and Kafka users of
    ``component``. Printed only on this explicit request."""
    import json

    from imagetag.errors import ConfigError
    from imagetag.secure_stack import COMPONENTS, StackCredentials, kafka_client_options

    if not settings.stack.secure:
        raise ConfigError("the stack is not secured (stack.secure is off): no credentials")
    if component not in COMPONENTS:
        raise ConfigError(f"credentials for one of {', '.join(COMPONENTS)}, not {component!r}")
    credentials = StackCredentials.load_or_create(settings.stack.home.resolve())
    solr_user, kafka_user = COMPONENTS[component]
    if solr_user is not None and only != "kafka":
        user, password = credentials.solr_user(component)
        print(f"export IMAGETAG_SOLR__USERNAME={shlex.quote(user)}")
        print(f"export IMAGETAG_SOLR__PASSWORD={shlex.quote(password)}")
    if kafka_user is not None and only != "solr":
        client = kafka_client_options(*credentials.kafka_user(component))
        print(f"export IMAGETAG_KAFKA__CLIENT={shlex.quote(json.dumps(client))}")
    return 0


def _write_solr_security(settings: Settings, zk_address: str | None) -> int:
    """Solr's security.json into a ZooKeeper before Solr starts there (docker-compose's
    ``solr-security`` service), from this stack home's credentials."""
    from imagetag.errors import ConfigError
    from imagetag.secure_stack import StackCredentials, write_solr_security

    if not zk_address:
        raise ConfigError("solr-security needs the ZooKeeper address (host:port)")
    credentials = StackCredentials.load_or_create(settings.stack.home.resolve())
    wrote = write_solr_security(zk_address, credentials)
    print(f"security.json {'written to' if wrote else 'already in'} {zk_address}")
    return 0
