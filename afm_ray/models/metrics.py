"""Evaluation of the models (thesis 3.3 and 4, Fig. 20): precision/recall, confusion matrix,
position errors, atom matching and per-output MSE, and their accumulators over a data set.

Predictions and targets of the xyz model are grids in the layout of
:mod:`afm_ray.descriptors.xyz_codec` (classes (B, n_classes, H, W), channel 0 background;
offsets (B, 3, H, W) Å), decoded into atoms by :func:`~afm_ray.descriptors.xyz_codec.decode_xyz`.
The figures of these metrics are drawn by :mod:`afm_ray.figures.metrics`.

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

import numpy as np

from afm_ray.descriptors.xyz_classes import ATOM_CLASS, BACKGROUND_CLASS
from afm_ray.descriptors.xyz_codec import (DEFAULT_BOX_SIZE, DEFAULT_NMS_RADIUS, DEFAULT_REPORT_THRESHOLD, Atoms,
                                           as_float64_array, check_xyz_grid, decode_xyz)

DEFAULT_MATCH_RADIUS = 0.5      # Å
DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))


def ratio_or_one(numerator, denominator) -> np.ndarray:
    """``numerator / denominator`` elementwise (float64), and 1 where the denominator is 0."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, dtype=np.float64),
                                                 np.asarray(denominator, dtype=np.float64))
    return np.divide(numerator, denominator, out=np.ones(numerator.shape), where=denominator > 0)


def box_confidence(class_probs) -> np.ndarray:
    """``(B, H, W)`` confidence that a box holds an atom: ``1 − p_background``."""
    class_probs = as_float64_array(class_probs)
    check_xyz_grid(class_probs)
    return 1.0 - class_probs[:, 0]


# -- matching -----------------------------------------------------------------------------------

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
        return ratio_or_one(self.true_positives, self.true_positives + self.false_positives)

    @property
    def recall(self) -> np.ndarray:
        return ratio_or_one(self.true_positives, self.true_positives + self.false_negatives)

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
    class_target = as_float64_array(class_target)
    check_xyz_grid(class_target)
    if class_target.shape[0:1] + class_target.shape[2:] != tuple(expected_shape):
        raise ValueError(f"class target {class_target.shape} does not match the prediction grid {expected_shape}")
    return class_target[:, 0] < 0.5


def confusion_matrix(class_probs, class_target, threshold: float = DEFAULT_REPORT_THRESHOLD) -> np.ndarray:
    """``(n_classes, n_classes)`` box counts, row = true class, column = predicted class.

    A box is predicted background when its confidence is below ``threshold``, else the most
    probable atom class (thesis Fig. 20a,b with two classes).
    """
    class_probs, class_target = as_float64_array(class_probs), as_float64_array(class_target)
    check_xyz_grid(class_probs)
    if class_target.shape != class_probs.shape:
        raise ValueError(f"class target {class_target.shape} != class prediction {class_probs.shape}")
    n_classes = class_probs.shape[1]
    predicted = np.where(1.0 - class_probs[:, 0] >= threshold, 1 + np.argmax(class_probs[:, 1:], axis=1), 0)
    true = np.argmax(class_target, axis=1)
    return np.bincount((true * n_classes + predicted).ravel(), minlength=n_classes ** 2).reshape(n_classes, n_classes)


def box_position_errors(offsets, offsets_target, class_target) -> np.ndarray:
    """L2 errors ``|r_i − q_i|`` (Å) in every box holding a true atom, flattened (thesis Fig. 20d)."""
    offsets, offsets_target = as_float64_array(offsets), as_float64_array(offsets_target)
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


@dataclass
class XYZEvaluator:
    """Accumulates xyz-model statistics batch by batch; :meth:`result` gives :class:`XYZMetrics`.

    Args:
        thresholds: confidence sweep for the PR curves (the report threshold is added if missing).
        report_threshold: threshold of the confusion matrix, summary rates and matched errors.
        box_size, nms_radius: Å, see :mod:`afm_ray.descriptors.xyz_codec`.
        match_radius: Å, see the module doc.
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
        """Add a batch: predictions and targets in the grid layout of :mod:`afm_ray.descriptors.xyz_codec`."""
        class_probs, offsets = as_float64_array(class_probs), as_float64_array(offsets)
        class_target, offsets_target = as_float64_array(class_target), as_float64_array(offsets_target)
        check_xyz_grid(class_probs, offsets)
        check_xyz_grid(class_target, offsets_target)

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
            (BACKGROUND_CLASS, ATOM_CLASS) + tuple(f"class{k}" for k in range(2, n_classes)))[:n_classes]
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
            prediction, target = as_float64_array(prediction).astype(np.float64), as_float64_array(target).astype(np.float64)
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
