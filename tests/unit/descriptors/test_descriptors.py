"""Descriptors on hand-made molecules whose maps can be written down exactly."""

from __future__ import annotations

import numpy as np
import pytest

from afm_ray.descriptors import (DEFAULT_WINDOW, ELEMENT_GROUPS_H_C_NOF, ScanWindow, XyzGrid, as_atom_batch,
                                 atomic_disks, encode_xyz, vdw_spheres)
from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError

CARBON, HYDROGEN, NITROGEN, OXYGEN, CHLORINE = 6, 1, 7, 8, 17


def pixel_grid(window: ScanWindow = DEFAULT_WINDOW):
    return np.meshgrid(window.pixel_x(), window.pixel_y(), indexing="ij")


# -- geometry ---------------------------------------------------------------------------------
def test_default_window_is_16_angstrom_on_128_pixels_with_centred_pixels():
    x = DEFAULT_WINDOW.pixel_x()
    assert x.shape == (128,) and DEFAULT_WINDOW.pixel_size == (0.125, 0.125)
    assert x[0] == pytest.approx(-8 + 0.0625) and x[-1] == pytest.approx(8 - 0.0625)


def test_atom_batch_accepts_tuples_objects_and_lists_and_pads():
    class Mol:
        numbers = np.array([6, 1])
        positions = np.array([[0.0, 0, 0], [1.0, 0, 0]])
        charges = np.array([-0.1, 0.1])

    single = as_atom_batch(([[0.0, 0, 0]], [8]))
    assert single.positions.shape == (1, 1, 3) and single.charges[0, 0] == 0.0
    batch = as_atom_batch([Mol(), ([[0.0, 0, 1]], [8], [0.3]), (np.zeros((3, 3)), np.array([1, 1, 1]))])
    assert batch.positions.shape == (3, 3, 3)
    np.testing.assert_array_equal(batch.mask, [[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(batch.top_z(), [0.0, 1.0, 0.0])
    assert as_atom_batch(Mol()).batch_size == 1
    with pytest.raises(InputError, match="positions have shape"):
        as_atom_batch(([[0.0, 0]], [8]))
    with pytest.raises(InputError, match="integers"):
        as_atom_batch(([[0.0, 0, 0]], [8.0]))
    with pytest.raises(InputError, match="unknown element"):
        as_atom_batch(([[0.0, 0, 0]], [200]))


# -- vdW Spheres ------------------------------------------------------------------------------
def test_one_atom_gives_a_spherical_cap_of_its_vdw_radius():
    centre = np.array([0.3, -0.7, 4.2])
    radius = ELEMENT_TABLE.vdw_radius([CARBON])[0]  # Bondi 1.70 Å
    spheres = vdw_spheres(([centre], [CARBON]), centre=False)
    assert spheres.shape == (1, 128, 128) and spheres.dtype == np.float32

    x, y = pixel_grid()
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2
    # surface height above the cut plane 1.5 Å below the sphere top: sqrt(R² − r²) − R + 1.5
    expected = np.clip(np.sqrt(np.maximum(radius**2 - r2, 0)) - radius + 1.5, 0, 1.5)
    expected[r2 > radius**2] = 0
    np.testing.assert_allclose(spheres[0], expected, atol=1e-5)
    # the cap's footprint is the circle where the sphere is above the cut: r² < R² − (R − 1.5)²
    footprint = np.sqrt(radius**2 - (radius - 1.5) ** 2)
    assert np.all(spheres[0][r2 > footprint**2] == 0) and np.all(spheres[0][r2 < (footprint - 0.05) ** 2] > 0)
    assert spheres.max() == pytest.approx(1.5, abs=0.01)


def test_spheres_take_the_highest_surface_and_cut_deep_atoms():
    high = [0.0, 0.0, 1.0]
    low_overlapping = [1.5, 0.0, 0.5]
    deep_far = [5.0, 5.0, -2.0]  # its top (−2 + 1.7) is more than 1.5 Å below the top (2.7)
    spheres = vdw_spheres(([high, low_overlapping, deep_far], [CARBON, CARBON, CARBON]), centre=False)[0]
    alone = vdw_spheres(([high], [CARBON]), centre=False)[0]
    assert np.all(spheres >= alone - 1e-6)  # adding atoms never lowers the surface
    x, y = pixel_grid()
    assert np.all(spheres[np.hypot(x - 5, y - 5) < 1.5] == 0)
    # over the low atom (1.5 Å from the high one) the low atom's surface (≈ 0.5 + 1.7) beats the
    # high one's (≈ 1 + sqrt(1.7² − 1.5²) = 1.8)
    i, j = np.argmin(np.abs(DEFAULT_WINDOW.pixel_x() - 1.5)), 64
    expected_low = 0.5 + np.sqrt(1.7**2 - (x[i, j] - 1.5) ** 2 - y[i, j] ** 2) - (1.0 + 1.7 - 1.5)
    assert spheres[i, j] == pytest.approx(expected_low, abs=1e-5)


def test_window_is_centred_on_the_mean_atom_xy_like_the_simulator():
    atoms = np.array([[10.0, 20.0, 0.0], [12.0, 20.0, 0.0]])  # mean xy (11, 20)
    centred = vdw_spheres((atoms, [CARBON, CARBON]))
    as_given = vdw_spheres((atoms - [11.0, 20.0, 0.0], [CARBON, CARBON]), centre=False)
    np.testing.assert_allclose(centred, as_given, atol=1e-6)
    assert centred[0, 63, 64] == centred[0, 64, 63]  # symmetric about the window centre
    targets = encode_xyz((atoms, [CARBON, CARBON]))
    decoded = XyzGrid().decode(targets.classes, targets.offsets)[0]
    np.testing.assert_allclose(sorted(decoded.positions[:, 0]), [-1.0, 1.0], atol=1e-6)


def test_spheres_depend_only_on_relative_heights():
    atoms = np.array([[0.0, 0.0, 0.0], [1.2, 0.4, -0.5]])
    a = vdw_spheres((atoms, [CARBON, OXYGEN]))
    b = vdw_spheres((atoms + [0, 0, 7.5], [CARBON, OXYGEN]))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_batched_spheres_equal_one_by_one():
    molecules = [(np.array([[0.0, 0, 0], [1.1, 0, 0.2]]), [CARBON, HYDROGEN]),
                 (np.array([[-2.0, 1, 3]]), [CHLORINE]),
                 (np.array([[0.0, 0, 0], [0, 1.4, -0.3], [1.3, 0.7, 0.1]]), [NITROGEN, CARBON, OXYGEN])]
    batched = vdw_spheres(molecules)
    for index, molecule in enumerate(molecules):
        np.testing.assert_array_equal(batched[index], vdw_spheres(molecule)[0])


# -- Atomic Disks -----------------------------------------------------------------------------
def test_one_atom_gives_a_cone_as_wide_as_its_covalent_radius():
    x0, y0 = DEFAULT_WINDOW.pixel_x()[70], DEFAULT_WINDOW.pixel_y()[50]  # on a pixel centre
    disks = atomic_disks(([[x0, y0, 2.0]], [CARBON]), centre=False)[0]
    width = ELEMENT_TABLE.covalent_radius([CARBON])[0]  # 0.76 Å
    x, y = pixel_grid()
    r = np.hypot(x - x0, y - y0)
    np.testing.assert_allclose(disks, np.clip(1.0 * (1 - r / width), 0, None), atol=1e-6)
    assert disks[70, 50] == pytest.approx(1.0)  # apex = height above the plane 1 Å below the top
    assert disks[70 + 6, 50] > 0 and disks[70 + 7, 50] == 0  # 6·0.125 = 0.75 < 0.76 < 0.875 Å

    wider = atomic_disks(([[x0, y0, 2.0]], [CARBON]), cone_width_factor=2.0, centre=False)[0]
    assert wider[70 + 12, 50] > 0 and wider[70 + 13, 50] == 0


def test_disk_apex_is_atom_height_and_deep_atoms_are_cut():
    atoms = [[0.0, 0.0, 0.0], [3.0, 0.0, -0.25], [-3.0, 0.0, -0.9], [0.0, 3.0, -1.1]]
    disks = atomic_disks((atoms, [CARBON] * 4), centre=False)[0]
    x_index = lambda x: int(np.argmin(np.abs(DEFAULT_WINDOW.pixel_x() - x)))
    apex = lambda xa, ya: disks[x_index(xa) - 1:x_index(xa) + 2, x_index(ya) - 1:x_index(ya) + 2].max()
    assert apex(0, 0) == pytest.approx(1.0, abs=0.12)
    assert apex(3, 0) == pytest.approx(0.75, abs=0.1)
    assert 0 < apex(-3, 0) <= 0.1
    assert apex(0, 3) == 0.0  # 1.1 Å below the top nucleus


def test_overlapping_disks_keep_the_higher_apex():
    disks = atomic_disks(([[0.0, 0.0, 0.0], [0.3, 0.0, -0.5]], [CARBON, CARBON]), centre=False)[0]
    # the top atom sits on a pixel corner: its best pixel is 0.088 Å away (1 − 0.088/0.76 = 0.88);
    # a sum of cones would exceed 1 there
    assert disks.max() == pytest.approx(1 - 0.0625 * np.sqrt(2) / 0.76, abs=1e-5)


# -- xyz grid ---------------------------------------------------------------------------------
def test_xyz_layout_and_highest_atom_wins_a_box():
    # two atoms in box (8, 8) = x, y ∈ [0, 1): the one at z = 0 (top) beats the one at −0.3
    atoms = [[0.2, 0.3, -0.3], [0.7, 0.6, 0.0], [-3.5, 2.5, -0.1]]
    targets = encode_xyz((atoms, [CARBON, HYDROGEN, OXYGEN]), centre=False)
    assert targets.classes.shape == (1, 2, 16, 16) and targets.offsets.shape == (1, 3, 16, 16)
    assert targets.classes.dtype == np.float32 and targets.offsets.dtype == np.float32
    np.testing.assert_array_equal(targets.classes.sum(axis=1), 1.0)
    assert targets.atom_mask.sum() == 2
    assert targets.classes[0, 1, 8, 8] == 1
    np.testing.assert_allclose(targets.offsets[0, :, 8, 8], [0.7 - 0.5, 0.6 - 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(targets.offsets[0, :, 4, 10], [-3.5 + 3.5, 2.5 - 2.5, -0.1], atol=1e-6)
    assert np.all(targets.offsets[0][:, ~targets.atom_mask[0]] == 0)


def test_xyz_cuts_atoms_below_minus_0_7_angstrom():
    atoms = [[0.5, 0.5, 10.0], [2.5, 0.5, 10.0 - 0.8], [4.5, 0.5, 10.0 - 0.6], [6.5, 0.5, 10.0 - 0.7]]
    targets = encode_xyz((atoms, [CARBON] * 4), centre=False)
    mask = targets.atom_mask[0]
    assert mask[8, 8] and not mask[10, 8] and mask[12, 8] and mask[14, 8]
    assert targets.offsets[0, 2, 12, 8] == pytest.approx(-0.6, abs=1e-5)


def test_xyz_drops_atoms_outside_the_window():
    targets = encode_xyz(([[0.0, 0.0, 0.0], [8.5, 0.0, 0.0], [0.0, -9.0, 0.0]], [CARBON] * 3), centre=False)
    assert targets.atom_mask.sum() == 1


def test_xyz_encode_then_decode_returns_the_atoms():
    rng = np.random.default_rng(7)
    molecules = []
    for n_atoms in (5, 12, 1):
        # one atom per distinct box so none is lost to "highest wins"
        boxes = rng.choice(256, size=n_atoms, replace=False)
        xy = np.stack([boxes // 16, boxes % 16], axis=1) - 8 + rng.uniform(0.01, 0.99, (n_atoms, 2))
        z = rng.uniform(-0.69, 0.0, n_atoms)
        z[0] = 0.0
        molecules.append((np.column_stack([xy, z + 3.0]), rng.choice([1, 6, 7, 8], n_atoms)))
    targets = encode_xyz(molecules, centre=False)
    decoded = XyzGrid().decode(targets.classes, targets.offsets, threshold=0.5)
    for (positions, _), atoms in zip(molecules, decoded):
        expected = positions - [0, 0, positions[:, 2].max()]
        got = atoms.positions[np.lexsort(atoms.positions.T[::-1])]
        np.testing.assert_allclose(got, expected[np.lexsort(expected.T[::-1])], atol=1e-5)  # float32 offsets
        np.testing.assert_array_equal(atoms.confidence, 1.0)


def test_xyz_decode_thresholds_and_sorts_by_confidence():
    import torch

    grid = XyzGrid()
    probabilities = np.zeros((1, 2, 16, 16))
    probabilities[0, 0] = 1.0
    for (i, j), p_atom in {(1, 1): 0.4, (2, 3): 0.9, (5, 5): 0.6}.items():
        probabilities[0, :, i, j] = [1 - p_atom, p_atom]
    offsets = np.zeros((1, 3, 16, 16))
    offsets[0, :, 2, 3] = [0.1, -0.2, -0.3]
    atoms = grid.decode(torch.tensor(probabilities), torch.tensor(offsets), threshold=0.5)[0]
    assert len(atoms) == 2
    np.testing.assert_allclose(atoms.confidence, [0.9, 0.6])
    np.testing.assert_allclose(atoms.positions[0], [-8 + 2.5 + 0.1, -8 + 3.5 - 0.2, -0.3])
    assert len(grid.decode(probabilities, offsets, threshold=0.3)[0]) == 3


def test_xyz_element_classes():
    grid = XyzGrid(element_groups=ELEMENT_GROUPS_H_C_NOF)
    assert grid.n_classes == 5 and grid.class_names == ("background", "H", "C", "N,O,F", "other")
    atoms = [[-7.5, -7.5, 0.0], [-5.5, -7.5, 0.0], [-3.5, -7.5, 0.0], [-1.5, -7.5, 0.0]]
    targets = grid.encode((atoms, [HYDROGEN, CARBON, OXYGEN, CHLORINE]), centre=False)
    assert targets.classes.shape == (1, 5, 16, 16)
    assert [int(np.argmax(targets.classes[0, :, i, 0])) for i in (0, 2, 4, 6)] == [1, 2, 3, 4]
    decoded = grid.decode(targets.classes, targets.offsets)[0]
    assert sorted(decoded.classes.tolist()) == [1, 2, 3, 4]
    with pytest.raises(InputError, match="two groups"):
        XyzGrid(element_groups=((1,), (1, 6)))


def test_xyz_grid_needs_whole_boxes():
    with pytest.raises(InputError, match="whole number"):
        XyzGrid(window=ScanWindow(width=16.5), box_size=1.0)


# -- Height Map / Electrostatic Map -------------------------------------------------------------
def test_height_map_finds_the_iso_surface_in_synthetic_fields():
    from afm_ray.descriptors import height_and_es_from_fields

    x, y = np.meshgrid(np.linspace(-3, 3, 24), np.linspace(-3, 3, 20), indexing="ij")
    surface = 3.0 - 0.25 * (x**2 + y**2)  # Å: a dome from 3 Å (top) down to −1.5 Å (corners)
    planes = np.arange(6.0, -2.0, -0.1)  # far → close
    # Fz rises exponentially below the surface and equals the iso level 0.1 eV/Å on it
    fz = 0.1 * np.exp((surface[..., None] - planes) / 0.3)[None]
    potential = (0.2 * planes + 0.05 * x[..., None])[None]  # V, linear in z: interpolation is exact
    maps = height_and_es_from_fields(fz, potential, planes, iso_force=0.1, cut_depth=2.0)
    expected = np.clip(surface - (surface.max() - 2.0), 0, 2)
    np.testing.assert_allclose(maps.height[0], expected, atol=0.01)  # linear interpolation of an exponential
    assert maps.height.dtype == np.float32 and maps.height.max() == pytest.approx(2.0, abs=1e-6)
    inside = maps.height[0] > 0
    np.testing.assert_allclose(maps.es[0][inside], (0.2 * maps.surface_z[0] + 0.05 * x)[inside], atol=1e-5)
    assert np.all(maps.es[0][~inside] == 0)


def test_height_map_marks_columns_without_a_crossing_and_checks_its_scan_range():
    from afm_ray.descriptors import height_and_es_from_fields

    planes = np.arange(5.0, 0.0, -0.5)
    fz = np.zeros((1, 2, 1, planes.size))
    fz[0, 0, 0] = np.where(planes < 3.2, 1.0, -0.01)  # crosses between 3.5 and 3.0 Å
    maps = height_and_es_from_fields(fz, np.zeros_like(fz), planes, iso_force=0.1, cut_depth=2.0)
    assert np.isnan(maps.surface_z[0, 1, 0]) and maps.height[0, 1, 0] == 0
    assert maps.height[0, 0, 0] == pytest.approx(2.0)
    with pytest.raises(InputError, match="lowest_plane"):
        height_and_es_from_fields(fz, np.zeros_like(fz), planes, iso_force=0.1, cut_depth=4.0)
    with pytest.raises(InputError, match="highest_plane"):
        height_and_es_from_fields(np.ones_like(fz), np.zeros_like(fz), planes)


def test_height_and_es_maps_of_one_charged_atom_from_the_simulator():
    from afm_ray.descriptors import height_and_es_maps
    from afm_ray.sim import SimConfig, Simulator

    try:
        simulator = Simulator(SimConfig(scan_pixels=(32, 32)), device="cpu")
    except Exception as exc:  # no OpenCL CPU device here
        pytest.skip(f"no OpenCL device: {exc}")
    maps = height_and_es_maps([([[0.0, 0.0, 1.0]], [OXYGEN], [-0.4]), ([[0.0, 0.0, 0.0]], [OXYGEN], [0.4])], simulator)
    assert maps.height.shape == (2, 32, 32)
    for sample in range(2):
        height = maps.height[sample]
        # rotationally symmetric dome peaking over the atom (pixels 15, 16 straddle the centre)
        assert height[15:17, 15:17].min() == pytest.approx(height.max(), abs=0.02) and height.max() > 1.9
        np.testing.assert_allclose(height, height.T, atol=1e-4)
        np.testing.assert_allclose(height, height[::-1, :], atol=1e-4)
        assert 2.0 < np.nanmax(maps.surface_z[sample]) < 4.0  # Å above the nucleus for a CO probe
    # ES = k_e q / r on the surface (the −0.1 e CO probe makes the two surfaces differ)
    window = ScanWindow.from_sim_config(simulator.config)
    x, y = np.meshgrid(window.pixel_x(), window.pixel_y(), indexing="ij")
    for sample, charge in enumerate((-0.4, 0.4)):
        inside = maps.height[sample] > 0
        distance = np.sqrt(x**2 + y**2 + maps.surface_z[sample].astype(np.float64) ** 2)
        np.testing.assert_allclose(maps.es[sample][inside], (14.399644 * charge / distance)[inside], rtol=2e-3)
        assert np.all(maps.es[sample][~inside] == 0)


# -- plot ---------------------------------------------------------------------------------------
def test_plot_sample_writes_a_png(tmp_path):
    from afm_ray.figures.scans import plot_sample

    molecule = (np.array([[0.0, 0, 0], [1.2, 0, -0.3], [-1.2, 0.3, -0.5]]), [CARBON, OXYGEN, HYDROGEN])
    targets = encode_xyz(molecule)
    path = plot_sample(tmp_path / "figures" / "sample.png", stack=np.random.default_rng(0).normal(size=(128, 128, 10)),
                       descriptors={"vdw_spheres": vdw_spheres(molecule)[0], "atomic_disks": atomic_disks(molecule)[0]},
                       molecule=molecule, xyz_classes=targets.classes[0], xyz_offsets=targets.offsets[0], title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_descriptors_runs(run_cli):
    code, out, err = run_cli("bench", "descriptors", "--no-sim", "--batch-size", "2", "--size", "32", "--repeats", "1")
    assert code == 0, err
    for line in ("vdW Spheres", "Atomic Disks", "xyz encode", "augment 20→10 slices"):
        assert line in out


@pytest.mark.parametrize("tip, quantity", [("CO", "potential"), ("Xe", "ez")])
def test_device_iso_search_equals_every_plane_search_of_the_fields(tiny_database, tip, quantity):
    """The simulator's strided, bounded search on the device gives the maps of the NumPy oracle."""
    from afm_ray.descriptors.height_es import EsMapConfig, HeightMapConfig, height_and_es_from_fields, height_and_es_maps
    from afm_ray.molecules.database import read_molecules
    from afm_ray.molecules.rotations import select_rotations
    from afm_ray.sim import SimConfig, Simulator

    views = [molecule.rotated(rotation) for molecule in read_molecules(tiny_database)[:16]
             for rotation in select_rotations(molecule.positions, 2, 100, 1.0)]
    simulator = Simulator(SimConfig(scan_pixels=(64, 64)), device="cpu")
    config = HeightMapConfig(tip=tip)
    device = height_and_es_maps(views, simulator, config, EsMapConfig(quantity=quantity))
    planes = config.planes()
    fz, electrostatics = simulator.rigid_probe_fields(views, planes, tip=tip, electrostatics=quantity)
    oracle = height_and_es_from_fields(fz, electrostatics, planes)
    simulator.release()
    np.testing.assert_allclose(device.height, oracle.height, atol=1e-5)
    np.testing.assert_allclose(device.es, oracle.es, atol=1e-5)
    assert (device.height > 0).mean() > 0.05
    # the device's bounded search may leave columns far below the cut without a crossing (their
    # height is 0 either way); where it found one, it is the oracle's
    kept = np.isfinite(device.surface_z)
    np.testing.assert_allclose(device.surface_z[kept], oracle.surface_z[kept], atol=1e-5)


@pytest.mark.parametrize("model, where", [("dsh", "trainer"), ("es", "actor")])
def test_bench_batch_reports_every_stage_and_the_ratios(run_cli, model, where):
    code, out, err = run_cli("bench", "batch", "--model", model, "--augment-on", where, "--batch-size", "2",
                             "--size", "32", "--repeats", "1", "--device", "cpu", "--actors-per-device", "2")
    assert code == 0, err
    for line in ("relax_scan kernel", "read Δf", "iso search kernels", "Height + ES Map", "Ray serialisation",
                 "whole batch (actor)", "Height + ES / Δf simulation", "actor work besides the Δf kernels",
                 "device→host bytes / returned bytes"):
        assert line in out, line
    assert ("augmentation on the trainer (torch)" in out) == (where == "trainer")
    assert ("vdW Spheres + Atomic Disks" in out) == (model == "dsh")
    assert "2 actors on one device:" in out
