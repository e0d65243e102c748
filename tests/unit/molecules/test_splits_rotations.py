"""Reproducible splits (thesis Table 5) and the rotation criterion (thesis Eq. 25)."""

import numpy as np
import pytest

from afm_ray.errors import InputError
from afm_ray.molecules import read_database, read_molecules
from afm_ray.molecules.rotations import fibonacci_sphere, rotation_scores, rotations_to_z, select_rotations
from afm_ray.molecules.splits import SplitSizes, assign_split, split_counts

from conftest import MOLECULE_FILES


def subset_ids(path, name):
    return {subset: {m.id for m in read_molecules(path, split=name, subset=subset)} for subset in ("train", "val", "test")}


def test_custom_split_is_disjoint_and_reproducible(qm9_sample_db, run_cli, tmp_path):
    other = tmp_path / "copy.parquet"
    for seed, out in ((0, qm9_sample_db), (0, other)):
        code, _, err = run_cli("molecules", "split", qm9_sample_db, "--name", "small", "--sizes", 20, 10, 10,
                               "--seed", seed, "--out", out)
        assert code == 0, err
    first, again = subset_ids(qm9_sample_db, "small"), subset_ids(other, "small")
    assert first == again
    assert [len(first[s]) for s in ("train", "val", "test")] == [20, 10, 10]
    assert not (first["train"] & first["val"]) and not (first["train"] & first["test"])
    run_cli("molecules", "split", qm9_sample_db, "--name", "small", "--sizes", 20, 10, 10, "--seed", 1, "--out", other)
    assert subset_ids(other, "small") != first


def test_dataset2_takes_heavy_part_from_merged_database(qm9_sample_db, run_cli, tmp_path):
    heavy = tmp_path / "heavy.parquet"
    code, _, err = run_cli("molecules", "import", MOLECULE_FILES / "pubchem_style.sdf",
                           MOLECULE_FILES / "chlorobromobenzene.extxyz", "--out", heavy)
    assert code == 0, err
    out = tmp_path / "ds2.parquet"
    code, _, err = run_cli("molecules", "split", qm9_sample_db, "--name", "dataset2", "--merge", heavy,
                           "--sizes", 10, 5, 5, "--heavy-sizes", 2, 1, 1, "--out", out)
    assert code == 0, err
    table = read_database(out)
    assert split_counts(table, "dataset2") == {"train": 12, "val": 6, "test": 6}
    heavy_ids = {"pubchem_style:0", "pubchem_style:1", "pubchem_style:2", "chlorobromobenzene"}
    chosen = set().union(*subset_ids(out, "dataset2").values())
    assert chosen & heavy_ids == heavy_ids


def test_thesis_split_on_too_small_database_is_a_clear_error(qm9_sample_db, run_cli):
    code, _, err = run_cli("molecules", "split", qm9_sample_db, "--name", "dataset1")
    assert code == 2 and "needs 9000 light molecules" in err and "has 49" in err


def test_unknown_split_subset_errors(qm9_sample_db):
    with pytest.raises(InputError, match="no split named 'dataset1'"):
        read_molecules(qm9_sample_db, split="dataset1", subset="train")


def test_assign_split_rejects_negative_sizes(qm9_sample_db):
    with pytest.raises(InputError, match="sizes must be ≥ 0"):
        assign_split(read_database(qm9_sample_db), "x", SplitSizes((-1, 0, 0)))


# -- rotations --------------------------------------------------------------------------------
def test_rotations_are_proper_and_point_each_direction_up():
    directions = fibonacci_sphere(100)
    assert np.allclose(np.linalg.norm(directions, axis=1), 1)
    extremes = np.array([[0, 0, 1.0], [0, 0, -1.0]])
    rotations = rotations_to_z(np.concatenate([directions, extremes]))
    assert np.allclose(rotations @ np.transpose(rotations, (0, 2, 1)), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rotations), 1)
    assert np.allclose(np.einsum("nij,nj->ni", rotations, np.concatenate([directions, extremes])), [0, 0, 1])


