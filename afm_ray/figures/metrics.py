"""Figures of the evaluation metrics (thesis Fig. 20): precision–recall curves, the confusion
matrix and the position-error histogram of :mod:`afm_ray.models.metrics`.

Matplotlib's object API (no pyplot, no global backend state); every figure is written as a PNG
by :func:`afm_ray.figures.scans.save_figure` at 120 dpi and its path returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from afm_ray.descriptors.xyz_codec import DEFAULT_REPORT_THRESHOLD
from afm_ray.models.metrics import ErrorStatistics, PrecisionRecall, XYZMetrics, ratio_or_one
from afm_ray.figures.scans import save_figure

METRIC_FIGURE_DPI = 120


def _new_figure(size: tuple[float, float] = (5.0, 4.0)) -> Figure:
    return Figure(figsize=size, layout="constrained")


def write_xyz_figures(metrics: XYZMetrics, out_dir: str | Path, prefix: str = "xyz") -> dict[str, Path]:
    """Write the PR curves (per box and per atom), confusion matrix and error histogram of
    ``metrics`` as ``{prefix}_pr_curve.png``, ``{prefix}_confusion_matrix.png`` and
    ``{prefix}_position_errors.png`` in ``out_dir`` (created); returns name → path."""
    out_dir = Path(out_dir)
    return {
        "pr_curve": plot_pr_curve({"per box": metrics.box, "per atom": metrics.atom}, out_dir / f"{prefix}_pr_curve.png",
                                  highlight_threshold=metrics.report_threshold),
        "confusion_matrix": plot_confusion_matrix(metrics.confusion, metrics.class_names,
                                                  out_dir / f"{prefix}_confusion_matrix.png"),
        "position_errors": plot_position_error_histogram(metrics.box_position_errors,
                                                         out_dir / f"{prefix}_position_errors.png"),
    }


def plot_pr_curve(curves: PrecisionRecall | dict[str, PrecisionRecall], path: str | Path,
                  highlight_threshold: float | None = DEFAULT_REPORT_THRESHOLD) -> Path:
    """Precision (y) against recall (x) over the threshold sweep, one line per curve, with the
    point at ``highlight_threshold`` marked red as in thesis Fig. 20c. Returns the PNG path."""
    if isinstance(curves, PrecisionRecall):
        curves = {"": curves}
    figure = _new_figure()
    axes = figure.add_subplot()
    for label, curve in curves.items():
        axes.plot(curve.recall, curve.precision, marker=".", label=label or None)
        if highlight_threshold is not None and np.any(np.isclose(curve.thresholds, highlight_threshold)):
            precision, recall = curve.at(highlight_threshold)
            axes.plot([recall], [precision], "o", color="red")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
             title="Precision–recall over confidence thresholds")
    if any(curves):
        axes.legend(loc="lower left")
    axes.grid(alpha=0.3)
    return save_figure(figure, path, dpi=METRIC_FIGURE_DPI)


def plot_confusion_matrix(matrix, class_names: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix normalised by the true class (rows), counts in parentheses (thesis
    Fig. 20a,b). Rows are true classes, columns predicted. Returns the PNG path."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix {matrix.shape} does not fit {len(class_names)} class names")
    rates = ratio_or_one(matrix, matrix.sum(axis=1, keepdims=True))
    rates = np.where(matrix.sum(axis=1, keepdims=True) > 0, rates, 0.0)
    figure = _new_figure((1.6 + 1.1 * len(class_names), 1.2 + 1.0 * len(class_names)))
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if rates[row, column] > 0.5 else "black"
        axes.text(column, row, f"{rates[row, column]:.3f}\n({count})", ha="center", va="center", color=colour)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names)
    axes.set_yticks(ticks, class_names)
    axes.set(xlabel="predicted class", ylabel="true class")
    figure.colorbar(image, ax=axes, fraction=0.046)
    return save_figure(figure, path, dpi=METRIC_FIGURE_DPI)


def plot_position_error_histogram(errors, path: str | Path, bins: int = 50,
                                  max_error: float | None = None) -> Path:
    """Histogram of L2 position errors (Å) with the mean and 90th percentile marked (thesis
    Fig. 20d). ``max_error`` clips the range (outliers beyond it are left out of the bars)."""
    errors = np.asarray(errors, dtype=np.float64)
    statistics = ErrorStatistics.of(errors)
    figure = _new_figure()
    axes = figure.add_subplot()
    if len(errors):
        upper = max_error if max_error is not None else max(float(np.percentile(errors, 99.5)), 1e-3)
        axes.hist(errors, bins=bins, range=(0.0, upper), color="tab:blue")
        axes.axvline(statistics.mean, color="black", linestyle="--", label=f"mean {statistics.mean:.3f} Å")
        axes.axvline(statistics.p90, color="red", linestyle=":", label=f"90th percentile {statistics.p90:.3f} Å")
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no atoms", ha="center", va="center", transform=axes.transAxes)
    axes.set(xlabel="position error (Å)", ylabel="atoms", title=f"L2 position error (n = {statistics.count})")
    return save_figure(figure, path, dpi=METRIC_FIGURE_DPI)
