"""The Probe Particle simulator (afm_ray.sim) on the CPU OpenCL device: physics against closed forms,
Giessibl's formula against scipy quadrature, geometry, seeds, batching, input errors and the CLI."""

from __future__ import annotations

import ast
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from afm_ray.errors import InputError
from afm_ray.sim import ScanParams, SimConfig, Simulator, draw_scan_params, giessibl_weights
from afm_ray.sim.config import COULOMB_CONSTANT_EV_ANGSTROM, EV_PER_ANGSTROM2_PER_N_PER_M
from afm_ray.sim.device import list_devices, select_device

from conftest import CONFIGS


@dataclass
class Mol:
    """The Molecule interface the simulator reads (id, numbers, positions Å, charges e)."""

    numbers: np.ndarray
    positions: np.ndarray
    charges: np.ndarray
    id: str = "test"


def mol(symbols_positions_charges, name="test") -> Mol:
    table = {"H": 1, "C": 6, "N": 7, "O": 8}
    numbers = np.array([table[s] for s, _, _ in symbols_positions_charges])
    positions = np.array([p for _, p, _ in symbols_positions_charges], dtype=float)
    charges = np.array([q for _, _, q in symbols_positions_charges], dtype=float)
    return Mol(numbers, positions, charges, name)


WATER = mol([("O", (0.0, 0.0, 0.0), -0.8), ("H", (0.76, 0.0, 0.59), 0.4), ("H", (-0.76, 0.0, 0.59), 0.4)], "water")
FORMALDEHYDE = mol([("C", (0.0, 0.0, 0.0), 0.3), ("O", (1.2, 0.0, 0.1), -0.5),
                    ("H", (-0.55, 0.94, 0.0), 0.1), ("H", (-0.55, -0.94, 0.0), 0.1)], "formaldehyde")


@pytest.fixture(scope="module")
def small_config() -> SimConfig:
    return SimConfig(scan_pixels=(32, 32))


@pytest.fixture(scope="module")
def sim(cpu_device, small_config) -> Simulator:
    return Simulator(small_config, device=cpu_device)


@pytest.fixture(scope="module")
def centred_sim(cpu_device) -> Simulator:
    """33 × 33 px of 0.5 Å: the central pixel sits exactly over a molecule's mean xy."""
    return Simulator(SimConfig(scan_pixels=(33, 33), scan_size_angstrom=(16.5, 16.5), tilt_radius_angstrom=0.0), device=cpu_device)


# -- physics ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tip", ["CO", "Xe"])
def test_single_atom_image_is_radially_symmetric_and_strongest_at_the_centre(centred_sim, tip):
    atom = mol([("C", (1.3, -0.7, 2.0), 0.0)])
    result = centred_sim.run([atom], tip=tip, scan_params=[ScanParams.fixed(centred_sim.config)])
    df = result.df[0]
    c = 16
    assert result.unconverged[0] == 0
    # Pixels 5 px from the centre along an axis, and along (3, 4) and (-4, -3): same radius, different directions.
    for k in range(df.shape[-1]):
        ring = np.array([df[c + 5, c, k], df[c, c - 5, k], df[c + 3, c + 4, k], df[c - 4, c - 3, k]])
        assert np.ptp(ring) <= 1e-3 + 1e-3 * np.abs(df[..., k]).max()
    far, close = df[..., 0], df[..., -1]
    assert np.unravel_index(far.argmin(), far.shape) == (c, c)    # van der Waals attraction strongest above the atom
    assert np.unravel_index(close.argmax(), close.shape) == (c, c)  # Pauli repulsion strongest above the atom
    assert close[c, c] > 0 > far[c, c]


def test_tilt_shifts_the_image_opposite_to_the_probe_offset(centred_sim):
    atom = mol([("C", (0.0, 0.0, 0.0), 0.0)])
    tilted = centred_sim.run([atom], scan_params=[ScanParams((1.0, 0.0), centred_sim.config.start_distance_angstrom)]).df[0]
    far = tilted[..., 0]
    # The probe hangs 1 Å to +x of the tip: it is above the atom when the tip is 1 Å (2 px) to -x.
    assert np.unravel_index(far.argmin(), far.shape) == (14, 16)


