"""``afm-ray bench descriptors``: time per batch of the descriptors and of the augmentation.

Workload: ``--batch-size`` molecules (default 32; small organic molecules from ASE's g2 set, as in
``afm-ray bench sim``, cycled) on the thesis window (16 × 16 Å, ``--size`` px). Each line is the
median of ``--repeats`` timed calls after one untimed call, as ms per batch and samples/s:

* vdW Spheres, Atomic Disks, xyz encode (NumPy, on this process's CPU);
* vdW Spheres + Atomic Disks in one OpenCL kernel on ``--device`` (:class:`DeviceMaps`, read included);
* Height + ES Map (the iso-surface search on ``--device``, two maps read back);
* augmentation of a (B, size, size, 20) float32 stack to 10 slices (all thesis steps);
* the simulator's Δf stacks for the same batch, when :mod:`afm_ray.sim` can run here.

Compare ratios from one run: the machine's other load moves all figures together.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np

from afm_ray.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "descriptors", help="ms per batch of the descriptors and the augmentation (and the simulator, for scale)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="molecules per batch (default 32)")
    parser.add_argument("--size", type=int, default=128, help="pixels along x and y (default 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls; the median is reported (default 5)")
    parser.add_argument("--device", default="auto", help="OpenCL device of the simulator: auto | cpu | gpu | index | name")
    parser.add_argument("--no-sim", action="store_true", help="skip everything that needs the simulator")
    parser.set_defaults(handler=run)


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up: allocations, kernel builds, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _report(name: str, seconds: float, batch_size: int) -> None:
    print(f"{name:<28} {seconds * 1e3:9.1f} ms/batch  {batch_size / seconds:9.1f} samples/s")


def _molecules(batch_size: int) -> list:
    from afm_ray.bench.sim import benchmark_molecules

    pool = benchmark_molecules()
    return [pool[index % len(pool)] for index in range(batch_size)]


def run(args: argparse.Namespace) -> int:
    from afm_ray.samples.augment import augment
    from afm_ray.descriptors import ScanWindow, XyzGrid, atomic_disks, height_and_es_maps, vdw_spheres

    if args.batch_size < 1 or args.repeats < 1 or args.size < 16:
        raise InputError("bench descriptors", "need --batch-size ≥ 1, --repeats ≥ 1 and --size ≥ 16")
    batch_size = args.batch_size
    molecules = _molecules(batch_size)
    window = ScanWindow.centred(pixels=(args.size, args.size))
    grid = XyzGrid(window=window)
    atoms = [len(m) for m in molecules]
    print(f"batch {batch_size} molecules of {min(atoms)}–{max(atoms)} atoms, {args.size}×{args.size} px over 16×16 Å, "
          f"median of {args.repeats}")

    _report("vdW Spheres", _median_seconds(lambda: vdw_spheres(molecules, window), args.repeats), batch_size)
    _report("Atomic Disks", _median_seconds(lambda: atomic_disks(molecules, window), args.repeats), batch_size)
    _report("xyz encode", _median_seconds(lambda: grid.encode(molecules), args.repeats), batch_size)

    stacks = np.random.default_rng(0).normal(size=(batch_size, args.size, args.size, 20)).astype(np.float32)
    seeds = iter(range(10**9))
    _report("augment 20→10 slices", _median_seconds(lambda: augment(stacks, seed=next(seeds)), args.repeats), batch_size)

    if args.no_sim:
        return 0
    try:
        from afm_ray.sim import ScanParams, SimConfig, Simulator

        config = SimConfig(scan_pixels=(args.size, args.size))
        simulator = Simulator(config, device=args.device)
    except Exception as exc:  # no OpenCL device, or the simulator is not importable
        print(f"simulator unavailable ({exc}); skipping Height/ES maps and simulation")
        return 0
    print(f"simulator device: {simulator.device_name}")
    from afm_ray.descriptors.device_maps import DeviceMaps

    device_maps = DeviceMaps(simulator.context, simulator.queue)
    _report("vdW Spheres + Disks (OpenCL)", _median_seconds(lambda: device_maps.maps(molecules, window), args.repeats),
            batch_size)
    _report("Height + ES Map", _median_seconds(lambda: height_and_es_maps(molecules, simulator), args.repeats), batch_size)
    params = [ScanParams.fixed(config)] * batch_size
    _report("simulate Δf (CO, 20 slices)",
            _median_seconds(lambda: simulator.simulate(molecules, scan_params=params), args.repeats), batch_size)
    return 0
