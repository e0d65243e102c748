"""Evaluation of the models (thesis 3.3 and 4, Fig. 20): decoding the xyz grid into atoms,
non-maximum suppression, precision/recall, confusion matrix, position errors, per-output MSE,
and their plots.

The xyz grid (shared with ``afm_ray.descriptors`` and :mod:`afm_ray.models.xyz`):

* class tensor ``(B, n_classes, H, W)`` — probabilities, or one-hot for a target; channel 0 is
  background, channels ``1..`` the atom classes (one in the thesis, or element groups);
* offsets ``(B, 3, H, W)`` in Å — x, y relative to the box centre, z relative to the top
  nucleus (z ≤ 0).

Box ``(i, j)`` covers ``[i·s, (i+1)·s) × [j·s, (j+1)·s)`` Å of the scan window, ``i`` along x
(tensor axis 2), ``j`` along y (axis 3), box size ``s = 1 Å`` (16 × 16 boxes over 16 × 16 Å). A
decoded atom sits at ``(box centre + offset_xy, offset_z)`` with its *confidence*
``1 − p_background`` and its class ``1 + argmax`` over the atom channels.

Two ways to count, both reported by :class:`XYZEvaluator`:

* **per box** (the thesis' figures): a box is predicted "atom" when its confidence ≥ the
  threshold; TP/FP/FN compare that with the target box. The position error is
  ``|r_i − q_i|`` in every box that holds a true atom, whatever the prediction (so outliers of
  several Å appear, as the thesis notes).
* **per atom** (beyond the thesis): predicted atoms above the threshold after NMS are matched
  greedily, highest confidence first, to the nearest unmatched true atom within the match
  radius (default 0.5 Å, half a box and below the 0.74 Å H–H bond, so one true atom can never
  satisfy two predictions that survived NMS); unmatched predictions are FP, unmatched true
  atoms FN. Classes are ignored by this matching.

Thresholds compare with ``>=``. Precision is 1 when nothing is predicted and recall is 1 when
there is nothing to find, so curves stay finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

DEFAULT_BOX_SIZE = 1.0          # Å
DEFAULT_NMS_RADIUS = 0.5        # Å, thesis R_nms
DEFAULT_MATCH_RADIUS = 0.5      # Å
DEFAULT_REPORT_THRESHOLD = 0.5  # the thesis reports precision/recall at confidence 0.5
DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def _check_grid(class_probs: np.ndarray, offsets: np.ndarray | None = None) -> None:
    if class_probs.ndim != 4 or class_probs.shape[1] < 2:
        raise ValueError(f"class tensor must be (B, n_classes>=2, H, W), got {class_probs.shape}")
    if offsets is not None and offsets.shape != (class_probs.shape[0], 3, *class_probs.shape[2:]):
        raise ValueError(f"offsets must be (B, 3, H, W) matching the class tensor {class_probs.shape}, "
                         f"got {offsets.shape}")


def _safe_ratio(numerator, denominator) -> np.ndarray:
    """``numerator / denominator``, and 1 where the denominator is 0."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, dtype=np.float64),
                                                 np.asarray(denominator, dtype=np.float64))
    return np.divide(numerator, denominator, out=np.ones(numerator.shape), where=denominator > 0)


# -- atoms --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Atoms:
    """Atoms of one sample decoded from an xyz grid.

    Attributes:
        positions: ``(N, 3)`` Å; x, y from the scan window's corner, z from the top nucleus.
        confidence: ``(N,)`` in [0, 1], ``1 − p_background`` of the atom's box (1 for targets).
        classes: ``(N,)`` int, the atom class channel (1 = "atom" without element classes).
    """

    positions: np.ndarray
    confidence: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.confidence)

    def select(self, keep: np.ndarray) -> "Atoms":
        return Atoms(self.positions[keep], self.confidence[keep], self.classes[keep])