def _closed_form_fields(molecule: Mol, points: np.ndarray, probe_z: int, charges, charge_z):
    """Fz (eV/Å) on the probe and potential (V) at points (..., 3), straight from Eq. 1 and Coulomb's law."""
    from afm_ray.elements import ELEMENT_TABLE

    r_probe, e_probe = ELEMENT_TABLE.lj_params([probe_z])
    r_atoms, e_atoms = ELEMENT_TABLE.lj_params(molecule.numbers)
    fz = np.zeros(points.shape[:-1])
    potential = np.zeros(points.shape[:-1])
    for position, q, r_i, e_i in zip(molecule.positions, molecule.charges, r_atoms, e_atoms):
        r0, eps = r_i + r_probe[0], math.sqrt(e_i * e_probe[0])
        d = points - position
        r = np.linalg.norm(d, axis=-1)
        # E = eps((r0/r)^12 - 2 (r0/r)^6)  =>  F = -dE/dr · d/r = 12 eps/r ((r0/r)^12 - (r0/r)^6) · d/r
        fz += 12 * eps / r * ((r0 / r) ** 12 - (r0 / r) ** 6) * d[..., 2] / r
        potential += COULOMB_CONSTANT_EV_ANGSTROM * q / r
        for qp, zp in zip(charges, charge_z):
            dq = d + np.array([0.0, 0.0, zp])
            rq = np.linalg.norm(dq, axis=-1)
            fz += COULOMB_CONSTANT_EV_ANGSTROM * q * qp * dq[..., 2] / rq**3
    return fz, potential


