"""Cross-checks of the descriptors against ppafm's ``ppafm.ml.AuxMap`` (the reference the thesis used).

The definitions coincide once the differences documented in the descriptor modules are undone:

* vdW Spheres: ppafm's radius is its LJ R_min/2 − 0.5 Å (our ``radii="ppafm"``) and its zero is
  the top; we add the 1.5 Å cut depth.
* Atomic Disks, ``mode="ppafm"``: equal to ppafm's as the published ASD-AFM data used it
  (``diskMode='sphere'``, ``zmin = zmax_s = −1.2``, ``Rpp = −0.5``). ``mode="thesis"`` against
  ppafm's ``diskMode='center'``, ``zmin=-2``: ppafm draws each cone at half our scale and sums
  overlapping cones; we take the maximum. Equal (×2) wherever at most one cone covers a pixel.
* Height Map / ES Map: ppafm scans its 0.1 Å force-field grid for ``Fz = 0.1 eV/Å`` and reports
  the surface one z step (0.1 Å) too deep, which cancels in the Height Map (relative to its max)
  but not in the electrostatics; its ESMap stores E_z (``feMap[..., 2]``: our ``quantity="ez"``),
  and the same kernel's potential channel (``feMap[..., 3]``) checks ``quantity="potential"``,
  giving it atoms in the scanner's grid frame.

ppafm pixels sit on ``linspace(-8, 8, 128)``; we use a window of 128 cells of 16/127 Å so that the
pixel centres coincide.
"""

from __future__ import annotations

import ast
import csv

import numpy as np
import pytest

from afm_ray.bench.ppafm_reference import init_ppafm
from afm_ray.descriptors import ScanWindow, atomic_disks, vdw_spheres
from afm_ray.descriptors.height_es import EsMapConfig, HeightMapConfig, height_and_es_maps

from conftest import QM9_SAMPLE

ppafm = pytest.importorskip("ppafm")
pytestmark = pytest.mark.filterwarnings("ignore::Warning")

PIXELS, HALF_WIDTH = 128, 8.0
STEP = 2 * HALF_WIDTH / (PIXELS - 1)
PPAFM_GRID = ScanWindow(x_min=-HALF_WIDTH - STEP / 2, y_min=-HALF_WIDTH - STEP / 2, width=PIXELS * STEP,
                        height=PIXELS * STEP, nx=PIXELS, ny=PIXELS)
SYMBOL_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def qm9_molecules(min_atoms: int, count: int):
    """(positions with mean xy at 0, numbers, charges) of the first QM9-sample molecules this big."""
    molecules = []
    with open(QM9_SAMPLE, newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["N_atoms"]) < min_atoms:
                continue
            numbers = np.array([SYMBOL_NUMBERS[s] for s in ast.literal_eval(row["Elements"])])
            positions = np.array(ast.literal_eval(row["XYZ_Ang"]))
            positions[:, :2] -= positions[:, :2].mean(axis=0)
            molecules.append((positions, numbers, np.array(ast.literal_eval(row["Mulliken_pop"]))))
            if len(molecules) == count:
                break
    return molecules


@pytest.fixture(scope="module")
def opencl(cpu_device):
    """ppafm's OpenCL on the platform of the CPU device afm-ray's simulator uses here."""
    init_ppafm(cpu_device)


def ppafm_table(column: int):
    from ppafm.elements import ELEMENTS

    return lambda numbers: np.array([ELEMENTS[int(z) - 1][column] for z in numbers], dtype=np.float64)


def test_vdw_spheres_match_ppafm_with_its_radii(opencl):
    from ppafm.ml.AuxMap import vdwSpheres

    reference = vdwSpheres(scan_dim=(PIXELS, PIXELS), scan_window=((-HALF_WIDTH,) * 2, (HALF_WIDTH,) * 2),
                           zmin=-1.5, Rpp=-0.5)
    for positions, numbers, charges in qm9_molecules(12, 3):
        expected = reference(np.column_stack([positions, charges]).astype(np.float32), numbers) + 1.5
        ours = vdw_spheres((positions, numbers), PPAFM_GRID, centre=False, radii="ppafm")[0]
        np.testing.assert_allclose(ours, expected, atol=1e-5)
        assert not np.allclose(vdw_spheres((positions, numbers), PPAFM_GRID, centre=False)[0], expected, atol=0.1)


