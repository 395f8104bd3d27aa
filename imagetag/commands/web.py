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
    from imagetag.web.app import create_app
    from imagetag.web.server import WebServer

    changes = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if changes:
        settings = settings.derive(web=changes)
    settings = searcher_settings(settings)
    app = create_app(settings)
    server = WebServer(app, settings.web.host, settings.web.port, settings.web.threads)
    server.run()
    return 0
