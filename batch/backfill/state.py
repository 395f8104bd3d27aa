"""The state folder of a backfill (``BackfillState``: manifest, ``done/<split>.json``,
the lock, the sink id, the re-tag id set), its name (``state_hash``) and the sink
ledger tokens that name the splits of a round."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from batch.backfill.options import BackfillError, Split


def state_hash(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Kafka keeps at most offset.metadata.max.bytes (4096 by default) of a ledger entry's metadata.
_TOKEN_MAX_CHARS = 4000


def round_token(splits: Sequence[Split]) -> str:
    """The sink ledger's token for a round (see ``imagetag.sinks``): the keys of its splits,
    so a restarted run can tell which splits the last committed round wrote whatever rounds it
    forms now; a hash when the list would not fit in Kafka's offset metadata."""
    token = ",".join(s.key for s in splits)
    if len(token) > _TOKEN_MAX_CHARS:
        return "sha1:" + hashlib.sha1(token.encode()).hexdigest()
    return token


def token_splits(token: str | None) -> set[str]:
    """The split keys a ledger token names (none for a hashed or missing token)."""
    if not token or token.startswith("sha1:"):
        return set()
    return set(token.split(","))


class BackfillState:
    """The state folder: ``manifest.json``, ``done/<split>.json``, ``sinks/``, ``ids/``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.done_dir = self.folder / "done"

    def open(self, manifest: dict[str, Any], fresh: bool = False) -> dict[str, Any]:
        """Create the folder (wiped first when ``fresh``), or check that it belongs to the
        same source. Returns the manifest (with the first run's ``started_ms``)."""
        if fresh and self.folder.exists():
            shutil.rmtree(self.folder)
        self.done_dir.mkdir(parents=True, exist_ok=True)
        path = self.folder / "manifest.json"
        if path.exists():
            existing = json.loads(path.read_text())
            if existing.get("source") != manifest.get("source") or existing.get(
                "kind"
            ) != manifest.get("kind"):
                raise BackfillError(
                    f"state folder {self.folder} belongs to {existing.get('kind')} "
                    f"{existing.get('source')}: pass another --state or --fresh"
                )
            return dict(existing)
        _write_json(path, manifest)
        return manifest

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``state/lock`` (an flock: released if the process dies) for a run; a second
        backfill with the same state folder is refused instead of racing the first."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise BackfillError(
                    f"another backfill is running with the state folder {self.folder}"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def done_keys(self) -> set[str]:
        return {p.stem for p in self.done_dir.glob("*.json")}

    def finish(self, split: Split, round_counts: dict[str, int]) -> None:
        record = {**split.describe(), "finished_at": _now_iso(), "round": round_counts}
        _write_json(self.done_dir / f"{split.key}.json", record)

    @property
    def ids_dir(self) -> Path:
        return self.folder / "ids"

    @property
    def complete_marker(self) -> Path:
        return self.folder / "complete"

    def reset_progress(self) -> None:
        """Forget finished splits, the sink id and the re-tag id set (the manifest stays)."""
        for name in ("done", "sinks", "ids"):
            shutil.rmtree(self.folder / name, ignore_errors=True)
        self.complete_marker.unlink(missing_ok=True)
        self.done_dir.mkdir(parents=True, exist_ok=True)

    def sink_id(self) -> str:
        """The transactional id of this state's review / dead-letter writes: new with the state
        (a fresh start, or a re-tag asked again), the same across resumes, so the round an
        interrupted run was writing is recognised by its token."""
        path = self.folder / "sinks" / "id"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(f"imagetag-backfill-{uuid.uuid4().hex}")
            os.replace(tmp, path)
        return path.read_text().strip()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, default=str))
    os.replace(tmp, path)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
