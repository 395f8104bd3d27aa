"""Serving the app: waitress (a pure-Python, multi-threaded WSGI server, no build step) on
the web settings' address; port 0 takes a free port. The address it listens on is logged as
``web on http://host:port`` once it accepts connections."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class WebServer:
    """A bound server for ``app``; :meth:`run` serves until :meth:`close`."""

    def __init__(self, app: Any, host: str, port: int, threads: int = 4) -> None:
        from waitress.server import create_server  # type: ignore[import-untyped]

        self._server: Any = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="imagetag",
            clear_untrusted_proxy_headers=True,
        )
        self.host = host
        self.port = int(self._server.effective_port)
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self, ready: Callable[[str], None] | None = None) -> None:
        log.info("web on %s", self.url)
        if ready is not None:
            ready(self.url)
        try:
            self._server.run()
        finally:
            self.close()

    def close(self) -> None:
        """Stop accepting and close the listening socket (once; later calls do nothing)."""
        if not self._closed:
            self._closed = True
            self._server.close()
