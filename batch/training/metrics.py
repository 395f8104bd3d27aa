"""Metrics of the compiled forest's hard votes on the held-out split, their printed form, and
the plots that go into the bundle next to its manifest."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from imagetag.bundle import CONFUSION_PLOT, THRESHOLD_PLOT

log = logging.getLogger("imagetag.train")

CURVE_STEP = 0.05  # 21 points: small enough for the manifest, fine enough to choose from


def threshold_curve(
    truth: np.ndarray, fractions: np.ndarray, step: float = CURVE_STEP
) -> dict[str, list[Any]]:
    """Coverage and precision of the top tag for vote thresholds ``0, step, ..., 1``.

    ``truth``: class indices (-1: a class the model does not know, always wrong);
    ``fractions``: ``[n, C]`` vote fractions. At threshold ``t`` an image is *covered* when its
    top vote fraction is ``>= t``; coverage is the share of all images covered, precision the
    share of covered images whose top class (argmax, ties: first class) is the truth, None
    when none is covered. Returns ``{"thresholds", "coverage", "precision"}``, equal-length
    lists rounded to 4 places. Raises ValueError for a ``step`` outside (0, 1].
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    truth = np.asarray(truth, np.int64)
    fractions = np.asarray(fractions, np.float64)
    n = len(fractions)
    # Rounded, so that 0.35 is the float a vote fraction of 35/100 is, not 7 * 0.05.
    thresholds = [round(i * step, 4) for i in range(round(1 / step) + 1)]
    confidence = fractions.max(axis=1) if n else np.zeros(0)
    right = fractions.argmax(axis=1) == truth if n else np.zeros(0, bool)
    coverage: list[float] = []
    precision: list[float | None] = []
    for t in thresholds:
        covered = confidence >= t
        coverage.append(round(float(covered.mean()), 4) if n else 0.0)
        precision.append(round(float(right[covered].mean()), 4) if covered.any() else None)
    return {"thresholds": thresholds, "coverage": coverage, "precision": precision}


def classification_metrics(
    truth: np.ndarray, fractions: np.ndarray, classes: list[str], threshold: float
) -> dict[str, Any]:
    """Metrics of hard votes: ``truth`` class indices (-1: a class the model does not know),
    ``fractions`` ``[n, C]`` vote fractions. Winner = argmax (ties: first class).
    """
    truth = np.asarray(truth, np.int64)
    fractions = np.asarray(fractions, np.float64)
    n, n_classes = fractions.shape
    predicted = fractions.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    known = truth >= 0
    np.add.at(confusion, (truth[known], predicted[known]), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted_count, out=np.zeros_like(tp), where=predicted_count > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    confidence = fractions.max(axis=1)
    covered = confidence >= threshold
    kept = fractions >= threshold  # every (image, class) tag kept at the threshold
    correct_kept = kept[np.arange(n), np.maximum(truth, 0)] & known
    return {
        "test_images": int(n),
        "accuracy": round(float((predicted == truth).mean()), 4) if n else 0.0,
        "macro_f1": round(float(f1[support > 0].mean()), 4) if (support > 0).any() else 0.0,
        "per_class": {
            c: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": {"classes": classes, "matrix": confusion.tolist()},
        "threshold": threshold,
        "coverage": round(float(covered.mean()), 4) if n else 0.0,
        "kept_tags": int(kept.sum()),
        "kept_tag_precision": round(float(correct_kept.sum() / max(kept.sum(), 1)), 4),
        "top_tag_precision_covered": (
            round(float((predicted[covered] == truth[covered]).mean()), 4) if covered.any() else 0.0
        ),
        "mean_confidence": round(float(confidence.mean()), 4) if n else 0.0,
        "threshold_curve": threshold_curve(truth, fractions),
    }


def format_metrics(metrics: dict[str, Any]) -> list[str]:
    """Human-readable lines: headline figures, per-class table, confusion matrix."""
    lines = [
        f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
        f"({metrics['test_images']} held-out images)",
        f"at vote threshold {metrics['threshold']:.2f}: coverage {metrics['coverage']:.4f}, "
        f"precision of kept tags {metrics['kept_tag_precision']:.4f} "
        f"({metrics['kept_tags']} tags), top-tag precision on covered "
        f"{metrics['top_tag_precision_covered']:.4f}",
        f"{'class':<14} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"{name[:14]:<14} {row['precision']:>9.4f} {row['recall']:>7.4f} "
            f"{row['f1']:>7.4f} {row['support']:>8d}"
        )
    classes = metrics["confusion"]["classes"]
    width = max(6, *(len(str(v)) + 1 for r in metrics["confusion"]["matrix"] for v in r))
    lines.append("confusion (rows: truth, columns: predicted)")
    lines.append(" " * 14 + "".join(f"{c[: width - 1]:>{width}}" for c in classes))
    for name, row in zip(classes, metrics["confusion"]["matrix"], strict=True):
        lines.append(f"{name[:14]:<14}" + "".join(f"{v:>{width}d}" for v in row))
    return lines


def metrics_plots(
    metrics: dict[str, Any], warn: Callable[[str], None] | None = None
) -> dict[str, bytes]:
    """The bundle's plots drawn from ``classification_metrics``' output: file name -> PNG
    bytes for ``confusion.png`` (the confusion matrix) and ``threshold.png`` (precision and
    coverage against the vote threshold, the bundle's threshold marked). A plot whose data is
    missing or whose drawing fails is left out and reported through ``warn`` (default: a
    warning in the log): plots never fail a training."""
    from imagetag import plots

    def confusion() -> bytes:
        return plots.confusion_png(
            metrics["confusion"]["classes"],
            metrics["confusion"]["matrix"],
            title="confusion on the held-out split (rows: truth, columns: predicted)",
        )

    def threshold() -> bytes:
        return plots.threshold_png(
            metrics["threshold_curve"],
            float(metrics["threshold"]),
            title=f"top tag on the held-out split ({metrics['test_images']} images)",
        )

    return plots.render(
        {CONFUSION_PLOT: confusion, THRESHOLD_PLOT: threshold},
        warn or (lambda message: log.warning("bundle plot %s", message)),
    )