@pytest.mark.parametrize("tip_config", [
    {"atomic_number": 8, "charge_e": -0.1},
    {"atomic_number": 54, "charge_e": 0.3},
    {"atomic_number": 8, "charge_e": -0.1, "multipole": "quadrupole"},
])
def test_rigid_probe_forces_and_potential_equal_the_closed_forms(cpu_device, tip_config):
    config = SimConfig(scan_pixels=(8, 8), tips={"T": tip_config})
    simulator = Simulator(config, device=cpu_device)
    planes = np.array([2.5, 3.0, 4.0, 6.0])
    fz, potential = simulator.rigid_probe_fields([FORMALDEHYDE], planes, tip="T")
    assert fz.shape == potential.shape == (1, 8, 8, 4) and fz.dtype == np.float32
    xs, ys = simulator.pixel_centres(FORMALDEHYDE)
    top = FORMALDEHYDE.positions[:, 2].max()
    points = np.stack(np.meshgrid(xs, ys, planes + top, indexing="ij"), axis=-1)
    charges, charge_z = config.tip("T").point_charges()
    fz_ref, potential_ref = _closed_form_fields(FORMALDEHYDE, points, tip_config["atomic_number"], charges, charge_z)
    np.testing.assert_allclose(fz[0], fz_ref, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(potential[0], potential_ref, rtol=2e-4, atol=2e-6)


def test_relaxed_probe_positions_are_equilibria_of_springs_and_sample_forces(sim):
    """At every returned probe position the closed-form total force (sample + springs) vanishes."""
    from afm_ray.elements import ELEMENT_TABLE

    config = sim.config
    params = [ScanParams((0.6, -0.4), config.start_distance_angstrom)]
    result = sim.run([FORMALDEHYDE], tip="Xe", scan_params=params, return_probe_positions=True)
    positions = result.probe_positions[0]                     # (nx, ny, n_steps, 3)
    assert result.relax_iterations.max() < config.relax_max_iterations
    xs, ys = sim.pixel_centres(FORMALDEHYDE)
    tips = np.stack(np.broadcast_arrays(xs[:, None, None], ys[None, :, None], result.tip_z[0][None, None, :]), axis=-1)
    r_probe, e_probe = ELEMENT_TABLE.lj_params([54])
    r_atoms, e_atoms = ELEMENT_TABLE.lj_params(FORMALDEHYDE.numbers)
    force = np.zeros_like(positions)
    for position, q, r_i, e_i in zip(FORMALDEHYDE.positions, FORMALDEHYDE.charges, r_atoms, e_atoms):
        r0, eps = r_i + r_probe[0], math.sqrt(e_i * e_probe[0])
        d = positions - position
        r = np.linalg.norm(d, axis=-1, keepdims=True)
        force += (12 * eps / r * ((r0 / r) ** 12 - (r0 / r) ** 6) + COULOMB_CONSTANT_EV_ANGSTROM * q * 0.3 / r**2) * d / r
    kx, ky, kr = config.stiffness_ev_per_angstrom2()
    offset = positions - tips
    length = np.linalg.norm(offset, axis=-1, keepdims=True)
    rest = result.probe_rest[0]
    force -= np.stack([kx * (offset[..., 0] - rest[0]), ky * (offset[..., 1] - rest[1]), 0 * offset[..., 2]], axis=-1)
    force -= kr * (length - config.probe_length_angstrom) * offset / length
    # The kernel stops at |F| < 1e-4 eV/Å in float32; allow for the float64 re-evaluation.
    assert np.linalg.norm(force, axis=-1).max() < 3e-4


def test_potential_on_a_surface_and_absolute_planes(sim):
    heights = np.full((1, 32, 32), 3.0)
    surface = sim.electrostatic_potential_on_surface([WATER], heights)
    _, planes = sim.rigid_probe_fields([WATER], [3.0 + WATER.positions[:, 2].max()], relative_to="absolute")
    assert surface.shape == (1, 32, 32)
    np.testing.assert_allclose(surface, planes[..., 0], rtol=1e-6, atol=1e-7)
    with pytest.raises(InputError, match="relative_to"):
        sim.rigid_probe_fields([WATER], [3.0], relative_to="bottom")


def _giessibl_quad(force, z_centre, amplitude, f0, k_n_per_m):
    from scipy.integrate import quad

    k = k_n_per_m * EV_PER_ANGSTROM2_PER_N_PER_M
    # q = A cos(theta) removes the 1/sqrt(A^2 - q^2) singularity of Eq. 5.
    integral, _ = quad(lambda theta: force(z_centre - amplitude * math.cos(theta)) * amplitude * math.cos(theta), 0.0, math.pi)
    return f0 / (math.pi * k * amplitude**2) * integral


def test_giessibl_weights_match_the_integral_by_quadrature():
    dz, steps, f0, k = 0.1, 10, 30300.0, 1800.0
    weights = giessibl_weights(steps, dz, f0, k)

    def force(z):  # Morse-like: attraction with a repulsive wall (eV/Å, z in Å)
        return -0.2 * np.exp(-(z - 3.0) / 0.8) + 0.15 * np.exp(-2 * (z - 3.0) / 0.8)

    for z_centre in (4.5, 3.5, 2.8):  # attractive, near the crossover (terms cancel), repulsive wall
        expected = _giessibl_quad(force, z_centre, 0.5 * steps * dz, f0, k)
        samples = force(z_centre + 0.5 * steps * dz - dz * np.arange(steps + 1))
        # Fz sampled every 0.1 Å, linear in between: second-order error, 0.05 Hz at the crossover.
        assert weights @ samples == pytest.approx(expected, rel=1e-2, abs=0.06)
        fine_steps = 4 * steps
        fine = force(z_centre + 0.5 * steps * dz - dz / 4 * np.arange(fine_steps + 1))
        assert giessibl_weights(fine_steps, dz / 4, f0, k) @ fine == pytest.approx(expected, rel=1e-3, abs=5e-3)
    # A linear force law is integrated exactly: Δf = f0·k_ts/(2k) with k_ts = -dF/dz.
    gradient = 0.05
    linear = gradient * (4.0 - dz * np.arange(steps + 1))
    expected = -f0 * gradient / (2 * k * EV_PER_ANGSTROM2_PER_N_PER_M)
    assert weights @ linear == pytest.approx(expected, rel=1e-9)
    assert weights.sum() == pytest.approx(0.0, abs=1e-9)


def test_df_kernel_applies_the_weights_to_the_relaxed_fz(sim):
    result = sim.run([WATER], scan_params=[ScanParams.fixed(sim.config)], return_fz=True)
    config = sim.config
    weights = giessibl_weights(config.df_steps, config.dz_angstrom, config.f0_hz, config.cantilever_stiffness_n_per_m)
    windows = np.lib.stride_tricks.sliding_window_view(result.fz[0].astype(np.float64), config.df_steps + 1, axis=-1)
    np.testing.assert_allclose(result.df[0], windows @ weights, rtol=1e-4, atol=1e-4)


# -- output contract -------------------------------------------------------------------------------
def test_output_shape_axes_and_heights(sim, small_config):
    result = sim.run([WATER, FORMALDEHYDE], tip="Xe", seed=3)
    assert result.df.shape == (2, 32, 32, small_config.num_slices) and result.df.dtype == np.float32
    assert np.isfinite(result.df).all() and (result.unconverged == 0).all()
    # Far → close: tip heights decrease by dz; contrast grows as the tip approaches.
    np.testing.assert_allclose(np.diff(result.tip_z, axis=1), -small_config.dz_angstrom)
    np.testing.assert_allclose(result.slice_tip_z, result.tip_z[:, :small_config.num_slices] - 0.5, atol=1e-12)
    assert (np.ptp(result.df[..., -1], axis=(1, 2)) > np.ptp(result.df[..., 0], axis=(1, 2))).all()
    # The window is centred on the mean atom xy.
    np.testing.assert_allclose(result.window_origin[0], WATER.positions[:, :2].mean(axis=0) - 8.0)
    assert result.tip == "Xe"


def test_batch_equals_single_runs_and_buffers_are_reused(sim):
    params = draw_scan_params(sim.config, 3, seed=11)
    batch = sim.run([WATER, FORMALDEHYDE, WATER], scan_params=params).df
    single = sim.run([FORMALDEHYDE], scan_params=params[1:2]).df
    np.testing.assert_allclose(batch[1], single[0], atol=1e-5)
    np.testing.assert_allclose(batch[0], sim.run([WATER], scan_params=params[:1]).df[0], atol=1e-5)


def test_three_line_usage_with_ase_atoms(sim):
    from ase.build import molecule

    methanol = molecule("CH3OH")
    methanol.set_initial_charges([0.1, -0.6, 0.2, 0.1, 0.1, 0.1])
    df = sim.simulate([methanol])
    assert df.shape == (1, 32, 32, 20) and np.isfinite(df).all()


def test_seeds_reproduce_each_sample(small_config):
    params = draw_scan_params(small_config, 50, seed=5)
    again = draw_scan_params(small_config, 50, seed=5)
    assert params == again
    assert len({p.seed for p in params}) == 50
    for p in params[:5]:
        assert ScanParams.draw(small_config, p.seed) == p
    radii = np.array([math.hypot(*p.tilt_angstrom) for p in params])
    assert radii.max() <= small_config.tilt_radius_angstrom and radii.max() > 0.5
    jittered = SimConfig(start_distance_jitter_angstrom=0.25)
    distances = [p.start_distance_angstrom for p in draw_scan_params(jittered, 50, seed=1)]
    assert 5.75 <= min(distances) < max(distances) <= 6.25


def test_same_seed_same_stacks(sim):
    a = sim.run([WATER], seed=42)
    b = sim.run([WATER], seed=42)
    np.testing.assert_array_equal(a.df, b.df)
    assert a.scan_params == b.scan_params


def test_a_molecule_with_tin_simulates(sim, tmp_path):
    """Tin tetrachloride (Sn–Cl 2.28 Å, tetrahedral) from an xyz file: Sn is one of the heavier elements
    ppafm parameterises, refused as unknown before the element table covered Rb–Te and Cs–Bi."""
    from afm_ray.molecules.io import read_xyz

    d = 2.28 / math.sqrt(3.0)
    corners = [(d, d, d), (-d, -d, d), (-d, d, -d), (d, -d, -d)]
    path = tmp_path / "sncl4.xyz"
    path.write_text("5\nSnCl4\nSn 0 0 0 0.48\n" + "".join(f"Cl {x} {y} {z} -0.12\n" for x, y, z in corners))
    molecule = read_xyz(path)
    assert molecule.symbols == ["Sn", "Cl", "Cl", "Cl", "Cl"]
    result = sim.run([molecule], seed=3, return_probe_positions=True)
    df = result.df[0]
    assert df.shape == (32, 32, sim.config.num_slices) and np.isfinite(df).all()
    assert result.relax_iterations.max() < sim.config.relax_max_iterations
    close = df[..., -1]
    assert close.max() - close.min() > 1.0  # Hz: the molecule is seen


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("molecule, message", [
    (Mol(np.array([], int), np.zeros((0, 3)), np.zeros(0), "empty"), "no atoms"),
    (Mol(np.array([6]), np.array([[0.0, np.nan, 0.0]]), np.zeros(1), "nan"), "non-finite position"),
    (Mol(np.array([6, 6]), np.array([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0]]), np.zeros(2), "wide"), "does not contain"),
    (Mol(np.array([6]), np.zeros((1, 3)), np.array([np.inf]), "q"), "non-finite charge"),
    (Mol(np.array([200]), np.zeros((1, 3)), np.zeros(1), "z"), "unknown element"),
])
def test_bad_molecules_are_rejected_with_a_clear_message(sim, molecule, message):
    with pytest.raises(InputError, match=message):
        sim.run([molecule])


