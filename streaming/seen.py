"""The tag query's de-duplication without a state store: which image keys it passed lately.

A record is a *duplicate* when a record with the same dedupe key (the Kafka key, i.e. the image
id, plus a replayed dead letter's ``REPLAY_HEADER``) passed the query earlier in the same batch
or in an earlier one, at most ``spark.dedupe_window`` before the newest record passed before
this batch (Kafka timestamps, so a replay of old data decides as the first run did). Records
without a key are never duplicates. Within a batch the first record in (timestamp, topic,
partition, offset) order passes.

The keys live on the driver, 16-byte digests with their first timestamp (about 100 bytes each:
an hour at 200 images/s is about 70 MB), and in the query's checkpoint: ``commit(B)`` writes
batch B's new keys as ``delta-B`` before ``foreachBatch`` returns, that is before Spark records
the batch as done. Every ``SNAPSHOT_EVERY`` batches, batch B starts by writing the set as it is
before B as ``snapshot-B`` and deleting the files before it (no batch before B can run again
once Spark started B). ``load(B)`` rebuilds the set as it was before batch B from the newest
snapshot up to B and the deltas from it to B, and deletes the deltas of B and later and the
snapshots after B: what an attempt of B that did not finish left behind. So a batch re-run
after a crash takes the same decisions as its first attempt (its records are the same), and its
outputs are the same.

Why not Spark's ``dropDuplicatesWithinWatermark``: its shuffle and state store cost 0.4 to
0.6 s of every micro-batch on two cores, and its watermark drops records older than the
watermark, which an hour of event-time skew between partitions after an outage produces. Here
the check is a dictionary lookup on the driver, and an old record is only ever a new key.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from imagetag.hadoop import from_hadoop, is_uri

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MAGIC = b"imtgseen1\n"
_ENTRY = struct.Struct(">16sq")  # digest, first Kafka timestamp (ms)
SNAPSHOT_EVERY = 100
_NAME = re.compile(r"(delta|snapshot)-(\d{20})")


class Record(NamedTuple):
    """What the check needs of one record of a batch: the dedupe key (None: never a duplicate)
    and the coordinates that name it."""

    key: str | None
    timestamp_ms: int
    topic: str
    partition: int
    offset: int


def digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()


class Files(Protocol):
    def names(self) -> list[str]: ...
    def read(self, name: str) -> bytes: ...
    def write(self, name: str, data: bytes) -> None: ...
    def delete(self, name: str) -> None: ...


class LocalFiles:
    """A local folder; a file is written whole under a temporary name, then renamed."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        return [p.name for p in self.root.iterdir()] if self.root.is_dir() else []

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f".{name}.{uuid.uuid4().hex}.tmp"
        temp.write_bytes(data)
        os.replace(temp, self.root / name)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)


