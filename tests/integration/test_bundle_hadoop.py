"""The model store through Hadoop's FileSystem (the code path of hdfs://, s3a://, ... URIs),
exercised on a local ``file://`` URI with a local SparkSession (``local_spark`` of
tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagetag.bundle import ModelStore
from tests.unit.test_bundle import make_bundle

pytestmark = pytest.mark.integration


def test_round_trip_and_atomic_current_through_hadoop(local_spark: Any, tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/store"
    store = ModelStore(uri, local_spark, via_hadoop=True)
    assert store.list_versions() == [] and store.current_version() is None
    first = make_bundle(store, k=4)
    store.write(first)
    second = make_bundle(store, k=6)
    store.write(second)
    assert store.list_versions() == ["v0001", "v0002"]
    store.promote("v0001")
    store.promote("v0002")  # replaces an existing CURRENT
    assert store.current_version() == "v0002"
    loaded = store.load()
    assert loaded.version == "v0002" and loaded.dictionary.k == 6
    assert np.array_equal(loaded.dictionary.centers, second.dictionary.centers)
    assert store.manifest("v0001")["k"] == 4
    # Same bytes as the local store would see, and no temporary file left behind.
    local = ModelStore(str(tmp_path / "store"))
    assert local.current_version() == "v0002"
    leftovers = [p.name for p in (tmp_path / "store").iterdir() if ".tmp" in p.name]
    assert leftovers == []  # (Hadoop's local filesystem adds a .CURRENT.crc checksum beside it)
    # Spark model writers get URIs inside the version folder.
    assert store.path("v0002", "spark/forest") == f"{uri}/v0002/spark/forest"


def test_the_stream_dedupe_state_through_hadoop(local_spark: Any, tmp_path: Path) -> None:
    """streaming.seen's files on a Hadoop filesystem decide as the local ones do."""
    from streaming.seen import HadoopFiles
    from tests.unit.test_seen import check_decisions

    files = HadoopFiles(f"file://{tmp_path}/dedupe", local_spark)
    check_decisions(files)
    assert sorted(n for n in files.names() if not n.startswith(".")) == [
        f"delta-{b:020d}"
        for b in range(4)  # batch 4 passed no new key
    ]
