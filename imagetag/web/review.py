"""The web app's materialised view of ``images.review`` and ``images.dlq``, in local SQLite.

A topic is not a database: the review queue needs "newest first, a page at a time" and the
status page needs "is this id in review / dead-lettered?" for any id, at any backlog size.
:class:`ViewFeeder` (a background thread) consumes both topics with ``read_committed`` (the
stream writes them in transactions; aborted attempts are never seen) under its own consumer
group, and writes each batch of records and the next offsets in ONE SQLite transaction, so a
restart resumes exactly where the view ends (offsets live with the data; the group's offsets
are committed too, for Kafka's lag tools). Deleting the database rebuilds it from the topics'
beginning (within their retention).

The same database holds what the app itself records: uploads (who sent which id) and
corrections (who gave which image which label, when, and whether it was sent again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagetag.settings import Settings

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS review (
    id TEXT PRIMARY KEY, source TEXT, top_tag TEXT, confidence REAL, votes TEXT,
    threshold REAL, model_version TEXT, label TEXT, ingested_at INTEGER, tagged_at INTEGER
);
CREATE INDEX IF NOT EXISTS review_by_time ON review (tagged_at DESC, id);
CREATE TABLE IF NOT EXISTS dead (
    coord TEXT PRIMARY KEY, id TEXT, stage TEXT, reason TEXT, detail TEXT, failed_at INTEGER
);
CREATE INDEX IF NOT EXISTS dead_by_id ON dead (id, failed_at DESC);
CREATE INDEX IF NOT EXISTS dead_by_time ON dead (failed_at DESC);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT, partition INTEGER, next INTEGER, PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, user TEXT, filename TEXT, at INTEGER
);
CREATE TABLE IF NOT EXISTS corrections (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, label TEXT, user TEXT, at INTEGER,
    previous TEXT, ingested_at INTEGER, source TEXT, resent_at INTEGER, note TEXT
);
CREATE INDEX IF NOT EXISTS corrections_by_id ON corrections (id, seq DESC);
CREATE INDEX IF NOT EXISTS corrections_pending ON corrections (resent_at, seq);
"""


@dataclass(frozen=True)
class Reviewed:
    id: str
    source: str
    top_tag: str
    confidence: float
    votes: list[tuple[str, float]]
    model_version: str
    label: str | None
    ingested_at: int
    tagged_at: int
    corrected: str | None = None


@dataclass(frozen=True)
class Dead:
    id: str
    stage: str
    reason: str
    detail: str
    failed_at: int


@dataclass(frozen=True)
class Correction:
    seq: int
    id: str
    label: str
    user: str
    at: int
    previous: str | None
    ingested_at: int | None
    source: str | None
    resent_at: int | None
    note: str | None


def now_ms() -> int:
    return int(time.time() * 1000)