class HadoopFiles:
    """A folder on any Hadoop filesystem (``hdfs://``, ``s3a://``), through Spark's JVM."""

    def __init__(self, root: str, spark: SparkSession) -> None:
        context = spark.sparkContext
        self._jvm: Any = context._jvm
        self.root = root.rstrip("/")
        self._fs: Any = self._path("").getFileSystem(context._jsc.hadoopConfiguration())

    def _path(self, name: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(f"{self.root}/{name}" if name else self.root)

    def names(self) -> list[str]:
        if not self._fs.exists(self._path("")):
            return []
        return [status.getPath().getName() for status in self._fs.listStatus(self._path(""))]

    def read(self, name: str) -> bytes:
        stream = self._fs.open(self._path(name))
        try:
            return bytes(self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def write(self, name: str, data: bytes) -> None:
        temp = self._path(f".{name}.{uuid.uuid4().hex}.tmp")
        out = self._fs.create(temp, True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()
        self._fs.delete(self._path(name), False)  # a previous attempt's file of this batch
        if not self._fs.rename(temp, self._path(name)):
            raise OSError(f"cannot rename {temp} to {self._path(name)}")

    def delete(self, name: str) -> None:
        self._fs.delete(self._path(name), False)


def files_at(root: str, spark: SparkSession) -> Files:
    return HadoopFiles(root, spark) if is_uri(root) else LocalFiles(from_hadoop(root))


def _encode(entries: Iterable[tuple[bytes, int]]) -> bytes:
    return MAGIC + b"".join(_ENTRY.pack(d, ts) for d, ts in entries)


def _decode(data: bytes, name: str) -> list[tuple[bytes, int]]:
    body = data[len(MAGIC) :]
    if not data.startswith(MAGIC) or len(body) % _ENTRY.size:
        raise ValueError(f"{name} is not a de-duplication file")
    return list(_ENTRY.iter_unpack(body))


class SeenKeys:
    """The keys the tag query passed within ``window_ms`` (see the module's doc)."""

    def __init__(self, files: Files, window_ms: int) -> None:
        self.files = files
        self.window_ms = window_ms
        self.first: dict[bytes, int] = {}  # digest -> first timestamp, in the order passed
        self.newest: int | None = None
        self.loaded_for: int | None = None  # the next batch id this state is the state before
        self.snapshot: int = -1

    # -- state ---------------------------------------------------------------------------------
    def load(self, batch_id: int) -> None:
        """The state as it was before ``batch_id`` (read again only when not already so):
        ``snapshot-N`` is the state before batch N, ``delta-N`` the keys batch N passed."""
        if self.loaded_for == batch_id:
            return
        self.first, self.newest = {}, None
        files = sorted(  # a snapshot before the delta of the same batch
            (int(m.group(2)), m.group(1) != "snapshot", m.group(1), name)
            for name in self.files.names()
            if (m := _NAME.fullmatch(name))
        )
        usable = []
        for number, _, kind, name in files:
            if number >= batch_id and (kind == "delta" or number > batch_id):
                self.files.delete(name)  # an unfinished attempt of this batch left it
            else:
                usable.append((number, kind, name))
        self.snapshot = max((n for n, kind, _ in usable if kind == "snapshot"), default=-1)
        for number, kind, name in usable:
            if (kind == "snapshot" and number == self.snapshot) or (
                kind == "delta" and number >= self.snapshot
            ):
                self._apply(_decode(self.files.read(name), name))
        self.loaded_for = batch_id

    def _apply(self, entries: list[tuple[bytes, int]]) -> None:
        for d, ts in entries:
            self.first.pop(d, None)  # an expired key passed again: it moves to the end
            self.first[d] = ts
            if self.newest is None or ts > self.newest:
                self.newest = ts
        if self.newest is None:
            return
        cutoff = self.newest - self.window_ms
        while self.first:  # oldest first; stops at the first key still inside the window
            d, ts = next(iter(self.first.items()))
            if ts >= cutoff:
                break
            del self.first[d]

    # -- a batch -------------------------------------------------------------------------------
    def split(
        self, batch_id: int, records: Iterable[Record]
    ) -> tuple[list[Record], list[tuple[bytes, int]]]:
        """(the batch's duplicates, its new keys to ``commit`` once its outputs are written)."""
        self.load(batch_id)
        if batch_id - self.snapshot >= SNAPSHOT_EVERY:
            self._compact(batch_id)
        cutoff = (self.newest or 0) - self.window_ms  # nothing is older when nothing passed
        duplicates: list[Record] = []
        new: dict[bytes, int] = {}
        for record in sorted(
            records, key=lambda r: (r.timestamp_ms, r.topic, r.partition, r.offset)
        ):
            if record.key is None:
                continue
            d = digest(record.key)
            earlier = self.first.get(d)
            if d in new or (earlier is not None and earlier >= cutoff):
                duplicates.append(record)
            else:
                new[d] = record.timestamp_ms
        return duplicates, list(new.items())

    def commit(self, batch_id: int, new: list[tuple[bytes, int]]) -> None:
        """Record batch ``batch_id``'s new keys: in the checkpoint first, then in memory."""
        if self.loaded_for != batch_id:
            raise RuntimeError(f"batch {batch_id} was not split against the state before it")
        if new:
            self.files.write(f"delta-{batch_id:020d}", _encode(new))
        self._apply(new)
        self.loaded_for = batch_id + 1

    def _compact(self, batch_id: int) -> None:
        """Write the state before ``batch_id`` as one snapshot and delete the files before it.
        Safe here: Spark runs batch B only once batch B-1 is recorded as done, so no batch
        before this one is run again (and this one, run again, starts from this snapshot)."""
        self.files.write(f"snapshot-{batch_id:020d}", _encode(self.first.items()))
        for name in self.files.names():
            m = _NAME.fullmatch(name)
            if m and int(m.group(2)) < batch_id:
                self.files.delete(name)
        self.snapshot = batch_id
