"""Who may do what in the web app: users, their roles, the session key, failed-login delays and
the CSRF token.

- :class:`UserStore`: the users file the app owns (JSON, written 0600 by replacing it whole):
  each user's argon2id hash (argon2-cffi's defaults) and roles. A password is never stored,
  logged or compared in clear; it is re-hashed on login when the parameters changed.
- roles: ``viewer`` (search, when ``web.login_required_for_search``), ``uploader`` (send
  images to ingest), ``reviewer`` (the review queue, corrections); a user may hold several.
- :func:`secret_key`: ``web.secret_key``, else a random key generated once into
  ``<users_file>.secret`` (0600) beside the users file, so sessions survive restarts.
- :class:`LoginThrottle`: after ``free`` failures of a user name or of a client address, each
  further attempt must wait ``base * 2**(extra failures)`` seconds (at most ``ceiling``),
  checked before the password is; a success clears the user's and the address's count.
- CSRF: one random token per session, a hidden ``csrf_token`` field in every form (or an
  ``X-CSRF-Token`` header), compared in constant time on every POST.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from imagetag.errors import ConfigError

VIEWER, UPLOADER, REVIEWER = "viewer", "uploader", "reviewer"
ROLES = (VIEWER, UPLOADER, REVIEWER)
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs what a wrong password does.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


@dataclass(frozen=True)
class User:
    name: str
    roles: frozenset[str]

    def has(self, role: str) -> bool:
        return role in self.roles


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by its owner only (never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class UserStore:
    """The users file: ``{"users": {name: {"hash": argon2id, "roles": [...]}}}``. Re-read when
    it changed on disk (``imagetag web user add`` while the app runs takes effect at once)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return self._users
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text())
                users = data["users"]
                if not isinstance(users, dict):
                    raise TypeError("users is not an object")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"web users file {self.path}: unreadable ({exc})") from exc
            self._stamp, self._users = stamp, users
        return self._users

    def _save(self, users: dict[str, dict[str, Any]]) -> None:
        _write_private(self.path, json.dumps({"users": users}, indent=2, sort_keys=True) + "\n")
        self._stamp = None

    def users(self) -> list[User]:
        with self._lock:
            return [
                User(name, frozenset(entry.get("roles", [])))
                for name, entry in sorted(self._load().items())
            ]

    def get(self, name: str) -> User | None:
        with self._lock:
            entry = self._load().get(name)
        return None if entry is None else User(name, frozenset(entry.get("roles", [])))

    def add(self, name: str, password: str, roles: list[str]) -> User:
        """Add ``name`` (or replace its password and roles). ConfigError for a bad name, an
        unknown role or a password shorter than :data:`MIN_PASSWORD`."""
        if not NAME.match(name):
            raise ConfigError(f"user name {name!r}: 1-64 of letters, digits and _ . @ -")
        unknown = sorted(set(roles) - set(ROLES))
        if unknown or not roles:
            raise ConfigError(f"roles must be some of {', '.join(ROLES)} (got {roles!r})")
        if len(password) < MIN_PASSWORD:
            raise ConfigError(f"a password needs at least {MIN_PASSWORD} characters")
        digest = _hasher.hash(password)
        with self._lock:
            users = dict(self._load())
            users[name] = {"hash": digest, "roles": sorted(set(roles))}
            self._save(users)
        return User(name, frozenset(roles))

    def remove(self, name: str) -> bool:
        with self._lock:
            users = dict(self._load())
            if users.pop(name, None) is None:
                return False
            self._save(users)
            return True

    def verify(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs, else None (same cost for an unknown name)."""
        with self._lock:
            entry = self._load().get(name)
        digest = str(entry["hash"]) if entry else _DUMMY_HASH
        try:
            _hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if entry is None:
            return None
        if _hasher.check_needs_rehash(digest):
            with self._lock:
                users = dict(self._load())
                if name in users:
                    users[name] = {**users[name], "hash": _hasher.hash(password)}
                    self._save(users)
        return User(name, frozenset(entry.get("roles", [])))


def secret_key(configured: str | None, users_file: str | Path) -> bytes:
    """The session signing key: the configured one, else ``<users_file>.secret`` (created with
    32 random bytes, 0600, on first use)."""
    if configured:
        return configured.encode()
    path = Path(f"{users_file}.secret")
    try:
        key = path.read_text().strip()
        if key:
            return key.encode()
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32)
    _write_private(path, key + "\n")
    return key.encode()


class LoginThrottle:
    """Growing delays after repeated failed logins, per user name and per client address."""

    def __init__(
        self, free: int = 5, base_s: float = 2.0, ceiling_s: float = 300.0, clock: Any = None
    ) -> None:
        self.free, self.base_s, self.ceiling_s = free, base_s, ceiling_s
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures, last failure)

    def _wait(self, key: str, now: float) -> float:
        failures, last = self._failures.get(key, (0, 0.0))
        if failures < self.free:
            return 0.0
        delay = min(self.ceiling_s, self.base_s * 2 ** (failures - self.free))
        return max(0.0, last + delay - now)

    def wait_s(self, user: str, address: str) -> float:
        """Seconds before another attempt for this user from this address is heard (0: now)."""
        now = self._clock()
        with self._lock:
            return max(self._wait(f"u:{user}", now), self._wait(f"a:{address}", now))

    def failed(self, user: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in (f"u:{user}", f"a:{address}"):
                failures, _ = self._failures.get(key, (0, 0.0))
                self._failures[key] = (failures + 1, now)
            if len(self._failures) > 100_000:  # bounded memory under a spray of names
                oldest = sorted(self._failures.items(), key=lambda kv: kv[1][1])[:50_000]
                for key, _ in oldest:
                    del self._failures[key]

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._failures.pop(f"u:{user}", None)
            self._failures.pop(f"a:{address}", None)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
