"""Matching an "experiment" to simulated rotations of a known molecule (thesis 4.1, Fig. 17).

The experiment is a QM9 molecule simulated at a known orientation, 3° away from one of the
candidate rotations, with the thesis' noise (uniform, c = 0.1 of each slice's range), untilted.
``afm-ray match`` must rank that candidate first:

* through a registered model (the DSH model of this session, 3 epochs on 24 samples,
  tests/conftest.py), on Ray simulation actors and, with ``--local``, in this process: both
  must agree;
* in descriptor mode (``--model descriptor``: exact vdW Spheres of the rotations against those of
  the experiment's geometry file), which needs no model and no simulation.

What this does and does not show: the experiment and the correct simulation differ only by the
small rotation and the noise, so any network whose output depends on its input ranks the candidate
first — an untrained one too (checked while writing this test). It checks the machinery:
rotations, simulation on both paths, preprocessing, prediction, ranking, the table, the best
geometry and the figure. A lateral offset is left out: a briefly trained network draws every
molecule at the window centre (training scans are centred), so it cannot reveal an offset; the
offset search is tested on maps directly. Whether a model is good enough for real experiments
(offsets, tip tilt, other heights) is a question for a fully trained model.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from afm_ray.samples.augment import AugmentConfig, augment
from afm_ray.molecules.database import read_molecules
from afm_ray.molecules.io import read_molecule_file, write_xyz
from afm_ray.predict.match import evenly_spread_rotations, normalised_cross_correlation, rotation_angle_deg
from afm_ray.sim import ScanParams, Simulator

MOLECULE_ID = "qm9:000019"  # acetamide, CC(N)=O: 9 atoms, no symmetry that makes two views alike
N_DIRECTIONS = 100
TRUE_CANDIDATE = 37
OFF_GRID_DEG = 3.0
THESIS_NOISE_ONLY = AugmentConfig.model_validate(
    {step: {"enabled": False} for step in ("scan_height", "normalization", "shift", "cutout")})


def _about_x(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@pytest.fixture
def known_orientation(tiny_database, tmp_path):
    """(molecule file, true rotation (3, 3), candidate rotations) of the matching tests."""
    (molecule,) = read_molecules(tiny_database, ids=[MOLECULE_ID])
    write_xyz(tmp_path / "acetamide.xyz", molecule)
    rotations = evenly_spread_rotations(N_DIRECTIONS)
    true_rotation = _about_x(OFF_GRID_DEG) @ rotations.rotations[TRUE_CANDIDATE]
    angles = rotation_angle_deg(rotations.rotations, true_rotation)
    assert angles.argmin() == TRUE_CANDIDATE and angles.min() == pytest.approx(OFF_GRID_DEG)
    return molecule, tmp_path / "acetamide.xyz", true_rotation


def _read_ranking(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_match_through_a_model_ranks_a_near_copy_first_alike_on_ray_and_locally(ray_session, trained_dsh, known_orientation,
                                                                               tmp_path, run_cli):
    config, _ = trained_dsh
    molecule, molecule_file, true_rotation = known_orientation
    sim = config.sim.model_copy(update={"tilt_radius_angstrom": 0.0})
    simulator = Simulator(sim, device="cpu")
    df = simulator.simulate([molecule.rotated(true_rotation)], tip="CO", scan_params=[ScanParams.fixed(sim)])
    simulator.release()
    noisy = augment(df, 0, THESIS_NOISE_ONLY).stacks
    np.savez(tmp_path / "experiment.npz", df=noisy, tip="CO", scan_size_angstrom=np.array(sim.scan_size_angstrom))

    common = ["match", "--molecule", molecule_file, "--experiment", tmp_path / "experiment.npz",
              "--model", "models:/afm-test-dsh@current", "--tracking-uri", config.mlflow.tracking_uri,
              "--rotations", N_DIRECTIONS]
    code, out, err = run_cli(*common, "--out", tmp_path / "on_ray")
    assert code == 0, err
    assert f"against {N_DIRECTIONS} rotations" in out and "on 2 simulation actor(s)" in out
    ranking = _read_ranking(tmp_path / "on_ray" / "ranking.csv")
    assert len(ranking) == N_DIRECTIONS and ranking[0]["experiment"] == "experiment"
    best = ranking[0]
    assert int(best["rotation"]) == TRUE_CANDIDATE, ranking[:3]
    assert (float(best["shift_x_angstrom"]), float(best["shift_y_angstrom"])) == (0.0, 0.0)
    assert float(best["ncc"]) > float(ranking[1]["ncc"])
    geometry = read_molecule_file(tmp_path / "on_ray" / "experiment_best.xyz")[0]
    expected = molecule.rotated(evenly_spread_rotations(N_DIRECTIONS).rotations[TRUE_CANDIDATE])
    np.testing.assert_allclose(geometry.positions, expected.positions, atol=1e-6)
    assert (tmp_path / "on_ray" / "match.png").stat().st_size > 20_000

    code, out, err = run_cli(*common, "--local", "--out", tmp_path / "local")
    assert code == 0, err
    assert "on this machine" in out
    on_ray = np.load(tmp_path / "on_ray" / "rotations.npz")["vdw_spheres"]
    local = np.load(tmp_path / "local" / "rotations.npz")["vdw_spheres"]
    np.testing.assert_allclose(local, on_ray, atol=1e-5)
    assert [row["rotation"] for row in _read_ranking(tmp_path / "local" / "ranking.csv")[:5]] == \
           [row["rotation"] for row in ranking[:5]]


def test_descriptor_mode_ranks_the_known_rotation_first(known_orientation, tmp_path, run_cli):
    molecule, molecule_file, true_rotation = known_orientation
    write_xyz(tmp_path / "seen.xyz", molecule.rotated(true_rotation))
    (tmp_path / "sim.yaml").write_text("scan_pixels: [32, 32]\n")
    code, out, err = run_cli("match", "--molecule", molecule_file, "--experiment", tmp_path / "seen.xyz",
                             "--model", "descriptor", "--sim-config", tmp_path / "sim.yaml",
                             "--rotations", N_DIRECTIONS, "--out", tmp_path / "out")
    assert code == 0, err
    assert "descriptor mode: exact vdW Spheres on 16×16 Å, 32×32 px" in out
    best = _read_ranking(tmp_path / "out" / "ranking.csv")[0]
    assert int(best["rotation"]) == TRUE_CANDIDATE and float(best["ncc"]) > 0.99


def test_cross_correlation_finds_the_offset_of_a_shifted_map():
    x, y = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    blob = np.exp(-((x - 18) ** 2 + (y - 22) ** 2 / 4) / 20.0)  # elongated, far from the edges
    moved = np.roll(blob, (-3, 2), axis=(0, 1))  # the candidate sits 3 px lower in x, 2 px higher in y
    other = np.roll(blob.T, (1, 1), axis=(0, 1))
    scores, shifts = normalised_cross_correlation(blob, np.stack([moved, other, blob]), max_shift_px=(4, 4))
    assert shifts[0].tolist() == [3, -2] and scores[0] == pytest.approx(1.0, abs=1e-9)
    assert shifts[2].tolist() == [0, 0] and scores[2] == pytest.approx(1.0, abs=1e-9)
    assert scores[1] < 0.9
    limited, within = normalised_cross_correlation(blob, moved[None], max_shift_px=(1, 1))
    assert np.abs(within).max() <= 1 and limited[0] < 0.99  # the true offset is out of reach


def test_rotations_are_evenly_spread_and_turn_each_direction_to_the_tip():
    rotations = evenly_spread_rotations(50, n_azimuths=4)
    assert len(rotations) == 200
    np.testing.assert_allclose(np.einsum("rij,rkj->rik", rotations.rotations, rotations.rotations),
                               np.broadcast_to(np.eye(3), (200, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.einsum("rij,rj->ri", rotations.rotations, rotations.directions),
                               np.broadcast_to([0.0, 0.0, 1.0], (200, 3)), atol=1e-12)
    np.testing.assert_allclose(rotations.azimuths_deg[:4], [0, 90, 180, 270])
    nearest = [np.sort(rotation_angle_deg(rotations.rotations[::4], r))[1] for r in rotations.rotations[::4]]
    assert max(nearest) < 2.5 * min(nearest)  # no direction far from all others


def test_match_refuses_a_model_without_vdw_spheres(trained_xyz, known_orientation, tmp_path, run_cli):
    config, _ = trained_xyz
    _, molecule_file, _ = known_orientation
    np.savez(tmp_path / "e.npz", df=np.ones((64, 64, 12), np.float32), tip="CO")
    code, _, err = run_cli("match", "--molecule", molecule_file, "--experiment", tmp_path / "e.npz",
                           "--model", "models:/afm-test-xyz@current", "--tracking-uri", config.mlflow.tracking_uri,
                           "--rotations", 10, "--out", tmp_path / "out")
    assert code == 2 and "matching needs vdw_spheres (a DSH model)" in err, err
    code, _, err = run_cli("match", "--molecule", molecule_file, "--experiment", tmp_path / "e.npz",
                           "--model", "models:/afm-test-xyz@current", "--sim-config", tmp_path / "x.yaml",
                           "--out", tmp_path / "out")
    assert code == 2 and "--sim-config: only applies with --model descriptor" in err, err
