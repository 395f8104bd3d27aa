"""Poison-batch quarantine on a real (local) Spark: a batch that fails in a way per-record
isolation cannot catch (the test-only hook of ``imagetag.pipeline``: an exception outside the
per-record steps, or a Python worker that dies) is narrowed down; the poison records are
dead-lettered alone with their original bytes and the rest of the batch is tagged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.backfill.readers import event_row, rows_frame
from imagetag.avro import AvroDeserializer
from imagetag.pipeline import POISON_ENV, POISON_MODE_ENV, CurrentModel, is_data_fault, tag_rows
from imagetag.settings import Settings
from tests.integration.backfill_helpers import hand_model, images, png

MARKER = "poison-for-the-quarantine-test"


@pytest.fixture(scope="module")
def model_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    store = str(tmp_path_factory.mktemp("quarantine-models"))
    hand_model(store, [png(image) for image in images(20, seed=3)])
    return Settings.load(model_store=store, spark={"shuffle_partitions": 2})


@pytest.fixture
def poison_hook(local_spark: Any, request: pytest.FixtureRequest) -> Iterator[None]:
    """Arm the hook for the Python workers of the Spark functions created from now on."""
    environment = local_spark.sparkContext.environment
    environment[POISON_ENV] = MARKER
    environment[POISON_MODE_ENV] = request.param
    yield
    environment.pop(POISON_ENV)
    environment.pop(POISON_MODE_ENV)


def kafka_rows(local_spark: Any, count: int, poison_at: set[int]) -> Any:
    rows = []
    for i, image in enumerate(images(count, seed=11)):
        metadata = {"note": MARKER} if i in poison_at else {}
        rows.append(
            event_row(
                png(image),
                source=f"test://{i}",
                label=None,
                metadata=metadata,
                produced_at_ms=1_700_000_000_000,
                topic="quarantine",
                partition=i % 3,
                offset=i,
                timestamp_ms=1_700_000_000_000,
            )
        )
    frame = rows_frame(rows)
    return local_spark.createDataFrame(frame).repartition(4)


@pytest.mark.parametrize("poison_hook", ["raise", "crash"], indirect=True)
def test_a_poisoned_batch_is_quarantined_and_the_rest_tagged(
    local_spark: Any, model_settings: Settings, poison_hook: None
) -> None:
    poison = {17, 131}  # the same topic partition (i % 3), far apart
    rows = kafka_rows(local_spark, 200, poison)
    rows = rows.withColumn("ms", rows["offset"] * 10)  # a column each outcome keeps (the stream's)
    model = CurrentModel(local_spark, model_settings).get()
    started = time.monotonic()
    tagged = tag_rows(rows, model, model_settings, "test batch", keep={"ms": "long"})
    seconds = time.monotonic() - started
    try:
        out = tagged.out.collect()
    finally:
        tagged.unpersist()
    assert tagged.quarantined == 2
    assert len(out) == len(tagged.meta) == 200
    # Every outcome, the good parts' and the poison letters', names its record and keeps its column.
    assert sorted(m.offset for m in tagged.meta) == list(range(200))
    assert all(m.ms == m.offset * 10 for m in tagged.meta)
    assert all(r.ms == r.offset * 10 for r in out)
    letters = [
        AvroDeserializer("DeadLetter")(r.value)
        for r in out
        if r.kind == "dead" and b"poison" in bytes(r.value)
    ]
    assert sorted(letter["offset"] for letter in letters) == sorted(poison)
    sent = {row.offset: bytes(row.value) for row in rows.collect()}
    for letter in letters:
        assert letter["stage"] == "tag" and letter["reason"] == "poison"
        assert letter["value"] == sent[letter["offset"]]  # the original record, byte for byte
    others = {r.kind for r in out if not (r.kind == "dead" and b"poison" in bytes(r.value))}
    assert others <= {"tagged", "review"}
    print(f"quarantine of 2 poison records in 200: {seconds:.1f}s")


def test_infrastructure_faults_are_not_data_faults(local_spark: Any, tmp_path: Path) -> None:
    """A missing input is the driver's own error, not a record's: it is raised, not narrowed."""
    with pytest.raises(Exception) as caught:
        local_spark.read.parquet(str(tmp_path / "nothing-here")).collect()
    assert not is_data_fault(caught.value)