def box_centres(height: int, width: int, box_size: float = DEFAULT_BOX_SIZE) -> np.ndarray:
    """``(H, W, 2)`` xy centres of the grid boxes in Å, from the scan window's corner."""
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return (np.stack((i, j), axis=-1) + 0.5) * box_size


def box_confidence(class_probs) -> np.ndarray:
    """``(B, H, W)`` confidence that a box holds an atom: ``1 − p_background``."""
    class_probs = _numpy(class_probs)
    _check_grid(class_probs)
    return 1.0 - class_probs[:, 0]


def decode_xyz(class_probs, offsets, threshold: float = DEFAULT_REPORT_THRESHOLD,
               box_size: float = DEFAULT_BOX_SIZE, nms_radius: float | None = DEFAULT_NMS_RADIUS) -> list[Atoms]:
    """Turn a predicted (or target) xyz grid into a list of atoms per sample.

    Args:
        class_probs: ``(B, n_classes, H, W)`` probabilities or one-hot, channel 0 background.
        offsets: ``(B, 3, H, W)`` Å (see the module doc).
        threshold: keep boxes whose confidence ``1 − p_background`` is ≥ this.
        box_size: box edge in Å (thesis 1 Å: 16 boxes over the 16 Å window).
        nms_radius: drop atoms closer than this (Å) to a more confident kept atom; ``None`` or 0
            to skip NMS (use for targets).

    Returns:
        ``B`` :class:`Atoms`, each sorted by decreasing confidence.
    """
    class_probs, offsets = _numpy(class_probs), _numpy(offsets)
    _check_grid(class_probs, offsets)
    confidence = 1.0 - class_probs[:, 0]
    classes = 1 + np.argmax(class_probs[:, 1:], axis=1)
    centres = box_centres(*class_probs.shape[2:], box_size)
    samples = []
    for b in range(class_probs.shape[0]):
        keep = confidence[b] >= threshold
        xy = centres[keep] + offsets[b, :2].transpose(1, 2, 0)[keep]
        z = offsets[b, 2][keep]
        order = np.argsort(-confidence[b][keep], kind="stable")
        atoms = Atoms(np.column_stack((xy, z))[order], confidence[b][keep][order], classes[b][keep][order])
        if nms_radius:
            atoms = non_max_suppression(atoms, nms_radius)
        samples.append(atoms)
    return samples


def non_max_suppression(atoms: Atoms, radius: float = DEFAULT_NMS_RADIUS) -> Atoms:
    """Greedy NMS: going from the most confident atom down, drop every atom closer than
    ``radius`` (Å, 3D distance) to an atom already kept. Returns the kept atoms, most confident first.
    """
    if radius < 0:
        raise ValueError(f"NMS radius must be >= 0, got {radius}")
    order = np.argsort(-atoms.confidence, kind="stable")
    positions = atoms.positions[order]
    kept: list[int] = []
    for index in range(len(order)):
        if kept:
            distances = np.linalg.norm(positions[kept] - positions[index], axis=1)
            if np.any(distances < radius):
                continue
        kept.append(index)
    return atoms.select(order[np.array(kept, dtype=np.int64)])


@dataclass(frozen=True)
class AtomMatch:
    """Result of :func:`match_atoms`: index pairs and their distances (Å)."""

    predicted_index: np.ndarray
    true_index: np.ndarray
    distance: np.ndarray


