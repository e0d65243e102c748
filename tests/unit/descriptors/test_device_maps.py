"""DeviceMaps (vdW Spheres and Atomic Disks on OpenCL) against the NumPy descriptors, on the CPU device.

Molecules: the 49-molecule QM9 sample (3 to 19 atoms), randomly rotated, batched together.
"""

from __future__ import annotations

import ast
import csv

import numpy as np
import pytest

from afm_ray.descriptors import ScanWindow, atomic_disks, vdw_spheres
from afm_ray.descriptors.device_maps import DeviceMaps
from afm_ray.errors import InputError
from afm_ray.sim import SimConfig, Simulator

from conftest import QM9_SAMPLE

TOLERANCE = 1e-5  # Å (unitless for ppafm disks); float64 kernels in fact agree exactly
FLOAT32_SPHERES_TOLERANCE = 1e-4  # Å, float32 kernels near sphere rims (module docstring)
SYMBOL_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
WINDOWS = {"32 px": ScanWindow(nx=32, ny=32), "128 px": ScanWindow(nx=128, ny=128)}


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


@pytest.fixture(scope="module")
def qm9_rotated() -> list[tuple[np.ndarray, np.ndarray]]:
    """(positions Å, numbers) of every QM9-sample molecule, each in a random orientation."""
    rng = np.random.default_rng(7)
    molecules = []
    with open(QM9_SAMPLE, newline="") as handle:
        for row in csv.DictReader(handle):
            numbers = np.array([SYMBOL_NUMBERS[s] for s in ast.literal_eval(row["Elements"])])
            positions = np.array(ast.literal_eval(row["XYZ_Ang"])) @ random_rotation(rng).T
            molecules.append((positions, numbers))
    return molecules


@pytest.fixture(scope="module")
def simulator(cpu_device) -> Simulator:
    return Simulator(SimConfig(scan_pixels=(32, 32)), device=cpu_device)


@pytest.fixture(scope="module")
def device_maps(simulator) -> DeviceMaps:
    return DeviceMaps(simulator.context, simulator.queue)


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    return float(np.abs(a - b).max())


def assert_equals_numpy(device_maps: DeviceMaps, molecules, window: ScanWindow, centre: bool = True,
                        spheres_tolerance: float = TOLERANCE) -> list[np.ndarray]:
    """Compares both radii and both disk modes; returns DeviceMaps' four maps."""
    maps = []
    for radii in ("vdw", "ppafm"):
        maps.append(device_maps.vdw_spheres(molecules, window, radii=radii, centre=centre).copy())
        assert max_difference(maps[-1], vdw_spheres(molecules, window, radii=radii, centre=centre)) <= spheres_tolerance
    for mode in ("thesis", "ppafm"):
        maps.append(device_maps.atomic_disks(molecules, window, mode=mode, centre=centre).copy())
        assert max_difference(maps[-1], atomic_disks(molecules, window, mode=mode, centre=centre)) <= TOLERANCE
    return maps


def test_the_program_runs_in_double_precision_on_pocl(device_maps):
    assert device_maps.double_precision


@pytest.mark.parametrize("window", WINDOWS.values(), ids=WINDOWS.keys())
def test_a_batch_of_all_sizes_equals_numpy(device_maps, qm9_rotated, window):
    maps = assert_equals_numpy(device_maps, qm9_rotated, window)
    assert all(single_map.max() > 0.5 for single_map in maps)  # the comparison is not of empty maps


def test_one_molecule_equals_numpy(device_maps, qm9_rotated):
    largest = qm9_rotated[-1]  # 19 atoms
    assert_equals_numpy(device_maps, largest, WINDOWS["128 px"])  # a bare molecule, not a list
    assert_equals_numpy(device_maps, [qm9_rotated[2]], WINDOWS["32 px"])  # a list of one 3-atom molecule


def test_an_off_centre_non_square_window_on_uncentred_positions_equals_numpy(device_maps, qm9_rotated):
    shift = np.array([3.25, -1.7, 0.4])
    shifted = [(positions - positions.mean(axis=0) + shift, numbers) for positions, numbers in qm9_rotated[:12]]
    window = ScanWindow.centred(shift[:2], size=(12.0, 9.0), pixels=(48, 37))
    assert_equals_numpy(device_maps, shifted, window, centre=False)


def test_non_default_cut_depths_and_cone_width_equal_numpy(device_maps, qm9_rotated):
    window = WINDOWS["32 px"]
    assert max_difference(device_maps.vdw_spheres(qm9_rotated, window, cut_depth=0.7),
                          vdw_spheres(qm9_rotated, window, cut_depth=0.7)) <= TOLERANCE
    arguments = {"cut_depth": 1.6, "cone_width_factor": 1.8}
    assert max_difference(device_maps.atomic_disks(qm9_rotated, window, **arguments),
                          atomic_disks(qm9_rotated, window, **arguments)) <= TOLERANCE


