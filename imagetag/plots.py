"""Plots as PNG bytes: a confusion matrix, precision/coverage against the vote threshold,
latency histograms and throughput charts.

Each ``*_png`` function takes plain data (lists, dicts, numpy arrays) and returns the bytes of
a PNG file, so the caller writes them where it likes: a model bundle on a Hadoop filesystem,
a benchmark's output folder. Matplotlib is imported inside the functions (importing this
module costs nothing) and drawn with its Agg canvas on a ``Figure`` of its own: no pyplot, no
global backend switch, no display needed.

``render`` draws several plots and drops (with a warning) the ones that fail: a plot is a
convenience, and a job that made one must never fail because of it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 100


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _no_data(axes: Axes, text: str = "no data") -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="grey")


def confusion_png(
    classes: Sequence[str],
    matrix: Sequence[Sequence[int]] | np.ndarray,
    *,
    title: str = "confusion matrix",
) -> bytes:
    """A heat map of ``matrix`` (``[C, C]`` counts; rows: truth, columns: predicted) with the
    count in each cell and ``classes`` on both axes. A cell's colour is its share of its row
    (the recall of the true class), so classes of different sizes read alike.

    Raises ValueError when ``matrix`` is not ``len(classes)`` x ``len(classes)``.
    """
    n = len(classes)
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {n} classes")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = max(4.5, 0.62 * n + 2.8)
    figure = _figure(side + 1.0, side)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    names = [str(c) for c in classes]
    axes.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(n), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("truth")
    axes.set_title(title)
    font = 9 if n <= 12 else 7
    for row in range(n):
        for column in range(n):
            axes.text(
                column,
                row,
                str(counts[row, column]),
                ha="center",
                va="center",
                fontsize=font,
                color="white" if shares[row, column] > 0.55 else "black",
            )
    return _png(figure)


def _values(sequence: Sequence[float | None]) -> np.ndarray:
    """A float array with NaN for None (matplotlib leaves a gap there)."""
    return np.array([math.nan if v is None else float(v) for v in sequence], np.float64)


def _at(thresholds: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """The value at the grid point nearest ``threshold``."""
    return float(values[int(np.abs(thresholds - threshold).argmin())])


def threshold_png(
    curve: Mapping[str, Sequence[float | None]],
    threshold: float = 0.40,
    *,
    title: str = "precision and coverage against the vote threshold",
) -> bytes:
    """Precision and coverage (y, 0..1) against the vote threshold (x, 0..1), with a vertical
    line at ``threshold``. ``curve`` holds equal-length lists ``thresholds``, ``coverage``
    and ``precision`` (None where no image is covered), as ``threshold_curve`` of
    ``batch.training.metrics`` makes them.

    Raises KeyError for a missing list, ValueError for lists of different lengths.
    """
    thresholds = _values(curve["thresholds"])
    coverage = _values(curve["coverage"])
    precision = _values(curve["precision"])
    if not len(thresholds) == len(coverage) == len(precision):
        raise ValueError("thresholds, coverage and precision differ in length")
    figure = _figure(7.0, 4.5)
    axes = figure.add_subplot()
    marker = "o" if len(thresholds) <= 30 else None
    axes.plot(thresholds, precision, marker=marker, markersize=3, label="precision of the top tag")
    axes.plot(thresholds, coverage, marker=marker, markersize=3, label="coverage (images tagged)")
    axes.axvline(threshold, color="grey", linestyle="--", linewidth=1)
    if len(thresholds):
        at_p, at_c = _at(thresholds, precision, threshold), _at(thresholds, coverage, threshold)
        shown = "–" if math.isnan(at_p) else f"{at_p:.2f}"
        axes.annotate(
            f"threshold {threshold:.2f}\nprecision {shown}\ncoverage {at_c:.2f}",
            xy=(threshold, 0.03),
            xytext=(6, 0),
            textcoords="offset points",
            fontsize=8,
            color="dimgrey",
        )
    else:
        _no_data(axes)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("vote threshold (share of the trees voting for the top class)")
    axes.set_ylabel("share")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    return _png(figure)


def latency_histogram_png(
    latencies_s: Mapping[str, Sequence[float]],
    *,
    title: str = "latency",
    xlabel: str = "latency (s)",
    bins: int = 40,
) -> bytes:
    """Histograms of latencies in seconds, one series per label (e.g. ``stream``, ``peer``),
    on shared bins, with each series' p50 (dashed) and p99 (dotted) marked and given in the
    legend. Empty series are listed as such; all empty gives a "no data" chart."""
    from matplotlib import colormaps

    figure = _figure(7.5, 4.5)
    axes = figure.add_subplot()
    series = {}
    for label, values in latencies_s.items():
        array = np.asarray(values, np.float64).ravel()
        series[label] = array[np.isfinite(array)]
    if not any(len(values) for values in series.values()):
        _no_data(axes)
    else:
        edges = np.histogram_bin_edges(np.concatenate(list(series.values())), bins=bins)
        colours = colormaps["tab10"]
        for i, (label, values) in enumerate(series.items()):
            if not len(values):
                axes.plot([], [], " ", label=f"{label}: no data")
                continue
            colour = colours(i % 10)
            p50, p99 = np.percentile(values, [50, 99])
            axes.hist(
                values,
                bins=edges.tolist(),
                histtype="stepfilled",
                alpha=0.35,
                color=colour,
                edgecolor=colour,
                label=f"{label} ({len(values)})",
            )
            axes.axvline(p50, color=colour, linestyle="--", label=f"{label} p50 {p50:.2f} s")
            axes.axvline(p99, color=colour, linestyle=":", label=f"{label} p99 {p99:.2f} s")
        axes.legend(fontsize=8)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("images")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return _png(figure)


def throughput_png(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str = "throughput",
    xlabel: str = "time (s)",
    ylabel: str = "images/s",
) -> bytes:
    """Lines of ``(x, y)`` points, one series per label: images/s over time (``rates_over_time``
    turns cumulative counts into such points) or against any other x."""
    figure = _figure(7.5, 4.5)
    axes = figure.add_subplot()
    drawn = False
    for label, points in series.items():
        if not points:
            continue
        x, y = zip(*points, strict=True)
        axes.plot(x, y, marker="o" if len(points) <= 30 else None, markersize=3, label=label)
        drawn = True
    if drawn:
        axes.legend(fontsize=8)
        top = max((y for points in series.values() for _, y in points), default=0.0)
        axes.set_ylim(0.0, top * 1.1 if top > 0 else 1.0)
    else:
        _no_data(axes)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return _png(figure)


def throughput_bars_png(
    groups: Mapping[str, Mapping[str, float | None]],
    *,
    title: str = "throughput",
    ylabel: str = "images/s",
) -> bytes:
    """Grouped bars: one group per key of ``groups`` (a workload, a measure), one bar per
    inner key (a client, a configuration: the same colour in every group), its value written
    on top. A None value leaves its bar out."""
    from matplotlib import colormaps

    labels: list[str] = []
    for bars in groups.values():
        labels += [label for label in bars if label not in labels]
    figure = _figure(max(6.0, 1.2 + 0.9 * len(groups) * max(1, len(labels))), 4.5)
    axes = figure.add_subplot()
    if not labels:
        _no_data(axes)
    width = 0.8 / max(1, len(labels))
    colours = colormaps["tab10"]
    for i, label in enumerate(labels):
        x = [g + (i - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        heights = [bars.get(label) for bars in groups.values()]
        kept = [(xi, h) for xi, h in zip(x, heights, strict=True) if h is not None]
        if not kept:
            continue
        xs, hs = zip(*kept, strict=True)
        drawn = axes.bar(xs, hs, width=width * 0.95, color=colours(i % 10), label=label)
        axes.bar_label(drawn, labels=[_short(h) for h in hs], fontsize=8, padding=2)
    axes.set_xticks(range(len(groups)), list(groups))
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.margins(y=0.15)
    if labels:
        axes.legend(fontsize=8)
    return _png(figure)


def _short(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def rates_over_time(
    counts: Sequence[tuple[float, float]], window_s: float = 5.0
) -> list[tuple[float, float]]:
    """``(t, count)`` samples of a growing count (seconds, items done so far) -> ``(t, items/s)``
    over consecutive windows of about ``window_s`` seconds, stamped at each window's end.
    Fewer than two samples give no points."""
    points: list[tuple[float, float]] = []
    if len(counts) < 2:
        return points
    start_t, start_n = counts[0]
    for t, n in counts[1:]:
        if t - start_t >= window_s:
            points.append((t, (n - start_n) / (t - start_t)))
            start_t, start_n = t, n
    last_t, last_n = counts[-1]
    if last_t > start_t:  # a last, shorter window
        points.append((last_t, (last_n - start_n) / (last_t - start_t)))
    return points


def render(
    plots: Mapping[str, Callable[[], bytes]], warn: Callable[[str], None]
) -> dict[str, bytes]:
    """Draw each plot (name -> a function returning PNG bytes); returns name -> bytes of the
    ones drawn. A plot that raises is left out and reported through ``warn``: whatever
    matplotlib raises, a job must not fail because one of its charts did."""
    drawn: dict[str, bytes] = {}
    for name, draw in plots.items():
        try:
            drawn[name] = draw()
        except Exception as exc:  # any error of the plotting library: the plot is optional
            warn(f"{name}: not drawn ({type(exc).__name__}: {exc})")
    return drawn


def save_pngs(folder: str | Path, pngs: Mapping[str, bytes]) -> list[Path]:
    """Write each PNG as ``folder/name`` (the folder is created); returns the paths written.
    Raises OSError when a file cannot be written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in pngs.items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths
