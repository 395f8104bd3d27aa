"""The tag query's de-duplication state (streaming.seen): decisions, window, crash and re-run."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming import seen
from streaming.seen import Files, LocalFiles, Record, SeenKeys

HOUR_MS = 3600 * 1000


def rec(key: str | None, ms: int, offset: int, partition: int = 0) -> Record:
    return Record(key, ms, "images", partition, offset)


def run(keys: SeenKeys, batch_id: int, records: list[Record]) -> list[int]:
    """Split and commit one batch; the offsets of its duplicates."""
    duplicates, new = keys.split(batch_id, records)
    keys.commit(batch_id, new)
    return sorted(d.offset for d in duplicates)


def check_decisions(files: Files) -> None:
    keys = SeenKeys(files, HOUR_MS)
    # Within a batch the first by timestamp passes, whatever the partition order says.
    assert run(keys, 0, [rec("a", 20, 1, partition=0), rec("a", 10, 7, partition=3)]) == [1]
    # Across batches within the window; a record without a key is never a duplicate.
    assert run(keys, 1, [rec("a", 30, 2), rec(None, 30, 3), rec(None, 30, 4), rec("b", 40, 5)]) == [
        2
    ]
    # The window moves with the newest record passed before a batch: "a" (first at 10 ms) has
    # left it once a record an hour and 1 ms later passed, and then passes again as a new
    # first; "b" (40 ms) is still inside.
    assert run(keys, 2, [rec("c", 10 + HOUR_MS + 1, 6)]) == []
    assert run(keys, 3, [rec("a", 10 + HOUR_MS + 2, 8), rec("b", 10 + HOUR_MS + 2, 9)]) == [9]
    assert run(keys, 4, [rec("a", 10 + HOUR_MS + 3, 10)]) == [10]


def test_repeats_are_dropped_within_the_window_and_pass_after_it(tmp_path: Path) -> None:
    check_decisions(LocalFiles(str(tmp_path / "dedupe")))


def test_a_batch_run_again_after_a_crash_decides_as_its_first_attempt(tmp_path: Path) -> None:
    root = str(tmp_path / "dedupe")
    first = SeenKeys(LocalFiles(root), HOUR_MS)
    assert run(first, 0, [rec("a", 1, 0), rec("b", 2, 1)]) == []
    batch_1 = [rec("a", 3, 2), rec("c", 4, 3)]
    assert run(first, 1, batch_1) == [2]  # ... and then Spark died before recording batch 1
    assert sorted(LocalFiles(root).names()) == [f"delta-{0:020d}", f"delta-{1:020d}"]

    again = SeenKeys(LocalFiles(root), HOUR_MS)  # the restart re-runs batch 1
    duplicates, new = again.split(1, batch_1)
    assert [d.offset for d in duplicates] == [2] and len(new) == 1  # "c" is new again
    assert LocalFiles(root).names() == [f"delta-{0:020d}"]  # the unfinished attempt's file went
    again.commit(1, new)
    assert run(again, 2, [rec("c", 5, 4), rec("b", 5, 5), rec("d", 5, 6)]) == [4, 5]


def test_snapshots_compact_the_files_and_load_as_the_deltas_did(tmp_path: Path) -> None:
    root = str(tmp_path / "dedupe")
    keys = SeenKeys(LocalFiles(root), HOUR_MS)
    every = seen.SNAPSHOT_EVERY
    for batch in range(every + 3):
        run(keys, batch, [rec(f"k{batch}", batch, batch), rec("k0", batch, 1000 + batch)])
    # Batch 99 started by writing the state before it and deleting the files before it.
    last = every - 1
    assert sorted(LocalFiles(root).names()) == [
        *(f"delta-{b:020d}" for b in range(last, every + 3)),
        f"snapshot-{last:020d}",
    ]
    reloaded = SeenKeys(LocalFiles(root), HOUR_MS)
    reloaded.load(every + 3)
    assert reloaded.first == keys.first and reloaded.newest == keys.newest
    assert list(reloaded.first) == list(keys.first)  # the same order: the same evictions


def test_the_compacting_batch_run_again_starts_from_its_snapshot(tmp_path: Path) -> None:
    root = str(tmp_path / "dedupe")
    first = SeenKeys(LocalFiles(root), HOUR_MS)
    last = seen.SNAPSHOT_EVERY - 1
    for batch in range(last):
        run(first, batch, [rec(f"k{batch}", batch, batch)])
    compacting = [rec("k3", last, 500), rec("new", last, 501)]
    assert run(first, last, compacting) == [500]  # ... and Spark died before recording it
    again = SeenKeys(LocalFiles(root), HOUR_MS)
    duplicates, new = again.split(last, compacting)
    assert [d.offset for d in duplicates] == [500] and len(new) == 1
    assert LocalFiles(root).names() == [f"snapshot-{last:020d}"]
    assert len(again.first) == last  # k0 .. k98, and not yet "new"


def test_an_unknown_file_is_an_error_not_an_empty_state(tmp_path: Path) -> None:
    files = LocalFiles(str(tmp_path))
    files.write(f"delta-{0:020d}", b"not ours")
    with pytest.raises(ValueError, match="not a de-duplication file"):
        SeenKeys(files, HOUR_MS).load(1)