def test_planar_molecule_is_best_seen_face_on():
    # A flat hexagon in the xy plane: face-on views put all 6 atoms at the top (S = 6);
    # edge-on views bury most of them. The best candidates are the ones closest to ±z.
    angles = np.arange(6) * np.pi / 3
    ring = np.stack([1.4 * np.cos(angles), 1.4 * np.sin(angles), np.zeros(6)], axis=1)
    best = select_rotations(ring, n_keep=2)
    directions = fibonacci_sphere(100)
    closest_to_poles = set(np.argsort(-np.abs(directions[:, 2]))[:2])
    best_directions = {int(np.argmin(np.linalg.norm(directions - r[2], axis=1))) for r in best}
    assert best_directions == closest_to_poles
    rotated_heights = ring @ best[0].T
    # The candidate nearest a pole is tilted by arccos(0.99) ≈ 8°: ring edge heights differ ≤ 2.8 Å·sin 8°.
    assert np.ptp(rotated_heights[:, 2]) <= 2.8 * np.sin(np.arccos(0.99)) + 1e-9
    edge_on = rotations_to_z(np.array([[1.0, 0, 0]]))
    assert rotation_scores(ring, best[:1])[0] > 4.5 and rotation_scores(ring, edge_on)[0] < 2.5


def test_score_by_hand_for_two_atoms():
    # Atoms 2 Å apart along z; looking down +z, the lower one is 2 Å deep: S = 1 + e^-2.
    pair = np.array([[0, 0, 0], [0, 0, 2.0]])
    assert rotation_scores(pair, np.eye(3)[None])[0] == pytest.approx(1 + np.exp(-2.0))
    assert rotation_scores(pair, np.eye(3)[None], beta_per_angstrom=0.5)[0] == pytest.approx(1 + np.exp(-1.0))


def test_selection_is_deterministic_and_sorted(qm9_sample_db):
    molecule = read_molecules(qm9_sample_db)[-1]
    first = select_rotations(molecule.positions, n_keep=30)
    assert first.shape == (30, 3, 3)
    assert np.array_equal(first, select_rotations(molecule.positions, n_keep=30))
    scores = rotation_scores(molecule.positions, first)
    assert np.all(np.diff(scores) <= 1e-12)
    with pytest.raises(ValueError, match="n_keep"):
        select_rotations(molecule.positions, n_keep=101)


@pytest.mark.parametrize("config_name, rotations", [("dsh", 20), ("es", 20), ("xyz", 30), ("quickstart", None)])
def test_thesis_configs_evaluate_as_many_rotations_as_they_train_on(tiny_database, config_name, rotations):
    """Thesis: 20 (DSH, ES) or 30 (xyz) best rotations per molecule in every split; quickstart stays quick;
    a quicker evaluation is an override."""
    from afm_ray.pipeline.sources import load_split_samples
    from afm_ray.recipe import load_train_config

    from conftest import CONFIGS

    overrides = [f"data.database={tiny_database}", "data.split=tiny", "data.max_eval_molecules=2"]
    config = load_train_config(CONFIGS / f"{config_name}.yaml", overrides)
    settings = config.sample_settings
    expected = rotations or config.data.eval_rotations_per_molecule
    assert settings.eval_rotations_per_molecule == expected
    assert settings.eval_identity()["data"]["eval_rotations_per_molecule"] == expected
    if rotations is not None:
        assert config.rotations_per_molecule == rotations
        samples = load_split_samples(settings, ("val", "test"))
        assert len(samples["val"]) == len(samples["test"]) == 2 * rotations
    quick = load_train_config(CONFIGS / f"{config_name}.yaml", [*overrides, "data.eval_rotations_per_molecule=5"])
    assert quick.sample_settings.eval_rotations_per_molecule == 5
    assert quick.sample_settings.eval_identity() != settings.eval_identity() or expected == 5