def match_atoms(predicted: Atoms, true_positions, radius: float = DEFAULT_MATCH_RADIUS) -> AtomMatch:
    """Match predicted atoms, most confident first, to the nearest still unmatched true atom
    within ``radius`` Å (distance ≤ radius).

    ``true_positions`` is ``(M, 3)`` Å or an :class:`Atoms`. Because the order is by
    confidence, the matches of the atoms above any threshold are the same as when matching
    only those atoms — one pass serves a whole PR curve.
    """
    if isinstance(true_positions, Atoms):
        true_positions = true_positions.positions
    true_positions = np.asarray(true_positions, dtype=np.float64).reshape(-1, 3)
    order = np.argsort(-predicted.confidence, kind="stable")
    taken = np.zeros(len(true_positions), dtype=bool)
    pairs = []
    for index in order:
        if taken.all():
            break
        distances = np.linalg.norm(true_positions - predicted.positions[index], axis=1)
        distances[taken] = np.inf
        nearest = int(np.argmin(distances))
        if distances[nearest] <= radius:
            taken[nearest] = True
            pairs.append((index, nearest, distances[nearest]))
    if not pairs:
        return AtomMatch(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    predicted_index, true_index, distance = zip(*pairs)
    return AtomMatch(np.array(predicted_index, np.int64), np.array(true_index, np.int64), np.array(distance))


# -- counts -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrecisionRecall:
    """Counts and rates at one or more thresholds (arrays of equal length)."""

    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    false_negatives: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        return _safe_ratio(self.true_positives, self.true_positives + self.false_positives)

    @property
    def recall(self) -> np.ndarray:
        return _safe_ratio(self.true_positives, self.true_positives + self.false_negatives)

    def at(self, threshold: float) -> tuple[float, float]:
        """``(precision, recall)`` at a threshold of the sweep."""
        index = _threshold_index(self.thresholds, threshold)
        return float(self.precision[index]), float(self.recall[index])


def _threshold_index(thresholds: np.ndarray, threshold: float) -> int:
    matches = np.flatnonzero(np.isclose(thresholds, threshold))
    if not len(matches):
        raise ValueError(f"threshold {threshold} is not in the sweep {list(thresholds)}")
    return int(matches[0])


def _count_at_least(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many ``values`` are ≥ it."""
    return len(values) - np.searchsorted(np.sort(values), thresholds, side="left")


def box_precision_recall(class_probs, class_target, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
                         ) -> PrecisionRecall:
    """Per-box atom/background precision and recall over a sweep of confidence thresholds
    (thesis Fig. 20c); any atom class counts as "atom"."""
    confidence = box_confidence(class_probs)
    is_atom = _true_atom_boxes(class_target, confidence.shape)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    tp = _count_at_least(confidence[is_atom], thresholds)
    fp = _count_at_least(confidence[~is_atom], thresholds)
    return PrecisionRecall(thresholds, tp, fp, int(is_atom.sum()) - tp)


def _true_atom_boxes(class_target, expected_shape) -> np.ndarray:
    class_target = _numpy(class_target)
    _check_grid(class_target)
    if class_target.shape[0:1] + class_target.shape[2:] != tuple(expected_shape):
        raise ValueError(f"class target {class_target.shape} does not match the prediction grid {expected_shape}")
    return class_target[:, 0] < 0.5


def confusion_matrix(class_probs, class_target, threshold: float = DEFAULT_REPORT_THRESHOLD) -> np.ndarray:
    """``(n_classes, n_classes)`` box counts, row = true class, column = predicted class.

    A box is predicted background when its confidence is below ``threshold``, else the most
    probable atom class (thesis Fig. 20a,b with two classes).
    """
    class_probs, class_target = _numpy(class_probs), _numpy(class_target)
    _check_grid(class_probs)
    if class_target.shape != class_probs.shape:
        raise ValueError(f"class target {class_target.shape} != class prediction {class_probs.shape}")
    n_classes = class_probs.shape[1]
    predicted = np.where(1.0 - class_probs[:, 0] >= threshold, 1 + np.argmax(class_probs[:, 1:], axis=1), 0)
    true = np.argmax(class_target, axis=1)
    return np.bincount((true * n_classes + predicted).ravel(), minlength=n_classes ** 2).reshape(n_classes, n_classes)


def box_position_errors(offsets, offsets_target, class_target) -> np.ndarray:
    """L2 errors ``|r_i − q_i|`` (Å) in every box holding a true atom, flattened (thesis Fig. 20d)."""
    offsets, offsets_target = _numpy(offsets), _numpy(offsets_target)
    if offsets.shape != offsets_target.shape:
        raise ValueError(f"offsets {offsets.shape} != target offsets {offsets_target.shape}")
    is_atom = _true_atom_boxes(class_target, (offsets.shape[0], *offsets.shape[2:]))
    return np.linalg.norm(offsets - offsets_target, axis=1)[is_atom]


@dataclass(frozen=True)
class ErrorStatistics:
    """Summary of position errors (Å): count, mean, median and 90th percentile (NaN when empty)."""

    count: int
    mean: float
    median: float
    p90: float

    @classmethod
    def of(cls, errors) -> "ErrorStatistics":
        errors = np.asarray(errors, dtype=np.float64)
        if not len(errors):
            return cls(0, float("nan"), float("nan"), float("nan"))
        return cls(len(errors), float(errors.mean()), float(np.median(errors)), float(np.percentile(errors, 90)))


# -- accumulating evaluation of the xyz model ---------------------------------------------------

@dataclass(frozen=True)
class XYZMetrics:
    """Everything :class:`XYZEvaluator` gathered over a data set."""

    class_names: tuple[str, ...]
    report_threshold: float
    box: PrecisionRecall
    atom: PrecisionRecall
    confusion: np.ndarray
    box_position_errors: np.ndarray
    matched_position_errors: np.ndarray

    def summary(self) -> dict[str, float]:
        """Flat figures for logging (MLflow): rates at the report threshold and error statistics (Å)."""
        box_precision, box_recall = self.box.at(self.report_threshold)
        atom_precision, atom_recall = self.atom.at(self.report_threshold)
        box_errors = ErrorStatistics.of(self.box_position_errors)
        matched_errors = ErrorStatistics.of(self.matched_position_errors)
        return {
            "box_precision": box_precision, "box_recall": box_recall,
            "atom_precision": atom_precision, "atom_recall": atom_recall,
            "position_error_mean": box_errors.mean, "position_error_p90": box_errors.p90,
            "matched_position_error_mean": matched_errors.mean, "matched_position_error_p90": matched_errors.p90,
            "n_true_atoms": float(box_errors.count),
        }

    def write_plots(self, out_dir: str | Path, prefix: str = "xyz") -> dict[str, Path]:
        """Write the PR curve, confusion matrix and error histogram PNGs; returns their paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        return {
            "pr_curve": plot_pr_curve({"per box": self.box, "per atom": self.atom}, out_dir / f"{prefix}_pr_curve.png",
                                      highlight_threshold=self.report_threshold),
            "confusion_matrix": plot_confusion_matrix(self.confusion, self.class_names,
                                                      out_dir / f"{prefix}_confusion_matrix.png"),
            "position_errors": plot_position_error_histogram(self.box_position_errors,
                                                             out_dir / f"{prefix}_position_errors.png"),
        }


@dataclass
class XYZEvaluator:
    """Accumulates xyz-model statistics batch by batch; :meth:`result` gives :class:`XYZMetrics`.

    Args:
        thresholds: confidence sweep for the PR curves (the report threshold is added if missing).
        report_threshold: threshold of the confusion matrix, summary rates and matched errors.
        box_size, nms_radius, match_radius: Å, see the module doc.
        class_names: names of the class channels (default ``background``, ``atom``, ``class2``…).
    """

    thresholds: Sequence[float] = DEFAULT_THRESHOLDS
    report_threshold: float = DEFAULT_REPORT_THRESHOLD
    box_size: float = DEFAULT_BOX_SIZE
    nms_radius: float = DEFAULT_NMS_RADIUS
    match_radius: float = DEFAULT_MATCH_RADIUS
    class_names: Sequence[str] | None = None
    _box_counts: np.ndarray | None = field(default=None, init=False, repr=False)
    _atom_counts: np.ndarray | None = field(default=None, init=False, repr=False)
    _confusion: np.ndarray | None = field(default=None, init=False, repr=False)
    _box_errors: list = field(default_factory=list, init=False, repr=False)
    _matched_errors: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        sweep = np.unique(np.append(np.asarray(self.thresholds, dtype=np.float64), self.report_threshold))
        if np.any((sweep < 0) | (sweep > 1)):
            raise ValueError(f"confidence thresholds must lie in [0, 1], got {list(sweep)}")
        self.thresholds = sweep

    def update(self, class_probs, offsets, class_target, offsets_target) -> None:
        """Add a batch: predictions and targets in the grid layout of the module doc."""
        class_probs, offsets = _numpy(class_probs), _numpy(offsets)
        class_target, offsets_target = _numpy(class_target), _numpy(offsets_target)
        _check_grid(class_probs, offsets)
        _check_grid(class_target, offsets_target)

        box = box_precision_recall(class_probs, class_target, self.thresholds)
        confusion = confusion_matrix(class_probs, class_target, self.report_threshold)
        self._box_errors.append(box_position_errors(offsets, offsets_target, class_target))

        lowest = float(self.thresholds[0])
        predictions = decode_xyz(class_probs, offsets, lowest, self.box_size, self.nms_radius)
        truths = decode_xyz(class_target, offsets_target, 0.5, self.box_size, nms_radius=None)
        atom_counts = np.zeros((3, len(self.thresholds)), dtype=np.int64)
        for predicted, true in zip(predictions, truths):
            match = match_atoms(predicted, true, self.match_radius)
            is_matched = np.zeros(len(predicted), dtype=bool)
            is_matched[match.predicted_index] = True
            tp = _count_at_least(predicted.confidence[is_matched], self.thresholds)
            atom_counts += np.stack((tp, _count_at_least(predicted.confidence[~is_matched], self.thresholds),
                                     len(true) - tp))
            reported = predicted.confidence[match.predicted_index] >= self.report_threshold
            self._matched_errors.append(match.distance[reported])

        box_counts = np.stack((box.true_positives, box.false_positives, box.false_negatives))
        self._box_counts = box_counts if self._box_counts is None else self._box_counts + box_counts
        self._atom_counts = atom_counts if self._atom_counts is None else self._atom_counts + atom_counts
        self._confusion = confusion if self._confusion is None else self._confusion + confusion

    def merge(self, other: "XYZEvaluator") -> None:
        """Add ``other``'s statistics (another rank's share of the same set): as if one had seen both."""
        if other._confusion is None:
            return
        if self._confusion is None:
            self._box_counts, self._atom_counts = other._box_counts.copy(), other._atom_counts.copy()
            self._confusion = other._confusion.copy()
        else:
            self._box_counts = self._box_counts + other._box_counts
            self._atom_counts = self._atom_counts + other._atom_counts
            self._confusion = self._confusion + other._confusion
        self._box_errors.extend(other._box_errors)
        self._matched_errors.extend(other._matched_errors)

    def result(self) -> XYZMetrics:
        if self._confusion is None:
            raise ValueError("XYZEvaluator.result() called before any update()")
        n_classes = self._confusion.shape[0]
        names = tuple(self.class_names) if self.class_names is not None else (
            ("background", "atom") + tuple(f"class{k}" for k in range(2, n_classes)))[:n_classes]
        if len(names) != n_classes:
            raise ValueError(f"{len(names)} class names for {n_classes} classes")
        return XYZMetrics(
            class_names=names, report_threshold=float(self.report_threshold),
            box=PrecisionRecall(self.thresholds, *self._box_counts),
            atom=PrecisionRecall(self.thresholds, *self._atom_counts),
            confusion=self._confusion.copy(),
            box_position_errors=np.concatenate(self._box_errors),
            matched_position_errors=np.concatenate(self._matched_errors))


# -- image models -------------------------------------------------------------------------------

def per_output_mse(predictions: Sequence, targets: Sequence, names: Sequence[str]) -> dict[str, float]:
    """Pixel MSE of each output map (e.g. DSH: Atomic Disks, vdW Spheres, Height Map; Å²)."""
    accumulator = ImageMetricsAccumulator(names)
    accumulator.update(predictions, targets)
    return accumulator.result()


@dataclass
class ImageMetricsAccumulator:
    """Pixel MSE and Pearson correlation per output over many batches (exact: sums of float64 moments).

    The correlation pools every pixel of every sample: r = cov(prediction, target) / (σ_p σ_t).
    """

    names: Sequence[str]
    _moments: np.ndarray | None = field(default=None, init=False, repr=False)  # (outputs, 6): see _MOMENTS
    _count: int = field(default=0, init=False, repr=False)

    _MOMENTS = ("squared_error", "p", "t", "pp", "tt", "pt")

    def update(self, predictions: Sequence, targets: Sequence) -> None:
        if len(predictions) != len(self.names) or len(targets) != len(self.names):
            raise ValueError(f"expected {len(self.names)} outputs, got {len(predictions)} predictions "
                             f"and {len(targets)} targets")
        moments = []
        count = None
        for name, prediction, target in zip(self.names, predictions, targets):
            prediction, target = _numpy(prediction).astype(np.float64), _numpy(target).astype(np.float64)
            if prediction.shape != target.shape:
                raise ValueError(f"{name}: prediction {prediction.shape} != target {target.shape}")
            if count is not None and prediction.size != count:
                raise ValueError("all outputs of a batch must have the same number of pixels")
            count = prediction.size
            moments.append([np.square(prediction - target).sum(), prediction.sum(), target.sum(),
                            np.square(prediction).sum(), np.square(target).sum(), (prediction * target).sum()])
        moments = np.array(moments)
        self._moments = moments if self._moments is None else self._moments + moments
        self._count += count

    def merge(self, other: "ImageMetricsAccumulator") -> None:
        """Add ``other``'s sums (another rank's share of the same set)."""
        if other._moments is None:
            return
        self._moments = other._moments.copy() if self._moments is None else self._moments + other._moments
        self._count += other._count

    def result(self) -> dict[str, float]:
        """Mean squared error of each output (its units squared)."""
        self._check_updated()
        return {name: float(value / self._count) for name, value in zip(self.names, self._moments[:, 0])}

    def correlations(self) -> dict[str, float]:
        """Pearson correlation of each output with its target (NaN where either is constant)."""
        self._check_updated()
        n = self._count
        _, p, t, pp, tt, pt = self._moments.T
        covariance = pt / n - (p / n) * (t / n)
        variances = (pp / n - (p / n) ** 2) * (tt / n - (t / n) ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(variances > 0, covariance / np.sqrt(np.maximum(variances, 0.0)), np.nan)
        return {name: float(value) for name, value in zip(self.names, r)}

    def _check_updated(self) -> None:
        if not self._count:
            raise ValueError("ImageMetricsAccumulator results asked for before any update()")


# -- plots (matplotlib's object API: no pyplot, no global backend state) --------------------------

def _new_figure(size=(5.0, 4.0)):
    from matplotlib.figure import Figure
    return Figure(figsize=size, layout="constrained")


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, format="png")
    return path


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
    return _save(figure, path)


def plot_confusion_matrix(matrix, class_names: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix normalised by the true class (rows), counts in parentheses (thesis
    Fig. 20a,b). Rows are true classes, columns predicted. Returns the PNG path."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix {matrix.shape} does not fit {len(class_names)} class names")
    rates = _safe_ratio(matrix, matrix.sum(axis=1, keepdims=True))
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
    return _save(figure, path)


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
    return _save(figure, path)
