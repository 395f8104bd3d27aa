"""Retraining on the real stack: a retrain that beats CURRENT is promoted and its re-tag leaves
no Solr document on the old model_version; one that does not beat it changes nothing; an
unchanged corpus is not retrained."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pytest

from batch.backfill import BackfillOptions, run_backfill
from batch.retrain import RetrainOptions, retrain_once
from imagetag.avro import AvroDeserializer
from imagetag.bundle import ModelStore
from imagetag.datasets import FASHION_MNIST_LABELS, fashion_mnist_paths, read_idx
from imagetag.settings import Settings
from imagetag.testing.services import solr_docs, topic_values
from tests.integration.backfill_helpers import hand_model, sha256, write_archive

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.integration

LABELS = [name.replace("/", "-") for name in FASHION_MNIST_LABELS]  # folder-safe class names
SMALL = {"k": 32, "trees": 20, "levels": 1, "sample_size": 20_000}  # ~1 minute here


def fashion(split: Literal["train", "test"], count: int) -> list[tuple[bytes, str]]:
    records = read_idx(*fashion_mnist_paths(split), start=0, count=count, label_names=LABELS)
    return [(r.data, str(r.label)) for r in records]


@pytest.fixture
def retrain_settings(isolated_settings: Settings, tmp_path: Path) -> Settings:
    return isolated_settings.derive(
        model_store=str(tmp_path / "models"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        archive_dir=str(tmp_path / "archive"),
    )


def test_retrain_promotes_a_better_model_and_retags_everything(
    spark: SparkSession, retrain_settings: Settings, tmp_path: Path
) -> None:
    settings = retrain_settings
    archived = fashion("test", 300)
    write_archive(spark, settings, archived)
    training = tmp_path / "training"
    for i, (data, label) in enumerate(fashion("train", 300)):
        (training / label).mkdir(parents=True, exist_ok=True)
        (training / label / f"{i}.png").write_bytes(data)

    # CURRENT = a hand-built model that knows none of these classes; index the archive with it.
    old = hand_model(settings.model_store, [d for d, _ in archived[:60]])
    first = run_backfill(spark, settings, BackfillOptions(source="archive", progress=False))
    assert first.images == 300
    assert set(Counter(d["model_version"] for d in solr_docs(settings))) == {old}

    options = RetrainOptions(data=(str(training),), train=SMALL, progress=False)
    result = retrain_once(spark, settings, options)
    assert result.images == 600 and result.from_archive == 300
    assert result.promoted, result.reason
    new = result.version
    assert new != old and ModelStore(settings.model_store).current_version() == new
    assert result.backfill is not None and result.backfill.retag == "all"

    # No document is left on the old model: each archived image is in Solr tagged by the new
    # model, or (undecided by it) in review with a TagResult of the new model.
    docs = solr_docs(settings)
    assert {d["model_version"] for d in docs} == {new}
    deserialize = AvroDeserializer("TagResult")
    reviewed = {
        r["id"]
        for r in map(deserialize, topic_values(settings, settings.kafka.topic_review))
        if r["model_version"] == new
    }

    assert {d["id"] for d in docs} | reviewed == {sha256(d) for d, _ in archived}
    assert not {d["id"] for d in docs} & reviewed

    # The same corpus again: nothing to learn, no training.
    again = retrain_once(spark, settings, options)
    assert again.skipped and again.version is None

    # A much weaker model is trained (forced) but not promoted: CURRENT and Solr stay.
    weak = retrain_once(
        spark,
        settings,
        RetrainOptions(
            data=(str(training),),
            train={"k": 4, "trees": 1, "depth": 2, "levels": 1, "sample_size": 2000},
            force=True,
            progress=False,
        ),
    )
    assert weak.version not in (None, new) and not weak.promoted, weak.reason
    assert weak.backfill is None
    assert ModelStore(settings.model_store).current_version() == new
    assert {d["model_version"] for d in solr_docs(settings)} == {new}
