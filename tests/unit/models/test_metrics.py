"""xyz decoding, NMS, precision/recall, confusion matrix, position errors, MSE and their figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matplotlib.figure import Figure

from afm_ray.descriptors.xyz_codec import Atoms, decode_xyz, non_max_suppression
from afm_ray.figures.metrics import (plot_confusion_matrix, plot_position_error_histogram, plot_pr_curve,
                                    write_xyz_figures)
from afm_ray.models.metrics import (ImageMetricsAccumulator, XYZEvaluator, box_position_errors, box_precision_recall,
                             confusion_matrix, match_atoms, per_output_mse)
from afm_ray.figures.scans import save_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _constructed_grid():
    """One sample on a 2 × 3 grid: true atoms in boxes (0,0), (0,1), (1,0); the prediction's
    atom confidences are 0.9, 0.6, 0.2 there and 0.7, 0.1, 0.05 in the background boxes."""
    confidence = np.array([[0.9, 0.6, 0.7], [0.2, 0.1, 0.05]])
    is_atom = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    class_probs = torch.tensor(np.stack((1 - confidence, confidence))[None])
    class_target = torch.tensor(np.stack((~is_atom, is_atom)).astype(float)[None])
    offsets_target = torch.zeros(1, 3, 2, 3, dtype=torch.float64)
    offsets_target[0, :, 0, 0] = torch.tensor([0.1, -0.2, 0.0])
    offsets_target[0, :, 0, 1] = torch.tensor([-0.3, 0.1, -0.4])
    offsets_target[0, :, 1, 0] = torch.tensor([0.2, 0.2, -0.6])
    offsets = offsets_target.clone()
    offsets[0, 0, 0, 0] += 0.3          # error 0.3 Å on the most confident atom
    offsets[0, :, 0, 2] = torch.tensor([0.0, 0.0, -0.1])
    return class_probs, offsets, class_target, offsets_target


def test_decode_places_atoms_at_box_centre_plus_offset():
    class_probs = torch.zeros(1, 2, 4, 4)
    class_probs[:, 0] = 1.0
    class_probs[0, :, 1, 2] = torch.tensor([0.1, 0.9])
    class_probs[0, :, 3, 0] = torch.tensor([0.6, 0.4])
    offsets = torch.zeros(1, 3, 4, 4)
    offsets[0, :, 1, 2] = torch.tensor([0.2, -0.1, -0.3])
    offsets[0, :, 3, 0] = torch.tensor([-0.4, 0.4, -0.5])

    [atoms] = decode_xyz(class_probs, offsets, threshold=0.5)
    assert len(atoms) == 1
    np.testing.assert_allclose(atoms.positions, [[1.5 + 0.2, 2.5 - 0.1, -0.3]], atol=1e-6)
    np.testing.assert_allclose(atoms.confidence, [0.9], atol=1e-6)
    assert atoms.classes.tolist() == [1]

    [atoms] = decode_xyz(class_probs, offsets, threshold=0.3, box_size=2.0)
    np.testing.assert_allclose(atoms.positions, [[3.0 + 0.2, 5.0 - 0.1, -0.3], [7.0 - 0.4, 1.0 + 0.4, -0.5]],
                               atol=1e-6)


def test_decode_reports_the_most_probable_element_class():
    class_probs = torch.tensor([[0.1, 0.2, 0.6, 0.1]]).reshape(1, 4, 1, 1)
    [atoms] = decode_xyz(class_probs, torch.zeros(1, 3, 1, 1))
    assert atoms.classes.tolist() == [2]
    np.testing.assert_allclose(atoms.confidence, [0.9])


def _atoms(positions, confidence):
    return Atoms(np.array(positions, dtype=float), np.array(confidence, dtype=float),
                 np.ones(len(confidence), dtype=np.int64))


def test_nms_keeps_the_more_confident_of_a_close_pair_and_both_of_a_distant_pair():
    close = non_max_suppression(_atoms([[0, 0, 0], [0.3, 0, 0]], [0.6, 0.9]), radius=0.5)
    np.testing.assert_allclose(close.positions, [[0.3, 0, 0]])
    np.testing.assert_allclose(close.confidence, [0.9])
    distant = non_max_suppression(_atoms([[0, 0, 0], [1.0, 0, 0]], [0.6, 0.9]), radius=0.5)
    assert len(distant) == 2


def test_nms_is_greedy_so_a_suppressed_atom_suppresses_nothing():
    chain = _atoms([[0, 0, 0], [0.4, 0, 0], [0.8, 0, 0]], [0.9, 0.8, 0.7])
    kept = non_max_suppression(chain, radius=0.5)
    np.testing.assert_allclose(kept.confidence, [0.9, 0.7])


def test_decode_applies_nms_across_neighbouring_boxes():
    class_probs = torch.zeros(1, 2, 2, 2)
    class_probs[:, 0] = 1.0
    class_probs[0, :, 0, 0] = torch.tensor([0.2, 0.8])
    class_probs[0, :, 1, 0] = torch.tensor([0.3, 0.7])
    offsets = torch.zeros(1, 3, 2, 2)
    offsets[0, 0, 0, 0] = 0.45      # x = 0.95
    offsets[0, 0, 1, 0] = -0.45     # x = 1.05: the same atom seen from two boxes
    assert len(decode_xyz(class_probs, offsets, nms_radius=None)[0]) == 2
    [atoms] = decode_xyz(class_probs, offsets, nms_radius=0.5)
    np.testing.assert_allclose(atoms.confidence, [0.8], atol=1e-6)


def test_match_atoms_pairs_the_most_confident_first_within_the_radius():
    predicted = _atoms([[0.0, 0, 0], [0.1, 0, 0], [5.0, 0, 0]], [0.5, 0.9, 0.8])
    match = match_atoms(predicted, np.array([[0.05, 0, 0], [0.4, 0, 0]]), radius=0.5)
    # 0.9 takes the nearer true atom (0.05), 0.5 gets the other (0.4 Å away), 0.8 is too far.
    assert sorted(zip(match.predicted_index.tolist(), match.true_index.tolist())) == [(0, 1), (1, 0)]
    np.testing.assert_allclose(sorted(match.distance), [0.05, 0.4])


def test_box_precision_recall_on_a_constructed_case():
    class_probs, _, class_target, _ = _constructed_grid()
    curve = box_precision_recall(class_probs, class_target, thresholds=[0.5, 0.8])
    assert curve.true_positives.tolist() == [2, 1]
    assert curve.false_positives.tolist() == [1, 0]
    assert curve.false_negatives.tolist() == [1, 2]
    np.testing.assert_allclose(curve.precision, [2 / 3, 1.0])
    np.testing.assert_allclose(curve.recall, [2 / 3, 1 / 3])
    assert curve.at(0.8) == pytest.approx((1.0, 1 / 3))


def test_precision_without_predictions_is_one():
    class_probs, _, class_target, _ = _constructed_grid()
    curve = box_precision_recall(class_probs, class_target, thresholds=[0.99])
    assert curve.precision.tolist() == [1.0] and curve.recall.tolist() == [0.0]


def test_confusion_matrix_rows_are_true_classes():
    class_probs, _, class_target, _ = _constructed_grid()
    matrix = confusion_matrix(class_probs, class_target, threshold=0.5)
    assert matrix.tolist() == [[2, 1], [1, 2]]


def test_confusion_matrix_with_element_classes():
    # Boxes: true H predicted H; true C predicted H; true background predicted C; true C missed.
    class_probs = torch.tensor([[0.1, 0.8, 0.1], [0.3, 0.4, 0.3], [0.2, 0.1, 0.7], [0.8, 0.1, 0.1]])
    class_target = torch.tensor([[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]], dtype=torch.float32)
    to_grid = lambda t: t.T.reshape(1, 3, 2, 2)  # noqa: E731
    matrix = confusion_matrix(to_grid(class_probs), to_grid(class_target), threshold=0.5)
    assert matrix.tolist() == [[0, 0, 1], [0, 1, 0], [1, 1, 0]]


def test_box_position_errors_cover_every_true_atom_box():
    class_probs, offsets, class_target, offsets_target = _constructed_grid()
    errors = box_position_errors(offsets, offsets_target, class_target)
    np.testing.assert_allclose(sorted(errors), [0.0, 0.0, 0.3], atol=1e-9)


def test_evaluator_accumulates_box_and_atom_statistics():
    class_probs, offsets, class_target, offsets_target = _constructed_grid()
    evaluator = XYZEvaluator(thresholds=[0.3, 0.8])
    evaluator.update(class_probs, offsets, class_target, offsets_target)
    evaluator.update(class_probs, offsets, class_target, offsets_target)
    metrics = evaluator.result()
    assert metrics.box.thresholds.tolist() == [0.3, 0.5, 0.8]
    assert metrics.box.true_positives.tolist() == [4, 4, 2]
    assert metrics.confusion.tolist() == [[4, 2], [2, 4]]
    # Per atom at 0.5: the 0.9 atom is 0.3 Å off (matched), the 0.6 atom exact (matched), the
    # 0.7 false box predicts an atom at (0.5, 2.5, −0.1), more than 0.5 Å from any true atom.
    assert metrics.atom.true_positives.tolist() == [4, 4, 2]
    assert metrics.atom.false_positives.tolist() == [2, 2, 0]
    assert metrics.atom.false_negatives.tolist() == [2, 2, 4]
    summary = metrics.summary()
    assert summary["box_precision"] == pytest.approx(2 / 3)
    assert summary["atom_recall"] == pytest.approx(2 / 3)
    assert summary["position_error_mean"] == pytest.approx(0.1)
    assert summary["matched_position_error_mean"] == pytest.approx(0.15)
    assert summary["n_true_atoms"] == 6


def test_a_matching_radius_below_the_error_turns_a_hit_into_a_miss():
    class_probs, offsets, class_target, offsets_target = _constructed_grid()
    evaluator = XYZEvaluator(thresholds=[0.5], match_radius=0.2)
    evaluator.update(class_probs, offsets, class_target, offsets_target)
    assert evaluator.result().atom.true_positives.tolist() == [1]


def test_evaluator_writes_non_empty_pngs(tmp_path):
    evaluator = XYZEvaluator()
    evaluator.update(*_constructed_grid())
    paths = write_xyz_figures(evaluator.result(), tmp_path / "plots")
    assert set(paths) == {"pr_curve", "confusion_matrix", "position_errors"}
    for path in paths.values():
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_functions_return_their_paths(tmp_path):
    class_probs, _, class_target, _ = _constructed_grid()
    curve = box_precision_recall(class_probs, class_target)
    assert plot_pr_curve(curve, tmp_path / "pr.png").read_bytes()[:8] == PNG_SIGNATURE
    matrix = confusion_matrix(class_probs, class_target)
    assert plot_confusion_matrix(matrix, ["background", "atom"], tmp_path / "cm.png").stat().st_size > 0
    assert plot_position_error_histogram([], tmp_path / "empty.png").stat().st_size > 0
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(matrix, ["background"], tmp_path / "bad.png")


def test_save_figure_creates_the_folder_and_replaces_the_file_whole(tmp_path):
    path = tmp_path / "new" / "folder" / "figure.png"
    for size in ((2.0, 2.0), (4.0, 3.0)):  # the second write replaces the first
        figure = Figure(figsize=size)
        figure.add_subplot().plot([0, 1], [1, 0])
        assert save_figure(figure, path, dpi=50) == path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert int.from_bytes(path.read_bytes()[16:20], "big") == 200  # PNG width: 4 in × 50 dpi, the last write
    assert [p.name for p in path.parent.iterdir()] == ["figure.png"]  # no temporary file left behind


def test_per_output_mse_and_its_accumulator():
    predictions = [torch.zeros(2, 4, 4), torch.ones(2, 4, 4)]
    targets = [torch.full((2, 4, 4), 2.0), torch.ones(2, 4, 4)]
    assert per_output_mse(predictions, targets, ["es_map", "height_map"]) == {"es_map": 4.0, "height_map": 0.0}
    accumulator = ImageMetricsAccumulator(["es_map", "height_map"])
    accumulator.update(predictions, targets)
    accumulator.update([torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)], [torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    result = accumulator.result()
    assert result["es_map"] == pytest.approx(4.0 * 32 / 48)
    assert result["height_map"] == pytest.approx(16 / 48)


def test_grid_shape_errors_are_clear():
    with pytest.raises(ValueError, match="offsets must be"):
        decode_xyz(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="before any update"):
        XYZEvaluator().result()