def test_scan_too_close_unknown_tip_and_empty_batch_are_rejected(sim):
    with pytest.raises(InputError, match="too close"):
        sim.run([WATER], scan_params=[ScanParams((0.0, 0.0), 2.0)])
    with pytest.raises(InputError, match="unknown tip 'Ar'.*CO, Xe"):
        sim.run([WATER], tip="Ar")
    with pytest.raises(InputError, match="empty batch"):
        sim.run([])
    with pytest.raises(InputError, match="2 scan parameter sets for 1"):
        sim.run([WATER], scan_params=[ScanParams(), ScanParams()])


def test_config_rejects_unknown_keys_and_loads_the_shipped_yaml(tmp_path):
    shipped = CONFIGS / "sim.yaml"
    assert SimConfig.from_yaml(shipped) == SimConfig()
    bad = tmp_path / "bad.yaml"
    bad.write_text("scan_pixels: [64, 64]\namplitude: 3\n")
    with pytest.raises(InputError, match="amplitude"):
        SimConfig.from_yaml(bad)
    with pytest.raises(InputError, match="tilt_radius_angstrom"):
        SimConfig.from_dict({"tilt_radius_angstrom": 5.0})
    assert SimConfig().stiffness_ev_per_angstrom2()[2] == pytest.approx(30 * 0.0624150907)