def test_atomic_disks_ppafm_mode_matches_the_published_data_settings(opencl):
    from ppafm.ml.AuxMap import AtomicDisks

    reference = AtomicDisks(scan_dim=(PIXELS, PIXELS), scan_window=((-HALF_WIDTH,) * 2, (HALF_WIDTH,) * 2),
                            zmin=-1.2, zmax_s=-1.2, Rpp=-0.5, diskMode="sphere")
    for positions, numbers, charges in qm9_molecules(12, 3):
        expected = reference(np.column_stack([positions, charges]).astype(np.float32), numbers)
        ours = atomic_disks((positions, numbers), PPAFM_GRID, centre=False, mode="ppafm")[0]
        np.testing.assert_allclose(ours, expected, atol=1e-5)
        assert ours.max() > 0.5  # near the top atom's apex, 1


def test_atomic_disks_match_ppafm_where_cones_do_not_overlap(opencl):
    from ppafm.ml.AuxMap import AtomicDisks

    reference = AtomicDisks(scan_dim=(PIXELS, PIXELS), scan_window=((-HALF_WIDTH,) * 2, (HALF_WIDTH,) * 2),
                            zmin=-2.0, diskMode="center")
    for positions, numbers, charges in qm9_molecules(12, 3):
        expected = 2.0 * reference(np.column_stack([positions, charges]).astype(np.float32), numbers)
        ours = atomic_disks((positions, numbers), PPAFM_GRID, centre=False, radius_of=ppafm_table(6))[0]
        assert np.all(ours <= expected + 1e-5)  # max of cones ≤ their sum
        agree = np.abs(ours - expected) < 1e-5
        assert agree.mean() > 0.99  # differences only where bonded atoms' cones overlap
        assert ours.max() > 0.5


def test_height_and_es_maps_match_ppafm(opencl, cpu_device):
    from ppafm.ml.AuxMap import HeightMap
    from ppafm.ocl.AFMulator import AFMulator

    from afm_ray.sim import SimConfig, Simulator

    molecules = qm9_molecules(12, 2)
    simulator = Simulator(SimConfig(scan_size_angstrom=(PIXELS * STEP,) * 2, scan_pixels=(PIXELS,) * 2), device=cpu_device)
    ours = height_and_es_maps(molecules, simulator, HeightMapConfig())
    ours_field_z = height_and_es_maps(molecules, simulator, HeightMapConfig(), EsMapConfig(quantity="ez")).es
    for index, (positions, numbers, charges) in enumerate(molecules):
        scan_top = positions[:, 2].max() + 10.0  # probe starts 7 Å above the top nucleus (3 Å below the tip)
        afm = AFMulator(pixPerAngstrome=10, scan_dim=(PIXELS, PIXELS, 30), iZPP=8, Qs=[-0.1, 0, 0, 0],
                        QZs=[0, 0, 0, 0], tipR0=[0, 0, 3], npbc=(0, 0, 0), df_steps=10,
                        scan_window=((-HALF_WIDTH, -HALF_WIDTH, scan_top - 3.0), (HALF_WIDTH, HALF_WIDTH, scan_top)))
        afm.prepareFF(positions, numbers, charges)
        afm.prepareScanner()
        expected_height = HeightMap(afm.scanner, zmin=-2.0, iso=0.1)()
        grid_frame_atoms = np.column_stack([positions - afm.lvec[0], charges]).astype(np.float32)
        afm.scanner.prepareAuxMapBuffers(bZMap=True, bFEmap=True, atoms=grid_frame_atoms)
        _, field_map = afm.scanner.run_getZisoFETilted(iso=0.1, nz=100)
        expected_potential, expected_field_z = field_map[:, :, 3], field_map[:, :, 2]

        height, es = ours.height[index], ours.es[index]
        both = (height > 0) & (expected_height > 0)
        assert both.sum() / ((height > 0) | (expected_height > 0)).sum() > 0.99  # same footprint
        difference = np.abs(height - expected_height)[both]
        assert difference.mean() < 0.01 and difference.max() < 0.1  # Å; ppafm interpolates a 0.1 Å grid
        assert np.corrcoef(es[both], expected_potential[both])[0, 1] > 0.995
        assert np.abs(es - expected_potential)[both].max() < 0.05  # V; ppafm samples 0.1 Å deeper
        field_z = ours_field_z[index]
        assert np.corrcoef(field_z[both], expected_field_z[both])[0, 1] > 0.99
        scale = np.abs(expected_field_z[both]).max()
        slope = np.polyfit(expected_field_z[both], field_z[both], 1)[0]
        assert 0.8 < slope < 1.25  # same sign and units (V/Å); E_z changes faster than V over ppafm's 0.1 Å
        assert np.abs(field_z - expected_field_z)[both].mean() < 0.05 * scale
