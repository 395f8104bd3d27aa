"""Files as Spark and Hadoop name and list them: path spellings, data-file listings, a
streaming file sink's committed files, and where the raw archive is.

One home for what the batch jobs need to read files through Spark on any Hadoop filesystem
(local, ``hdfs://``, ``s3a://``). Our *canonical* path is a plain absolute path for a local
file and the decoded URI otherwise; ``spark_path`` / ``hadoop_uri`` / ``file_uri`` spell it as
each consumer wants it. The listings take an active Spark session (its JVM's Hadoop
``FileSystem``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from imagetag.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

BACKFILL_ARCHIVE = "_backfill"  # under archive_dir; hidden from readers of the stream's sink
_GLOB_CHARS = "\\{}[]*?"

# -- paths (pure) ----------------------------------------------------------------------------


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` (HDFS, S3, ...) paths; False for local paths and ``file:``."""
    head, sep, _ = path.partition("://")
    return bool(sep) and head.isalnum() and len(head) > 1 and head != "file"


def from_hadoop(path: str) -> str:
    """Our canonical form of a path Hadoop spells *decoded* (``Path.toString()``, the
    binaryFile ``path`` column): a plain local path (``/a b[1].png``) or a decoded URI."""
    if path.startswith("file:"):
        path = path[5:]
        if path.startswith("///"):
            path = path[2:]
    return path


def from_uri(uri: str) -> str:
    """Our canonical form of a path Spark spells as an *encoded* URI (``inputFiles()``,
    ``_metadata.file_path``: ``file:///a%20b%5B1%5D.png``)."""
    return unquote(from_hadoop(uri))


def canonical(path: str) -> str:
    """Canonical form of a user-given path: absolute for a local one."""
    if is_uri(path):
        return path.rstrip("/")
    return os.path.abspath(from_hadoop(path))


def hadoop_uri(path: str) -> str:
    """A canonical path as Hadoop's ``Path`` takes it (decoded, not a pattern)."""
    return path if is_uri(path) else "file://" + path


def spark_path(path: str) -> str:
    """A canonical path as Spark's readers take it literally: glob characters escaped."""
    uri = hadoop_uri(path)
    scheme, _, rest = uri.partition("://")
    return scheme + "://" + "".join("\\" + c if c in _GLOB_CHARS else c for c in rest)


def file_uri(path: str) -> str:
    """The ``file:///`` URI of a canonical local path (percent-encoded, as the producer writes
    sources); a URI is returned as it is."""
    return path if is_uri(path) else Path(path).as_uri()


def ingest_date_of(path: str) -> str | None:
    """``YYYY-MM-DD`` from an ``ingest_date=YYYY-MM-DD`` folder in a path, or None."""
    for part in path.split("/"):
        if part.startswith("ingest_date="):
            return part.split("=", 1)[1]
    return None


# -- listings through Hadoop's FileSystem (a Spark session) -------------------------------


def list_data_files(spark: SparkSession, root: str) -> list[tuple[str, int, int]]:
    """(canonical path, size, modification time) of the data files under ``root``, listed with Hadoop's
    FileSystem (so any filesystem Spark reads works). Names starting with ``_`` or ``.`` below
    ``root`` (``_SUCCESS``, ``.crc``, ``_spark_metadata``, ``_backfill``) are skipped, as
    Spark's readers skip them."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    path = jvm.org.apache.hadoop.fs.Path(hadoop_uri(root))  # type: ignore[union-attr]
    fs = path.getFileSystem(conf)
    if not fs.exists(path):
        return []
    base = from_hadoop(fs.makeQualified(path).toString()).rstrip("/") + "/"
    out: list[tuple[str, int, int]] = []
    files = fs.listFiles(path, True)
    while files.hasNext():
        status = files.next()
        found = from_hadoop(str(status.getPath().toString()))
        relative = found[len(base) :] if found.startswith(base) else found
        if any(part.startswith(("_", ".")) for part in relative.split("/")):
            continue
        out.append((found, int(status.getLen()), int(status.getModificationTime())))
    return out


def committed_files(spark: SparkSession, root: str) -> set[str] | None:
    """Canonical paths of the files a streaming file sink committed under ``root`` (its
    ``_spark_metadata`` log), or None when ``root`` is not a sink's output."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    log_dir = jvm.org.apache.hadoop.fs.Path(hadoop_uri(root.rstrip("/") + "/_spark_metadata"))  # type: ignore[union-attr]
    if not log_dir.getFileSystem(conf).exists(log_dir):
        return None
    from pyspark.errors import AnalysisException

    try:
        return {from_uri(u) for u in spark.read.parquet(spark_path(root)).inputFiles()}
    except AnalysisException as exc:
        if is_unable_to_infer_schema(exc):  # a sink that committed nothing yet
            return set()
        raise


def is_unable_to_infer_schema(exc: Exception) -> bool:
    """Is ``exc`` Spark's error for a Parquet folder without any data file to read a schema
    from (error condition ``UNABLE_TO_INFER_SCHEMA``)?"""
    condition = getattr(exc, "getCondition", None)
    return callable(condition) and condition() == "UNABLE_TO_INFER_SCHEMA"


def parquet_files(
    spark: SparkSession, roots: Sequence[str], since: dt.date | None = None
) -> list[tuple[str, int]]:
    """(canonical path, size) of the Parquet data files under ``roots`` (only the committed
    ones for a streaming sink's output), ``ingest_date >= since`` when given, ordered by ingest
    date, modification time and path: new files come last, so a restart lists the same files
    first."""
    files: list[tuple[str, int, str, int]] = []
    for root in roots:
        committed = committed_files(spark, root)
        for uri, size, modified in list_data_files(spark, root):
            if committed is not None and uri not in committed:
                continue  # an uncommitted (failed) micro-batch's file
            if not uri.endswith(".parquet"):
                continue
            day = ingest_date_of(uri) or ""
            if since is not None and day and day < since.isoformat():
                continue
            files.append((day, modified, uri, size))
    files.sort(key=lambda f: (f[0], f[1], f[2]))
    return [(uri, size) for _, _, uri, size in files]


# -- the raw archive ---------------------------------------------------------------------------


def archive_roots(settings: Settings, source_root: str | None = None) -> list[str]:
    """The stream's archive and the backfill's archive beside it."""
    root = canonical(source_root or settings.archive_dir)
    return [root, f"{root}/{BACKFILL_ARCHIVE}"]
