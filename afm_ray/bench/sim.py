"""``afm-ray bench sim``: AFM stacks per second of the simulator, optionally against ppafm.

Workload: the thesis scan (``--size`` × ``--size`` px over 16 × 16 Å, 20 slices = 30 relaxed
heights, CO tip unless ``--tip``) of small organic molecules (ASE's g2 set, simple partial charges),
cycled to fill each batch. Ours: ``batch size / median time`` of ``--repeats`` timed
``Simulator.run`` calls after one warm-up call. ppafm (``--vs ppafm``): ``ppafm.ocl.AFMulator`` on
the same OpenCL platform and settings, one molecule per call as its API works (fixed window, the
molecule moved into it like its ML generator), ``1 / median time``. With ``--vs ppafm`` it also
prints the agreement of the relaxed Fz stacks (same heights) and of Δf; ppafm's Δf uses a coarser
discretisation of Giessibl's formula (~10 % smaller at df_steps = 10, see ``afm_ray.sim``).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

from afm_ray.errors import InputError

BENCH_MOLECULES = ("C6H6", "CH3COOH", "C5H5N", "CH3CH2OH", "C4H4NH", "CH3CONH2", "HCOOH", "CH3NO2")
_ELEMENT_CHARGES = {"H": 0.12, "C": -0.05, "N": -0.35, "O": -0.40}  # plausible magnitudes; made neutral below


def benchmark_molecules(names=BENCH_MOLECULES) -> list:
    """ASE g2 molecules with simple neutral partial charges (e), as ``ase.Atoms``."""
    from ase.build import molecule

    molecules = []
    for name in names:
        atoms = molecule(name)
        charges = np.array([_ELEMENT_CHARGES.get(s, 0.0) for s in atoms.get_chemical_symbols()])
        atoms.set_initial_charges(charges - charges.mean())
        molecules.append(atoms)
    return molecules


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sim", help="simulated AFM stacks/s (Probe Particle Model), optionally vs ppafm on the same device",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vs", choices=("ppafm",), help="also time ppafm's AFMulator and compare results")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="molecules per call (default 1 8 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    parser.add_argument("--size", type=int, default=128, help="scan pixels along x and y (default 128)")
    parser.add_argument("--tip", default="CO", help="CO or Xe (default CO)")
    parser.add_argument("--device", default="auto", help="auto | cpu | gpu | index | name substring (default auto)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from afm_ray.sim import ScanParams, SimConfig, Simulator

    if args.repeats < 1 or args.size < 2 or min(args.batch_sizes) < 1:
        raise InputError("bench sim", "--repeats, --size and --batch-sizes must be positive (size ≥ 2)")
    config = SimConfig(scan_pixels=(args.size, args.size), tilt_radius_angstrom=0.0)
    tip = config.tip_name(args.tip)
    molecules = benchmark_molecules()
    simulator = Simulator(config, device=args.device)
    print(f"device: {simulator.device_name}")
    print(f"scan: {args.size}×{args.size} px, {config.num_slices} slices ({config.num_z_steps} heights), tip {tip}, "
          f"{len(molecules)} molecules of {min(len(m) for m in molecules)}–{max(len(m) for m in molecules)} atoms")

    ours = {}
    for batch_size in args.batch_sizes:
        batch = [molecules[i % len(molecules)] for i in range(batch_size)]
        params = [ScanParams.fixed(config)] * batch_size
        simulator.run(batch, tip=tip, scan_params=params)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            simulator.run(batch, tip=tip, scan_params=params)
            times.append(time.perf_counter() - start)
        ours[batch_size] = batch_size / statistics.median(times)
        print(f"afm-ray  batch {batch_size:4d}: {ours[batch_size]:8.2f} stacks/s  (median of {args.repeats}: "
              f"{statistics.median(times) * 1e3:.1f} ms per call)")

    if args.vs == "ppafm":
        rate, agreement = _ppafm(simulator, config, tip, molecules, args.repeats)
        print(f"ppafm    1 stack/call: {rate:8.2f} stacks/s  (median of {args.repeats} calls, one molecule each)")
        for batch_size, value in ours.items():
            print(f"ratio afm-ray/ppafm at batch {batch_size:4d}: {value / rate:6.1f}×")
        print(agreement)
    return 0


def _ppafm(simulator, config, tip: str, molecules: list, repeats: int) -> tuple[float, str]:
    """ppafm's stacks/s on the simulator's OpenCL platform, and a line on how its output agrees with ours."""
    from afm_ray.bench.ppafm_reference import afmulator, init_ppafm, per_slice_agreement, relaxed_fz
    from afm_ray.sim import ScanParams

    afmulator_class = init_ppafm(simulator.device, option="--vs ppafm")
    warnings.filterwarnings("ignore", module="ppafm")
    (sx, sy), (size_x, size_y), n_steps = config.pixel_size_angstrom, config.scan_size_angstrom, config.num_z_steps
    window_top = 10.0  # ppafm works in a fixed window; each molecule is moved to sit under it as ours would
    scan_window = ((sx / 2, sy / 2, window_top - n_steps * config.dz_angstrom),
                   (size_x - sx / 2, size_y - sy / 2, window_top))
    afm = afmulator(afmulator_class, config, tip, scan_window, n_steps, config.df_steps)
    times, fz_pearson, fz_rms, df_pearson = [], [], [], []
    for index in range(repeats + 1):
        molecule = molecules[index % len(molecules)]
        ours = simulator.run([molecule], tip=tip, scan_params=[ScanParams.fixed(config)], return_fz=True)
        shift = np.array([-ours.window_origin[0, 0], -ours.window_origin[0, 1], window_top - ours.tip_z[0, 0]])
        positions = molecule.positions + shift
        start = time.perf_counter()
        df_ppafm = afm(positions, molecule.numbers, molecule.get_initial_charges())
        elapsed = time.perf_counter() - start
        if index:  # the first call builds ppafm's buffers
            times.append(elapsed)
        pearson, rel_rms = per_slice_agreement(ours.fz[0], relaxed_fz(afm))
        fz_pearson.append(pearson.min())
        fz_rms.append(rel_rms.max())
        df_pearson.append(per_slice_agreement(ours.df[0], df_ppafm[..., :config.num_slices])[0].min())
    line = (f"agreement with ppafm over {len(fz_pearson)} molecules (per-slice, worst slice): relaxed Fz Pearson "
            f"≥ {min(fz_pearson):.4f}, rel. RMS ≤ {max(fz_rms):.1%}; Δf Pearson ≥ {min(df_pearson):.4f} "
            "(ppafm's coarser Giessibl kernel)")
    return 1.0 / statistics.median(times), line
