"""``imagetag web [--host H] [--port P]``: serve the web app (``imagetag.web``) on
``web.host:web.port`` (port 0: any free port), logging ``web on http://...``.

It reads Solr only, as the settings' Solr user. On a secured local stack (``stack.secure``)
with no user set, it takes the least-privileged reader, ``searcher``, from the stack's
credentials (as ``eval "$(imagetag stack credentials search)"`` would set it)."""

from __future__ import annotations

import argparse
import logging

from imagetag.settings import Settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default: web.host)")
    parser.add_argument("--port", type=int, help="port (default: web.port; 0: any free port)")
    sub = parser.add_subparsers(dest="web_command")
    user = sub.add_parser("user", help="manage the web app's users (web.users_file)")
    actions = user.add_subparsers(dest="user_command", required=True)
    add = actions.add_parser("add", help="add a user or replace its password and roles")
    add.add_argument("name")
    add.add_argument(
        "--role", action="append", required=True, choices=["viewer", "uploader", "reviewer"]
    )
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (no prompt)"
    )
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    actions.add_parser("list", help="list the users and their roles")


def manage_users(args: argparse.Namespace, settings: Settings) -> int:
    """``imagetag web user add|remove|list``: the password comes from a prompt (twice) or
    from stdin, never from the command line, and is never printed or logged."""
    import getpass
    import sys

    from imagetag.errors import ConfigError
    from imagetag.web.auth import UserStore

    store = UserStore(settings.web.users_file)
    if args.user_command == "list":
        for user in store.users():
            print(f"{user.name}\t{','.join(sorted(user.roles))}")
        return 0
    if args.user_command == "remove":
        if not store.remove(args.name):
            print(f"no user {args.name}", file=sys.stderr)
            return 1
        print(f"removed {args.name}")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 2
    try:
        user = store.add(args.name, password, args.role)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"{user.name}\t{','.join(sorted(user.roles))}\t({settings.web.users_file})")
    return 0


def label_settings(settings: Settings) -> Settings:
    """``settings`` with the indexer as ``web.label_username`` on a secured local stack when
    none is set: the one user the app writes Solr as (a correction's ``label``)."""
    from imagetag.secure_stack import CREDENTIALS_FILE, StackCredentials

    if not settings.stack.secure or settings.web.label_username is not None:
        return settings
    home = settings.stack.home.resolve()
    if not (home / CREDENTIALS_FILE).exists():
        return settings
    user, password = StackCredentials.load_or_create(home).solr_user("backfill")
    return settings.derive(web={"label_username": user, "label_password": password})


def searcher_settings(settings: Settings) -> Settings:
    """``settings`` with the secured stack's ``searcher`` as the Solr user when security is
    on and no user is set; a warning when another user is set (the app needs only reads)."""
    from imagetag.secure_stack import CREDENTIALS_FILE, StackCredentials

    if not settings.stack.secure:
        return settings
    if settings.solr.username is None:
        home = settings.stack.home.resolve()
        if not (home / CREDENTIALS_FILE).exists():
            return settings
        user, password = StackCredentials.load_or_create(home).solr_user("search")
        return settings.derive(solr={"username": user, "password": password})
    if settings.solr.username != "searcher":
        log.warning(
            "web reads Solr as %r; the least-privileged user for it is 'searcher'",
            settings.solr.username,
        )
    return settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "web_command", None) == "user":
        return manage_users(args, settings)
    from imagetag.web.app import create_app
    from imagetag.web.review import ViewFeeder
    from imagetag.web.server import WebServer

    changes = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if changes:
        settings = settings.derive(web=changes)
    settings = searcher_settings(label_settings(settings))
    app = create_app(settings)
    feeder = ViewFeeder(
        settings, app.extensions["imagetag.view"], app.extensions["imagetag.resend_pending"]
    ).start()
    server = WebServer(app, settings.web.host, settings.web.port, settings.web.threads)
    try:
        server.run()
    finally:
        feeder.stop()
    return 0