class ViewStore:
    """The SQLite database (WAL: the feeder writes while pages read). One connection per
    thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A transaction (committed on leaving, rolled back on an exception)."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- what the feeder writes --------------------------------------------------------------

    def offsets(self, topic: str) -> dict[int, int]:
        rows = self._db().execute("SELECT partition, next FROM offsets WHERE topic = ?", (topic,))
        return {int(r["partition"]): int(r["next"]) for r in rows}

    def apply(
        self,
        reviews: list[dict[str, Any]],
        dead: list[tuple[str, Dead]],
        offsets: dict[tuple[str, int], int],
    ) -> None:
        with self.connect() as db:
            db.executemany(
                "INSERT INTO review VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "source=excluded.source, top_tag=excluded.top_tag, "
                "confidence=excluded.confidence, votes=excluded.votes, "
                "threshold=excluded.threshold, model_version=excluded.model_version, "
                "label=excluded.label, ingested_at=excluded.ingested_at, "
                "tagged_at=excluded.tagged_at",
                [
                    (
                        r["id"],
                        r.get("source", ""),
                        r.get("top_tag", ""),
                        float(r.get("confidence") or 0.0),
                        json.dumps(dict(r.get("votes") or {})),
                        float(r.get("threshold") or 0.0),
                        r.get("model_version", ""),
                        r.get("label"),
                        _ms(r.get("ingested_at")),
                        _ms(r.get("tagged_at")),
                    )
                    for r in reviews
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO dead VALUES (?,?,?,?,?,?)",
                [(c, d.id, d.stage, d.reason, d.detail, d.failed_at) for c, d in dead],
            )
            db.executemany(
                "INSERT OR REPLACE INTO offsets VALUES (?,?,?)",
                [(t, p, o) for (t, p), o in offsets.items()],
            )

    # -- what the pages read -----------------------------------------------------------------

    def review_page(self, limit: int, before: tuple[int, str] | None = None) -> list[Reviewed]:
        """Images waiting in review (no correction yet), newest first; ``before`` = the last
        (tagged_at, id) of the previous page."""
        sql = (
            "SELECT r.* FROM review r WHERE NOT EXISTS "
            "(SELECT 1 FROM corrections c WHERE c.id = r.id)"
        )
        args: list[Any] = []
        if before is not None:
            sql += " AND (r.tagged_at < ? OR (r.tagged_at = ? AND r.id > ?))"
            args += [before[0], before[0], before[1]]
        sql += " ORDER BY r.tagged_at DESC, r.id LIMIT ?"
        rows = self._db().execute(sql, [*args, limit]).fetchall()
        return [_reviewed(r) for r in rows]

    def review_count(self) -> int:
        row = (
            self._db()
            .execute(
                "SELECT count(*) FROM review r WHERE NOT EXISTS "
                "(SELECT 1 FROM corrections c WHERE c.id = r.id)"
            )
            .fetchone()
        )
        return int(row[0])

    def reviewed(self, image_id: str) -> Reviewed | None:
        row = self._db().execute("SELECT * FROM review WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            return None
        latest = self.correction(image_id)
        return _reviewed(row, latest.label if latest else None)

    def dead(self, image_id: str) -> Dead | None:
        row = (
            self._db()
            .execute("SELECT * FROM dead WHERE id = ? ORDER BY failed_at DESC LIMIT 1", (image_id,))
            .fetchone()
        )
        if row is None:
            return None
        return Dead(row["id"], row["stage"], row["reason"], row["detail"], int(row["failed_at"]))

    # -- what the app records ----------------------------------------------------------------

    def uploaded(self, image_id: str, user: str, filename: str) -> None:
        with self.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?,?,?,?)",
                (image_id, user, filename, now_ms()),
            )

    def upload(self, image_id: str) -> tuple[str, str, int] | None:
        row = self._db().execute("SELECT * FROM uploads WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else (row["user"], row["filename"], int(row["at"]))

    def correct(
        self,
        image_id: str,
        label: str,
        user: str,
        previous: str | None,
        ingested_at: int | None,
        source: str | None,
    ) -> Correction:
        with self.connect() as db:
            cursor = db.execute(
                "INSERT INTO corrections (id, label, user, at, previous, ingested_at, source) "
                "VALUES (?,?,?,?,?,?,?)",
                (image_id, label, user, now_ms(), previous, ingested_at, source),
            )
            seq = int(cursor.lastrowid or 0)
        found = self.correction(image_id)
        assert found is not None and found.seq == seq
        return found

    def correction(self, image_id: str) -> Correction | None:
        row = (
            self._db()
            .execute(
                "SELECT * FROM corrections WHERE id = ? ORDER BY seq DESC LIMIT 1", (image_id,)
            )
            .fetchone()
        )
        return None if row is None else _correction(row)

    def pending_corrections(self, limit: int = 20) -> list[Correction]:
        """The latest correction of each image that was not sent again yet."""
        rows = (
            self._db()
            .execute(
                "SELECT c.* FROM corrections c WHERE c.resent_at IS NULL AND c.seq = "
                "(SELECT max(seq) FROM corrections WHERE id = c.id) ORDER BY c.seq LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [_correction(r) for r in rows]

    def mark_resent(self, seq: int, note: str) -> None:
        with self.connect() as db:
            db.execute(
                "UPDATE corrections SET resent_at = ?, note = ? WHERE seq = ?",
                (now_ms(), note, seq),
            )

    def note(self, seq: int, note: str) -> None:
        with self.connect() as db:
            db.execute("UPDATE corrections SET note = ? WHERE seq = ?", (note, seq))


def _ms(value: Any) -> int:
    if value is None:
        return 0
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    return int(value)


def _reviewed(row: sqlite3.Row, corrected: str | None = None) -> Reviewed:
    votes = json.loads(row["votes"] or "{}")
    return Reviewed(
        id=row["id"],
        source=row["source"] or "",
        top_tag=row["top_tag"] or "",
        confidence=float(row["confidence"] or 0.0),
        votes=sorted(((str(k), float(v)) for k, v in votes.items()), key=lambda kv: -kv[1]),
        model_version=row["model_version"] or "",
        label=row["label"],
        ingested_at=int(row["ingested_at"] or 0),
        tagged_at=int(row["tagged_at"] or 0),
        corrected=corrected,
    )


def _correction(row: sqlite3.Row) -> Correction:
    return Correction(
        seq=int(row["seq"]),
        id=row["id"],
        label=row["label"],
        user=row["user"],
        at=int(row["at"]),
        previous=row["previous"],
        ingested_at=None if row["ingested_at"] is None else int(row["ingested_at"]),
        source=row["source"],
        resent_at=None if row["resent_at"] is None else int(row["resent_at"]),
        note=row["note"],
    )


def decode_records(
    settings: Settings, records: list[tuple[str, int, int, bytes | None, bytes | None]]
) -> tuple[list[dict[str, Any]], list[tuple[str, Dead]]]:
    """(topic, partition, offset, key, value) records of the review and dead-letter topics ->
    review rows and (coordinate, dead letter) rows. A record that does not decode is skipped
    (logged): the view must keep going."""
    from imagetag.avro import AvroDeserializer
    from imagetag.errors import RecordError

    results, letters = AvroDeserializer("TagResult"), AvroDeserializer("DeadLetter")
    reviews: list[dict[str, Any]] = []
    dead: list[tuple[str, Dead]] = []
    for topic, partition, offset, key, value in records:
        try:
            if topic == settings.kafka.topic_review:
                reviews.append(dict(results(value or b"")))
            else:
                letter = letters(value or b"")
                raw = letter.get("key") or key
                image_id = raw.decode(errors="replace") if raw else ""
                dead.append(
                    (
                        f"{topic}:{partition}:{offset}",
                        Dead(
                            image_id,
                            str(letter["stage"]),
                            str(letter["reason"]),
                            str(letter.get("detail") or ""),
                            _ms(letter.get("failed_at")),
                        ),
                    )
                )
        except (RecordError, KeyError, UnicodeError) as exc:
            log.warning("view: skipped %s:%s:%s (%s)", topic, partition, offset, exc)
    return reviews, dead


class ViewFeeder:
    """The background consumer that keeps :class:`ViewStore` up to date. ``idle()`` runs
    between polls (the app re-sends pending corrections there)."""

    def __init__(
        self,
        settings: Settings,
        store: ViewStore,
        idle: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.idle = idle
        self.topics = [settings.kafka.topic_review, settings.kafka.topic_dlq]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0

    def start(self) -> ViewFeeder:
        self._thread = threading.Thread(target=self._run, name="web-view-feeder", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception:  # Kafka gone, a bad partition list: retry, never die
                log.exception("web view feeder failed; retrying in 5s")
                self._stop.wait(5.0)

    def _consume(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            self.settings.kafka.client_config()
            | {
                "group.id": self.settings.web.view_group,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "log_level": 3,
            }
        )
        try:
            assignment = []
            for topic in self.topics:
                metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if metadata is None or metadata.error is not None:
                    raise RuntimeError(f"no topic {topic}")
                stored = self.store.offsets(topic)
                assignment += [
                    TopicPartition(topic, p, stored.get(p, OFFSET_BEGINNING))
                    for p in sorted(metadata.partitions)
                ]
            consumer.assign(assignment)
            log.info("web view: reading %s", ", ".join(self.topics))
            while not self._stop.is_set():
                messages = consumer.consume(500, timeout=self.settings.web.view_poll_s)
                records = []
                offsets: dict[tuple[str, int], int] = {}
                for m in messages:
                    if m.error() is not None:
                        continue
                    topic, partition = str(m.topic()), int(m.partition() or 0)
                    offset = int(m.offset() or 0)
                    records.append((topic, partition, offset, m.key(), m.value()))
                    offsets[(topic, partition)] = offset + 1
                if offsets:
                    reviews, dead = decode_records(self.settings, records)
                    self.store.apply(reviews, dead, offsets)
                    self.batches += 1
                    with contextlib.suppress(Exception):  # only for lag tools
                        consumer.commit(
                            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                            asynchronous=True,
                        )
                if self.idle is not None:
                    try:
                        self.idle()
                    except Exception:
                        log.exception("web view: idle work failed")
        finally:
            consumer.close()
