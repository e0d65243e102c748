"""ppafm, the reference Probe Particle Model the thesis used, driven with afm-ray's settings: the one adapter of
every comparison with it (``afm-ray bench sim --vs ppafm``, ``afm-ray bench sim-vs-ppafm``, ``afm-ray bench
published-on-ppafm`` and the tests ``tests/integration/test_sim_vs_ppafm.py``,
``tests/unit/descriptors/test_descriptors_vs_ppafm.py``).

ppafm (>= 0.4) is a test and benchmark extra, imported only when a function here is called. It keeps its
OpenCL context in module-level state: :func:`init_ppafm` sets it once per process, on the platform of the
device afm-ray simulates on.

Apples to apples: the same tip (element, point charges), stiffnesses, probe length, f0, cantilever stiffness
and Δf steps as the :class:`~afm_ray.sim.SimConfig`, tilt 0, and pixel centres (ppafm's scan window spans
pixel centres, ours the pixel edges).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from afm_ray.errors import InputError


def init_ppafm(device=None, option: str = "ppafm"):
    """Initialise ppafm's OpenCL on the platform of ``device`` (a ``pyopencl.Device``; None: the first
    platform) and return its ``AFMulator`` class. Raises :class:`InputError` naming ``option`` when ppafm
    is not installed."""
    try:
        import pyopencl as cl
        from ppafm.ocl import oclUtils
    except ImportError:
        raise InputError(option, "ppafm is not installed (pip install ppafm, or afm-ray[test])") from None
    # ppafm's own pyopencl usage: it re-fetches kernels per call and uses the old Image constructor
    warnings.filterwarnings("ignore", message=".*retrieved more than once.*")
    warnings.filterwarnings("ignore", message="Non-descriptor Image constructor", category=DeprecationWarning)
    platform = 0 if device is None else [p.int_ptr for p in cl.get_platforms()].index(device.platform.int_ptr)
    oclUtils.init_env(platform)
    from ppafm.ocl.AFMulator import AFMulator

    return AFMulator


def afmulator(afmulator_class, config, tip: str, scan_window, n_heights: int, df_steps: int):
    """ppafm's ``AFMulator`` with the tip, stiffnesses, probe length and cantilever of ``config`` (a
    :class:`~afm_ray.sim.SimConfig`), ``n_heights`` tip heights over ``scan_window``
    (((x0, y0, z0), (x1, y1, z1)) in Å, pixel centres) and ``df_steps`` weights of its Giessibl kernel."""
    tip_config = config.tip(tip)
    charges, charge_z = tip_config.point_charges()
    qs, qzs = [0.0] * 4, [0.0] * 4
    qs[:len(charges)], qzs[:len(charges)] = charges.tolist(), charge_z.tolist()
    (nx, ny) = config.scan_pixels
    return afmulator_class(scan_dim=(nx, ny, n_heights), scan_window=scan_window, iZPP=tip_config.atomic_number,
                           Qs=qs, QZs=qzs, df_steps=df_steps, tipR0=[0.0, 0.0, config.probe_length_angstrom],
                           tipStiffness=[*config.lateral_stiffness_n_per_m, 0.0, config.radial_stiffness_n_per_m],
                           f0Cantilever=config.f0_hz, kCantilever=config.cantilever_stiffness_n_per_m)


def relaxed_fz(afm) -> np.ndarray:
    """The relaxed Fz (eV/Å) of ppafm's last scan, (nx, ny, n_heights) from the highest tip height down."""
    import pyopencl as cl

    nx, ny, n_heights = afm.scan_dim
    forces = np.empty((nx, ny, n_heights, 4), np.float32)
    cl.enqueue_copy(afm.scanner.queue, forces, afm.scanner.cl_FEout)
    afm.scanner.queue.finish()
    return forces[..., 2]


def ppafm_stacks(afmulator_class, config, result, molecule, tip: str, refine: int):
    """ppafm on the window and tip heights of ``result`` (afm-ray's :class:`~afm_ray.sim.SimResult` of the one
    ``molecule``, an ``ase.Atoms`` with initial charges), its z sampling refined ``refine``× (dz / refine,
    refine · df_steps + 1 weights: the same peak-to-peak amplitude and slice centres, where ppafm's Giessibl
    kernel has converged; ``refine`` 1: the config's own sampling).

    Returns (relaxed Fz at our heights (nx, ny, n_z_steps) eV/Å, Δf at our slices (nx, ny, n_slices) Hz,
    ppafm's run time s)."""
    (sx, sy), (size_x, size_y) = config.pixel_size_angstrom, config.scan_size_angstrom
    dz = config.dz_angstrom / refine
    n_heights = refine * (config.num_z_steps - 1) + 1
    df_steps = refine * config.df_steps + 1 if refine > 1 else config.df_steps
    x0, y0 = result.window_origin[0]
    z_top = result.tip_z[0, 0]
    scan_window = ((x0 + sx / 2, y0 + sy / 2, z_top - n_heights * dz), (x0 + size_x - sx / 2, y0 + size_y - sy / 2, z_top))
    afm = afmulator(afmulator_class, config, tip, scan_window, n_heights, df_steps)
    start = time.perf_counter()
    df = afm(molecule.positions, molecule.numbers, molecule.get_initial_charges())
    elapsed = time.perf_counter() - start
    return relaxed_fz(afm)[..., ::refine], df[..., ::refine][..., :config.num_slices], elapsed


def per_slice_agreement(ours: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice Pearson r and RMS(ours − reference) / RMS(reference) of two (nx, ny, nz) stacks: two (nz,) arrays."""
    a = ours.reshape(-1, ours.shape[-1]).astype(np.float64)
    b = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    ac, bc = a - a.mean(axis=0), b - b.mean(axis=0)
    pearson = (ac * bc).sum(axis=0) / np.sqrt((ac**2).sum(axis=0) * (bc**2).sum(axis=0))
    rel_rms = np.sqrt(((a - b) ** 2).mean(axis=0)) / np.sqrt((b**2).mean(axis=0))
    return pearson, rel_rms
