"""The secured local stack (``stack.secure``): its users, their passwords, and Solr's security.

Off by default, so ``make demo`` and ``make test`` run as before. With ``stack.secure`` on,
``imagetag stack up`` turns on in Solr ``BasicAuthPlugin`` and ``RuleBasedAuthorizationPlugin``
(``security.json`` at the root of ZooKeeper, the way Solr's own ``bin/solr auth enable`` does it)
with three users:

=========  =============================================  ==========================
user       may                                            used by
=========  =============================================  ==========================
admin      everything (collections, aliases, configsets)  init, reindex
indexer    read and update                                stream, backfill, retrain
searcher   read                                           search
=========  =============================================  ==========================

The passwords are generated once per stack home into ``<stack.home>/credentials.json``
(mode 0600) and are never logged. ``imagetag stack credentials ROLE`` prints the settings a
component needs as ``IMAGETAG_*`` variables, for ``eval`` in its shell.

ZooKeeper's copy: Solr's embedded ZooKeeper keeps ``/security.json`` in the stack home, so it is
written once, right after the first start (before ``up`` returns, and before anything of ours
sends a request; the node listens on loopback only); every later start is secured from its
first request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOLR_ROLES: dict[str, list[str]] = {
    "admin": ["admin"],
    "indexer": ["indexer"],
    "searcher": ["searcher"],
}
# Component -> the Solr user it runs as (least privilege).
SOLR_USER_OF: dict[str, str] = {
    "admin": "admin",
    "stream": "indexer",
    "backfill": "indexer",
    "search": "searcher",
}
CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True)
class StackCredentials:
    """The generated passwords of the secured stack's users, by service and user."""

    solr: dict[str, str]

    @classmethod
    def load_or_create(cls, home: Path) -> StackCredentials:
        """The stack home's credentials, generated (random, 24 bytes each) on first use into a
        file only its owner can read."""
        path = home / CREDENTIALS_FILE
        if path.exists():
            data = json.loads(path.read_text())
            return cls(solr=dict(data["solr"]))
        created = cls(solr={user: secrets.token_urlsafe(24) for user in SOLR_ROLES})
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"solr": created.solr}, out, indent=2)
        return created

    def solr_user(self, component: str) -> tuple[str, str]:
        """(user, password) the component authenticates to Solr with."""
        user = SOLR_USER_OF[component]
        return user, self.solr[user]

    def __repr__(self) -> str:
        return f"StackCredentials(solr users={sorted(self.solr)})"


def solr_password_hash(password: str, salt: bytes) -> str:
    """A ``BasicAuthPlugin`` credential: base64(sha256(sha256(salt + password))), a space,
    base64(salt), as Solr's ``Sha256AuthenticationProvider`` checks it."""
    first = hashlib.sha256(salt + password.encode()).digest()
    return f"{base64.b64encode(hashlib.sha256(first).digest()).decode()} {base64.b64encode(salt).decode()}"


def solr_security_json(credentials: StackCredentials) -> dict[str, Any]:
    """Solr's ``security.json``: every request authenticated (``blockUnknown``), and
    rule-based permissions: read for every role, update for the indexer and admin, everything
    else (collections, aliases, configsets, security itself) for admin only."""
    return {
        "authentication": {
            "class": "solr.BasicAuthPlugin",
            "blockUnknown": True,
            "forwardCredentials": False,
            "realm": "imagetag",
            "credentials": {
                user: solr_password_hash(password, secrets.token_bytes(32))
                for user, password in credentials.solr.items()
            },
        },
        "authorization": {
            "class": "solr.RuleBasedAuthorizationPlugin",
            "user-role": SOLR_ROLES,
            "permissions": [
                {"name": "read", "role": ["searcher", "indexer", "admin"]},
                {"name": "update", "role": ["indexer", "admin"]},
                {"name": "all", "role": ["admin"]},
            ],
        },
    }


def ensure_solr_security(
    zk_address: str, base_url: str, credentials: StackCredentials, timeout_s: float = 60.0
) -> None:
    """Make the local Solr node secured: write ``/security.json`` to its ZooKeeper unless one
    is there, then wait until Solr enforces it (an anonymous request is refused, admin's is
    answered). Raises ServiceError when it does not take effect in time."""
    import time

    import requests
    from kazoo.client import KazooClient

    from imagetag.errors import ServiceError

    zk = KazooClient(hosts=zk_address, timeout=10)
    zk.start(timeout=30)
    try:
        if not zk.exists("/security.json") or not zk.get("/security.json")[0].strip(b"{} \n"):
            body = json.dumps(solr_security_json(credentials)).encode()
            if zk.exists("/security.json"):
                zk.set("/security.json", body)
            else:
                zk.create("/security.json", body)
    finally:
        zk.stop()
        zk.close()
    probe = f"{base_url}/admin/info/system"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            anonymous = requests.get(probe, timeout=3).status_code
            admin = requests.get(probe, auth=credentials.solr_user("admin"), timeout=3).status_code
        except requests.RequestException:
            anonymous = admin = 0
        if anonymous == 401 and admin == 200:
            return
        time.sleep(0.5)
    raise ServiceError("solr", base_url, "security.json did not take effect in time")