def test_device_selection(cpu_device):
    assert select_device("cpu").int_ptr == cpu_device.int_ptr
    with pytest.raises(InputError, match="no OpenCL device matches"):
        select_device("no-such-device-name")
    with pytest.raises(InputError, match="out of range"):
        select_device(999)
    with pytest.raises(InputError, match="chosen by the pipeline's actors"):
        select_device("ray")


def test_an_nvidia_gpu_number_needs_an_nvidia_opencl_device(cpu_device):
    if any("nvidia" in d.platform.vendor.lower() for d in list_devices()):
        pytest.skip("an NVIDIA OpenCL device is present")
    with pytest.raises(InputError, match="NVIDIA GPU 0 wanted but no NVIDIA OpenCL device"):
        select_device("nvidia:0")


def test_the_simulator_imports_no_ray():
    """The device Ray assigned an actor is the pipeline's business: the simulator takes a concrete one."""
    for module in Path(inspect.getfile(Simulator)).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [name for name in names if name.split(".")[0] == "ray"], module


# -- command line ----------------------------------------------------------------------------------
def test_cli_simulate_writes_stacks_and_metadata(tmp_path, cpu_device):
    from afm_ray.cli import main

    xyz = tmp_path / "formaldehyde.xyz"
    lines = [str(len(FORMALDEHYDE.numbers)), "formaldehyde"]
    for z, (x, y, zz), q in zip(FORMALDEHYDE.numbers, FORMALDEHYDE.positions, FORMALDEHYDE.charges):
        lines.append(f"{ {6: 'C', 8: 'O', 1: 'H'}[int(z)]} {x:.4f} {y:.4f} {zz:.4f} {q:.3f}")
    xyz.write_text("\n".join(lines) + "\n")
    config = tmp_path / "sim.yaml"
    config.write_text("scan_pixels: [16, 16]\nnum_slices: 5\n")
    out = tmp_path / "stacks.npz"
    code = main(["simulate", "--xyz", str(xyz), "--tip", "Xe", "--tilt", "0", "--config", str(config),
                 "--device", "cpu", "--out", str(out)])
    assert code == 0
    data = np.load(out)
    assert data["df"].shape == (1, 16, 16, 5) and data["df"].dtype == np.float32
    assert str(data["tip"]) == "Xe" and int(data["tip_atomic_number"]) == 54
    np.testing.assert_allclose(data["probe_rest_offset_angstrom"], [[0.0, 0.0, -4.0]])
    assert data["slice_tip_height_above_top_atom_angstrom"].shape == (1, 5)
    assert float(data["amplitude_peak_to_peak_angstrom"]) == pytest.approx(1.0)
    assert main(["simulate", "--xyz", str(xyz), "--tip", "Ar", "--device", "cpu", "--out", str(out)]) == 2


