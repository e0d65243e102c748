"""afm_ray.figures draws from arrays, model names and plain data: no trained model, no predictor, no Ray."""

from __future__ import annotations

import numpy as np
import torch

from afm_ray.descriptors.geometry import ScanWindow
from afm_ray.descriptors.xyz_codec import Atoms
from afm_ray.figures.predictions import plot_prediction
from afm_ray.figures.training import plot_predictions
from afm_ray.samples.sample_batch import SampleBatch
from afm_ray.sim import SimConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIM = SimConfig.from_dict({"scan_pixels": (32, 32)})
SAMPLES, NX = 2, 32


def test_a_prediction_is_drawn_from_its_input_outputs_and_atoms(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, NX, NX, 10)).astype(np.float32)  # CO and Xe, slices far → close
    maps = {"es_map": rng.normal(size=(NX, NX)), "height_map": rng.uniform(size=(NX, NX))}
    window = ScanWindow.from_sim_config(SIM)
    map_figure = plot_prediction(tmp_path / "es.png", x, maps, None, window, 0.5, title="es")
    classes = rng.dirichlet(np.ones(2), size=(4, 4)).transpose(2, 0, 1)  # (n_classes, gx, gy)
    atoms = Atoms(np.array([[0.0, 1.0, 0.0], [2.0, -1.0, -0.5]]), np.array([0.9, 0.6]), np.array([1, 1]))
    atom_figure = plot_prediction(tmp_path / "xyz.png", x[:1], {"xyz_classes": classes}, atoms, window, 0.5)
    for path in (map_figure, atom_figure):
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 10_000


def test_training_predictions_are_drawn_from_a_batch_and_the_outputs_as_arrays_or_tensors(tmp_path):
    rng = np.random.default_rng(1)
    maps = [rng.uniform(size=(SAMPLES, NX, NX)).astype(np.float32) for _ in range(3)]
    samples = SampleBatch(np.arange(SAMPLES), x=rng.normal(size=(SAMPLES, 1, NX, NX, 10)).astype(np.float32),
                          targets=dict(zip(("atomic_disks", "vdw_spheres", "height_map"), maps)))
    from_arrays = plot_predictions("dsh", samples, maps, tmp_path / "arrays.png", SIM)
    from_tensors = plot_predictions("dsh", samples, [torch.from_numpy(m) for m in maps], tmp_path / "tensors.png", SIM)
    assert from_arrays.read_bytes() == from_tensors.read_bytes()
    assert from_arrays.read_bytes()[:8] == PNG_SIGNATURE