@pytest.mark.parametrize("radii, disks_mode", [("vdw", "thesis"), ("ppafm", "ppafm")])
def test_maps_equal_the_single_calls(device_maps, qm9_rotated, radii, disks_mode):
    window = WINDOWS["128 px"]
    maps = {name: single_map.copy() for name, single_map in
            device_maps.maps(qm9_rotated[:20], window, radii=radii, disks_mode=disks_mode).items()}
    assert set(maps) == {"vdw_spheres", "atomic_disks"}
    np.testing.assert_array_equal(maps["vdw_spheres"], device_maps.vdw_spheres(qm9_rotated[:20], window, radii=radii))
    np.testing.assert_array_equal(maps["atomic_disks"], device_maps.atomic_disks(qm9_rotated[:20], window, mode=disks_mode))


def test_each_call_returns_its_own_arrays(device_maps, qm9_rotated):
    spheres = device_maps.vdw_spheres(qm9_rotated[:3], WINDOWS["32 px"])
    kept = spheres.copy()
    later = device_maps.maps(qm9_rotated[3:5], WINDOWS["32 px"])["vdw_spheres"]
    assert not np.shares_memory(spheres, later)
    np.testing.assert_array_equal(spheres, kept)


def test_buffers_are_reused_by_a_smaller_batch(simulator, qm9_rotated):
    device_maps = DeviceMaps(simulator.context, simulator.queue)
    device_maps.maps(qm9_rotated[30:], WINDOWS["128 px"])
    def allocations():
        return {name: id(buffer) for name, buffer in device_maps._buffers.items()}

    before = allocations()
    assert set(before) == {"atoms", "atom_range", "vdw_spheres", "atomic_disks"}
    device_maps.maps(qm9_rotated[:4], WINDOWS["32 px"])
    device_maps.atomic_disks(qm9_rotated[40:42], WINDOWS["128 px"], mode="ppafm")
    assert allocations() == before
    device_maps.release()
    assert not allocations()
    assert_equals_numpy(device_maps, qm9_rotated[:5], WINDOWS["32 px"])  # buffers come back after release


def test_float32_kernels_stay_within_their_stated_tolerance(simulator, qm9_rotated):
    device_maps = DeviceMaps(simulator.context, simulator.queue, double_precision=False)
    assert_equals_numpy(device_maps, qm9_rotated, WINDOWS["128 px"], spheres_tolerance=FLOAT32_SPHERES_TOLERANCE)


@pytest.mark.parametrize("call, arguments", [
    ("vdw_spheres", {"molecules": []}),
    ("vdw_spheres", {"radii": "bondi"}),
    ("vdw_spheres", {"cut_depth": 0.0}),
    ("atomic_disks", {"molecules": []}),
    ("atomic_disks", {"mode": "sum"}),
    ("atomic_disks", {"mode": "sum", "molecules": []}),
    ("atomic_disks", {"cut_depth": -1.0}),
    ("atomic_disks", {"cone_width_factor": 0.0}),
    ("atomic_disks", {"mode": "ppafm", "molecules": []}),
    ("atomic_disks", {"molecules": [(np.zeros((2, 3)), np.array([6]))]}),
])
def test_bad_input_gives_the_numpy_error(device_maps, qm9_rotated, call, arguments):
    arguments = {"molecules": qm9_rotated[:2], **arguments}
    with pytest.raises(InputError) as expected:
        {"vdw_spheres": vdw_spheres, "atomic_disks": atomic_disks}[call](**arguments)
    with pytest.raises(InputError) as ours:
        getattr(device_maps, call)(**arguments)
    assert str(ours.value) == str(expected.value)


@pytest.mark.parametrize("arguments, numpy_call", [
    ({"molecules": []}, lambda: vdw_spheres([])),
    ({"disks_mode": "sum"}, lambda: atomic_disks([], mode="sum")),
    ({"radii": "bondi"}, lambda: vdw_spheres([([[0.0, 0, 0]], [6])], radii="bondi")),
])
def test_bad_input_to_maps_gives_the_numpy_error(device_maps, qm9_rotated, arguments, numpy_call):
    with pytest.raises(InputError) as expected:
        numpy_call()
    with pytest.raises(InputError) as ours:
        device_maps.maps(**{"molecules": qm9_rotated[:2], **arguments})
    assert str(ours.value) == str(expected.value)
