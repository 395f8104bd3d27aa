"""Plots as PNG bytes (imagetag.plots), the threshold curve, the bundle's plots, the benches'."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image

from batch.training.corpus import Corpus
from batch.training.metrics import classification_metrics, metrics_plots, threshold_curve
from batch.training.options import TrainOptions
from batch.training.stages import (
    CompiledForest,
    Encoded,
    FittedDictionary,
    Sample,
    Shards,
    TrainRun,
    bundle_stage,
)
from imagetag import plots
from imagetag.bundle import CONFUSION_PLOT, MANIFEST, THRESHOLD_PLOT, BundleError, ModelStore
from imagetag.dictionary import VisualDictionary
from imagetag.instrumentation import MemoryWatch, Progress
from imagetag.settings import Settings
from imagetag.testing.models import hand_built_bundle, small_featurizer, stump

FASHION = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _image(data: bytes) -> Image.Image:
    """``data`` decoded as a PNG (asserting the signature first)."""
    assert data.startswith(plots.PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def _curve() -> dict[str, list[Any]]:
    thresholds = [round(i * 0.05, 4) for i in range(21)]
    return {
        "thresholds": thresholds,
        "coverage": [round(1 - t * t, 4) for t in thresholds],
        "precision": [0.7 + 0.3 * t if t < 0.9 else None for t in thresholds],
    }


def test_confusion_png_is_readable_at_ten_classes() -> None:
    matrix = np.full((10, 10), 7) + np.diag(np.arange(10) * 100)
    image = _image(plots.confusion_png(FASHION, matrix))
    width, height = image.size
    assert width >= 600 and height >= 600  # room for ten names and three-digit counts
    with pytest.raises(ValueError, match="shape"):
        plots.confusion_png(FASHION[:3], matrix)


def test_threshold_png_takes_gaps_and_marks_the_threshold() -> None:
    image = _image(plots.threshold_png(_curve(), 0.40))
    assert image.size[0] > image.size[1] > 300
    with pytest.raises(ValueError, match="length"):
        plots.threshold_png({**_curve(), "coverage": [1.0]})


def test_latency_histogram_png_one_series_per_label() -> None:
    rng = np.random.default_rng(0)
    both = {"stream": list(rng.gamma(4, 0.4, 300)), "peer": list(rng.gamma(5, 0.5, 200))}
    assert _image(plots.latency_histogram_png(both)).size[0] > 500
    # Empty or missing data still makes a chart (that says so), never an error.
    _image(plots.latency_histogram_png({"stream": [1.0, 2.0], "peer": []}))
    _image(plots.latency_histogram_png({}))


def test_throughput_pngs() -> None:
    counts = [(i * 0.5, i * 0.5 * 300.0) for i in range(40)]
    line = plots.throughput_png({"stream": plots.rates_over_time(counts), "none": []})
    assert _image(line).size[0] > 500
    _image(plots.throughput_png({}))
    bars = plots.throughput_bars_png(
        {"32x32 PNG": {"confluent": 40_000.0, "perf-test": 52_000.0}, "JPEG": {"confluent": 900.0}}
    )
    assert _image(bars).size[0] >= 600
    _image(plots.throughput_bars_png({}))


def test_rates_over_time() -> None:
    counts = [(0.0, 0.0), (1.0, 100.0), (2.0, 200.0), (3.0, 330.0), (3.5, 400.0)]
    assert plots.rates_over_time(counts, window_s=2.0) == [(2.0, 100.0), (3.5, 200.0 / 1.5)]
    assert plots.rates_over_time(counts[:1]) == []


def test_render_keeps_what_drew_and_warns_about_the_rest(tmp_path: Path) -> None:
    warnings: list[str] = []

    def broken() -> bytes:
        raise RuntimeError("no fonts")

    drawn = plots.render({"good.png": lambda: b"png", "bad.png": broken}, warnings.append)
    assert drawn == {"good.png": b"png"}
    assert warnings == ["bad.png: not drawn (RuntimeError: no fonts)"]
    assert plots.save_pngs(tmp_path / "out", drawn) == [tmp_path / "out" / "good.png"]
    assert (tmp_path / "out" / "good.png").read_bytes() == b"png"


def test_threshold_curve_by_hand() -> None:
    truth = np.array([0, 1, 1])
    fractions = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])  # top: a right, a wrong, b right
    curve = threshold_curve(truth, fractions)
    assert len(curve["thresholds"]) == len(curve["coverage"]) == len(curve["precision"]) == 21
    assert curve["thresholds"][0] == 0.0 and curve["thresholds"][-1] == 1.0
    at = {t: (c, p) for t, c, p in zip(*curve.values(), strict=True)}
    assert at[0.0] == (1.0, pytest.approx(2 / 3, abs=1e-4))
    assert at[0.6] == (1.0, pytest.approx(2 / 3, abs=1e-4))  # >= t: 0.6 is still covered
    assert at[0.65] == (pytest.approx(2 / 3, abs=1e-4), 1.0)
    assert at[0.75] == (pytest.approx(1 / 3, abs=1e-4), 1.0)
    assert at[0.95] == (0.0, None)  # nothing covered: no precision
    fine = threshold_curve(truth, fractions, step=0.01)
    assert len(fine["thresholds"]) == 101 and fine["thresholds"][35] == 0.35
    with pytest.raises(ValueError):
        threshold_curve(truth, fractions, step=0.0)


def test_the_curve_agrees_with_the_metrics_at_the_threshold() -> None:
    rng = np.random.default_rng(3)
    fractions = rng.dirichlet(np.ones(4), 200)
    truth = rng.integers(-1, 4, 200)
    metrics = classification_metrics(truth, fractions, list("abcd"), threshold=0.4)
    curve = metrics["threshold_curve"]
    i = curve["thresholds"].index(0.4)
    assert curve["coverage"][i] == metrics["coverage"]
    assert curve["precision"][i] == metrics["top_tag_precision_covered"]
    json.dumps(metrics, allow_nan=False)  # the manifest stays strict JSON


def _metrics() -> dict[str, Any]:
    truth = np.array([0, 0, 1, 1])
    fractions = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.45, 0.55]])
    return classification_metrics(truth, fractions, ["bag", "shoe"], threshold=0.4)


def test_metrics_plots_are_the_bundles_two_pngs() -> None:
    pngs = metrics_plots(_metrics())
    assert sorted(pngs) == [CONFUSION_PLOT, THRESHOLD_PLOT]
    for data in pngs.values():
        _image(data)
    warnings: list[str] = []
    broken = {k: v for k, v in _metrics().items() if k != "threshold_curve"}
    assert sorted(metrics_plots(broken, warnings.append)) == [CONFUSION_PLOT]
    assert len(warnings) == 1 and warnings[0].startswith(f"{THRESHOLD_PLOT}: not drawn")


def test_store_writes_extra_files_next_to_the_manifest(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path))
    version = store.allocate_version()
    bundle = _bundle(version)
    for bad in ("../x.png", "/tmp/x.png", MANIFEST, "forest/x.png", ""):
        with pytest.raises(BundleError):
            store.write(bundle, files={bad: b"x"})
    store.write(bundle, files={"notes/a.png": b"png"})
    assert (tmp_path / version / "notes" / "a.png").read_bytes() == b"png"
    assert store.list_versions() == [version]  # the manifest went last, as always


def _bundle(version: str) -> Any:
    dictionary = VisualDictionary(np.random.default_rng(0).random((4, 128)).astype(np.float32))
    return hand_built_bundle(
        small_featurizer(), dictionary, stump(0, 0, 0.1, 0, 1, 2), ["bag", "shoe"], version=version
    )


def _bundle_stage(tmp_path: Path, metrics: dict[str, Any]) -> tuple[ModelStore, list[str], str]:
    """``bundle_stage`` of training on hand-built parts (no Spark: the first version of a store
    is promoted without scoring anything). Returns the store, the notes and the version."""
    store = ModelStore(str(tmp_path / "models"))
    notes: list[str] = []
    settings = Settings.model_validate({"model_store": store.uri})
    run = TrainRun(
        settings,
        TrainOptions(data="generated"),
        cast(Any, None),
        small_featurizer(),
        Progress(notes.append),
        store,
    )
    version = store.allocate_version()
    bundle = _bundle(version)
    corpus = Corpus([], ["bag", "shoe"], "sha256:00", {"train": 4, "test": 4}, "generated")
    bundle_stage(
        run,
        Shards(corpus, cast(Any, None), cast(Any, None)),
        Sample(cast(Any, None), color_k=2),
        FittedDictionary(bundle.dictionary, None),
        Encoded(cast(Any, None), cast(Any, None), ["bag", "shoe"], {"train": 4, "test": 4}),
        CompiledForest(version, bundle.forest, None),
        metrics,
        MemoryWatch(None),
    )
    return store, notes, version


def test_training_writes_the_plots_into_the_bundle(tmp_path: Path) -> None:
    store, notes, version = _bundle_stage(tmp_path, _metrics())
    folder = tmp_path / "models" / version
    for name in (CONFUSION_PLOT, THRESHOLD_PLOT):
        _image((folder / name).read_bytes())
    manifest = store.manifest(version)
    assert manifest["files"]["confusion_plot"] == CONFUSION_PLOT
    assert manifest["files"]["threshold_plot"] == THRESHOLD_PLOT
    assert len(manifest["metrics"]["threshold_curve"]["thresholds"]) == 21
    assert store.current_version() == version
    assert any(n.strip().startswith("plots: ") and str(folder / CONFUSION_PLOT) in n for n in notes)

    from imagetag.commands.model import plot_paths

    assert plot_paths(store, manifest) == [
        str(folder / CONFUSION_PLOT),
        str(folder / THRESHOLD_PLOT),
    ]


def test_a_failing_plot_does_not_fail_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("matplotlib is broken")

    monkeypatch.setattr(plots, "confusion_png", broken)
    store, notes, version = _bundle_stage(tmp_path, _metrics())
    folder = tmp_path / "models" / version
    assert not (folder / CONFUSION_PLOT).exists() and (folder / THRESHOLD_PLOT).exists()
    assert "confusion_plot" not in store.manifest(version)["files"]
    assert any("matplotlib is broken" in r.getMessage() for r in caplog.records)
    assert any(n.strip().startswith("warning: plot confusion.png") for n in notes)
    assert store.current_version() == version  # the bundle was written and promoted all the same


def test_bench_stream_plots(tmp_path: Path) -> None:
    from bench.bench_stream import write_plots

    rng = np.random.default_rng(1)
    written = write_plots(
        tmp_path,
        latencies_s={"stream": list(rng.gamma(4, 0.4, 100)), "peer": []},
        rates={"tag_batch loop": (900.0, 1), "stream local[4]": (1800.0, 4)},
        progress={"stream": [(i * 0.5, i * 100.0) for i in range(30)]},
        subtitle="900 images/s",
    )
    assert [p.name for p in written] == [
        "stream-latency.png",
        "stream-throughput.png",
        "stream-timeline.png",
    ]
    for path in written:
        _image(path.read_bytes())


def test_bench_producer_plots(tmp_path: Path) -> None:
    from bench.bench_producer import PERF_TEST, Row, plot_groups, write_plots

    rows = [
        Row("32x32 PNG", "confluent", 100, 2500, 40_000.0, 100.0, 52_000.0, 130.0),
        Row("32x32 PNG", "kafka-python", 100, 2500, 9_000.0, 22.5, 52_000.0, 130.0),
        Row("JPEG", "confluent", 10, 100_000, 900.0, 90.0),
    ]
    groups = plot_groups(rows)
    assert groups["images/s"] == {
        "32x32 PNG": {"confluent": 40_000.0, "kafka-python": 9_000.0, PERF_TEST: 52_000.0},
        "JPEG": {"confluent": 900.0},
    }
    assert groups["MB/s"]["32x32 PNG"][PERF_TEST] == 130.0
    written = write_plots(tmp_path, rows)
    assert [p.name for p in written] == ["producer-images.png", "producer-mb.png"]
    for path in written:
        _image(path.read_bytes())


def test_bench_backfill_plots(tmp_path: Path) -> None:
    from bench.bench_backfill import Row, plot_groups, write_plots
    from imagetag.instrumentation import MemoryPeaks

    rows = [
        Row(100_000, 60.0, 50.0, memory=MemoryPeaks(300.0, 2000.0, 150.0, 600.0, 10)),
        Row(400_000, 220.0, 200.0, memory=MemoryPeaks(310.0, 2100.0, 155.0, 610.0, 40)),
    ]
    groups = plot_groups(rows)
    assert groups["throughput"] == {
        "100,000 images": {"images/s": 2000.0},
        "400,000 images": {"images/s": 2000.0},
    }
    assert groups["memory"]["400,000 images"]["JVM"] == 2100.0
    written = write_plots(tmp_path, rows)
    assert [p.name for p in written] == ["backfill-throughput.png", "backfill-memory.png"]
    for path in written:
        _image(path.read_bytes())