def test_cli_simulate_draws_the_sample_with_its_descriptors(tmp_path, cpu_device, tiny_database):
    from afm_ray.cli import main

    config = tmp_path / "sim.yaml"
    config.write_text("scan_pixels: [32, 32]\nnum_slices: 6\n")
    code = main(["simulate", "--molecules", str(tiny_database), "--ids", "qm9:000010", "qm9:000020",
                 "--config", str(config), "--device", "cpu", "--out", str(tmp_path / "s.npz"),
                 "--png", str(tmp_path / "figures"), "--png-max", "1"])
    assert code == 0
    (png,) = (tmp_path / "figures").iterdir()  # --png-max 1: only the first molecule
    assert png.name == "qm9_000010.png" and png.read_bytes()[:4] == b"\x89PNG"
    from matplotlib.image import imread
    image = imread(png)
    assert image.shape[0] > 500 and image.shape[1] > 1500  # slices, 4 descriptor maps, xyz and molecule panels
    assert image[..., :3].std() > 0.1


def test_a_batch_too_large_for_the_device_is_refused_before_allocation():
    from afm_ray.errors import InputError

    sim = Simulator(SimConfig(scan_pixels=(32, 32)), device="cpu")
    per_buffer = int(sim.device.max_mem_alloc_size)
    # fz holds count × heights × pixels float32: enough samples to pass the device's largest buffer
    count = per_buffer // (sim.config.num_z_steps * 32 * 32 * 4) + 1
    with pytest.raises(InputError, match=rf"{count} samples of 32×32 px × 30 heights need .* MiB .* use at most "
                                         rf"{count - 1} samples per batch"):
        sim.run([WATER] * count)
    assert not sim._buffers  # nothing was allocated
