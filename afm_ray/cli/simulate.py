"""``afm-ray simulate``: simulate AFM Δf stacks of molecules into an ``.npz`` file.

The file holds ``df`` (N, nx, ny, n_slices) float32 in Hz (axes: x, y, slices far → close) plus
everything needed to compare with another simulator: molecule ids, the scan window, tip heights,
the tip and its tilt, stiffnesses, cantilever parameters, per-sample seeds and the full config.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from afm_ray.errors import InputError

EPILOG = """\
examples:
  afm-ray simulate --xyz benzene.xyz --tip CO --tilt 0 --out benzene_co.npz
  afm-ray simulate --molecules data/qm9.parquet --ids qm9:000001 qm9:000002 --tip Xe --seed 7 --out stacks.npz
  afm-ray simulate --molecules data/qm9.parquet --ids qm9:000001 --config configs/sim.yaml --device cpu --out s.npz
  afm-ray simulate --molecules data/qm9.parquet --ids qm9:000010 --out s.npz --png figures/   # look at it

Reading the output:
  d = numpy.load("stacks.npz"); d["df"][0, :, :, -1].T   # closest slice of the first molecule, y up rows
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate", help="simulate AFM frequency-shift stacks (Probe Particle Model, OpenCL)",
        description="Simulate Δf image stacks (Hz) of molecules with the Probe Particle Model and save them to .npz.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--molecules", metavar="DB.parquet", help="molecule database (afm-ray molecules build-…)")
    source.add_argument("--xyz", metavar="FILE.xyz", nargs="+", help="xyz file(s) with a 5th column of charges (e)")
    parser.add_argument("--ids", nargs="+", metavar="ID", help="molecule ids to take from --molecules (default: all)")
    parser.add_argument("--tip", default="CO", help="probe particle, a name in the config's tips (default CO; also Xe)")
    parser.add_argument("--tilt", type=float, metavar="RADIUS_A",
                        help="tilt radius in Å: probe rest offsets drawn in this disk (default: config, thesis 1.0; 0 = none)")
    parser.add_argument("--config", metavar="sim.yaml", help="simulator config: a YAML file or the preset sim (default: built-in thesis values)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-sample tilt draws (default 0)")
    parser.add_argument("--device", help="auto | cpu | gpu | ray | index | name substring (default: config)")
    parser.add_argument("--batch-size", type=int, default=32, help="molecules per simulator call (default 32)")
    parser.add_argument("--out", required=True, metavar="stacks.npz", help="output file")
    parser.add_argument("--png", metavar="FOLDER", type=Path,
                        help="also draw each of the first --png-max molecules (AFM slices, the five descriptors, the "
                             "molecule from above; thesis Figs. 10, 11, 14) to FOLDER/<id>.png")
    parser.add_argument("--png-max", type=int, default=4, metavar="N", help="molecules to draw with --png (default 4)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from afm_ray.sim import SimConfig, Simulator, draw_scan_params

    if args.batch_size < 1:
        raise InputError("--batch-size", f"must be at least 1, got {args.batch_size}")
    if args.ids and not args.molecules:
        raise InputError("--ids", "only applies with --molecules")
    config = SimConfig.from_yaml(args.config) if args.config else SimConfig()
    if args.tilt is not None:
        config = SimConfig.from_dict({**config.model_dump(), "tilt_radius_angstrom": args.tilt}, where="--tilt")
    tip_name = config.tip_name(args.tip)
    molecules = _load_molecules(args)
    out = Path(args.out)
    if not out.parent.exists():
        raise InputError(str(out), "output folder does not exist")

    simulator = Simulator(config, device=args.device)
    scan_params = draw_scan_params(config, len(molecules), args.seed)
    results = []
    with tqdm(total=len(molecules), unit="mol", desc=f"simulate {tip_name}", disable=len(molecules) < 2 * args.batch_size) as bar:
        for start in range(0, len(molecules), args.batch_size):
            stop = start + args.batch_size
            results.append(simulator.run(molecules[start:stop], tip=tip_name, scan_params=scan_params[start:stop]))
            bar.update(len(molecules[start:stop]))
    _save(out, config, tip_name, molecules, results, simulator.device_name, args.seed)
    if args.png is not None:
        stacks = np.concatenate([r.df for r in results])
        for path in draw_samples(args.png, molecules[:max(args.png_max, 0)], stacks, simulator, tip_name):
            print(f"wrote {path}")
    unconverged = int(sum(r.unconverged.sum() for r in results))
    print(f"wrote {out}: {len(molecules)} stacks of {config.scan_pixels[0]}×{config.scan_pixels[1]}×{config.num_slices} "
          f"(tip {tip_name}, device {simulator.device_name}"
          + (f", {unconverged} unconverged relaxations)" if unconverged else ")"))
    return 0


def draw_samples(folder: Path, molecules: list, stacks: np.ndarray, simulator, tip_name: str) -> list[Path]:
    """One PNG per molecule: Δf slices of its stack (nx, ny, nz; Hz) beside its descriptors."""
    from afm_ray.descriptors import DescriptorsConfig, HeightMapConfig, ScanWindow
    from afm_ray.descriptors.registry import TargetContext, describe
    from afm_ray.figures.scans import plot_sample

    if not molecules:
        return []
    window = ScanWindow.from_sim_config(simulator.config)
    context = TargetContext(simulator, window, DescriptorsConfig(height_map=HeightMapConfig(tip=tip_name)))
    names = ["atomic_disks", "vdw_spheres", "height_map", "es_map"]
    try:
        xyz_grid = context.xyz_grid
        names += ["xyz_classes", "xyz_offsets"]
    except InputError:  # a window that is not a whole number of 1 Å boxes has no thesis xyz grid
        xyz_grid = None
    targets = describe(molecules, names, context)
    paths = []
    for index, molecule in enumerate(molecules):
        name = str(getattr(molecule, "id", None) or index)
        maps = {key: targets[key][index] for key in ("atomic_disks", "vdw_spheres", "height_map", "es_map")}
        xyz = {"xyz_classes": targets["xyz_classes"][index], "xyz_offsets": targets["xyz_offsets"][index]} \
            if xyz_grid is not None else {}
        paths.append(plot_sample(folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png", stack=stacks[index],
                                 descriptors=maps, molecule=molecule, window=window,
                                 title=f"{name}: {tip_name} tip, {stacks.shape[3]} slices", **xyz))
    return paths


def _load_molecules(args: argparse.Namespace) -> list:
    if args.xyz:
        from afm_ray.molecules.io import read_xyz

        return [read_xyz(path) for path in args.xyz]
    from afm_ray.molecules.database import read_molecules

    molecules = read_molecules(args.molecules, ids=args.ids)
    if not molecules:
        raise InputError(args.molecules, "no molecules selected")
    return list(molecules)


def _save(out: Path, config, tip_name: str, molecules: list, results: list, device_name: str, seed: int) -> None:
    tip = config.tip(tip_name)
    params = [p for r in results for p in r.scan_params]
    slice_tip_z = np.concatenate([r.slice_tip_z for r in results])
    top_atom_z = np.concatenate([r.top_atom_z for r in results])
    ids = [str(getattr(m, "id", None) or i) for i, m in enumerate(molecules)]
    np.savez_compressed(
        out,
        df=np.concatenate([r.df for r in results]),
        ids=np.array(ids),
        window_origin_angstrom=np.concatenate([r.window_origin for r in results]),
        scan_size_angstrom=np.array(config.scan_size_angstrom),
        scan_pixels=np.array(config.scan_pixels),
        pixel_size_angstrom=np.array(config.pixel_size_angstrom),
        tip_z_angstrom=np.concatenate([r.tip_z for r in results]),
        slice_tip_z_angstrom=slice_tip_z,
        slice_tip_height_above_top_atom_angstrom=slice_tip_z - top_atom_z[:, None],
        top_atom_z_angstrom=top_atom_z,
        probe_rest_offset_angstrom=np.concatenate([r.probe_rest for r in results]),
        start_distance_angstrom=np.array([p.start_distance_angstrom for p in params]),
        sample_seeds=np.array([-1 if p.seed is None else p.seed for p in params], dtype=np.int64),
        seed=np.int64(seed),
        unconverged=np.concatenate([r.unconverged for r in results]),
        tip=np.array(tip_name),
        tip_atomic_number=np.int64(tip.atomic_number),
        tip_charge_e=np.float64(tip.charge_e),
        tip_multipole=np.array(tip.multipole),
        dz_angstrom=np.float64(config.dz_angstrom),
        df_steps=np.int64(config.df_steps),
        amplitude_peak_to_peak_angstrom=np.float64(config.amplitude_peak_to_peak_angstrom),
        f0_hz=np.float64(config.f0_hz),
        cantilever_stiffness_n_per_m=np.float64(config.cantilever_stiffness_n_per_m),
        lateral_stiffness_n_per_m=np.array(config.lateral_stiffness_n_per_m),
        radial_stiffness_n_per_m=np.float64(config.radial_stiffness_n_per_m),
        probe_length_angstrom=np.float64(config.probe_length_angstrom),
        device=np.array(device_name),
        config_yaml=np.array(config.to_yaml()),
    )
