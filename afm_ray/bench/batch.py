"""``afm-ray bench batch``: where a simulation actor's time goes, stage by stage, for one training batch.

Workload: ``--batch-size`` molecules (default 32; ASE's g2 organics, as ``bench sim``) at the thesis
scan (128 × 128 px, 20 slices → 10), made by the actor's own :class:`~afm_ray.batches.BatchFactory`
for ``--model`` (DSH: CO Δf, Atomic Disks, vdW Spheres, Height Map; ES: CO + Xe Δf, ES and Height
Map; xyz: CO Δf, xyz grid). After one warm-up batch, ``--repeats`` batches are made and each
figure is the median:

* device stages, from OpenCL profiling on the simulator's queue: upload, the relaxation and
  Giessibl kernels (the Δf simulation), the iso-surface search (Height / ES Map), the device →
  host reads, with bytes moved;
* host stages, wall clock on the actor: vdW Spheres + Atomic Disks (one OpenCL kernel, read
  included), Height + ES Map (its device commands included), xyz encoding, augmentation (NumPy,
  with ``--augment-on actor``), the batch as Ray serialises it (pickle protocol 5 with out-of-band
  buffers, what Ray does for NumPy arrays) and everything else the actor does (molecule rotation,
  packing);
* the whole batch: wall ms and samples/s of the actor; with ``--augment-on trainer`` (default)
  the actor ships the raw Δf and the trainer's augmentation is timed on ``--torch-device``.

Then the ratios of issue 14: Height + ES time / Δf time, the actor's work besides the Δf kernels /
Δf time, and device → host bytes per sample / bytes the actor returns per sample.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import numpy as np

from afm_ray.errors import InputError

DF_STAGES = ("relax_scan kernel", "giessibl_df kernel")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch", help="ms and bytes per stage of one training batch on a simulation actor",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("dsh", "es", "xyz"), default="dsh", help="whose batch (default dsh)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    parser.add_argument("--size", type=int, default=128, help="pixels along x and y (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches; medians are reported (default 3)")
    parser.add_argument("--device", default="auto", help="OpenCL device: auto | cpu | gpu | index | name")
    parser.add_argument("--augment-on", choices=("trainer", "actor"), default="trainer",
                        help="trainer (default): the actor ships raw Δf, torch augments it on --torch-device; "
                             "actor: NumPy augmentation on the actor")
    parser.add_argument("--torch-device", help="the trainer's torch device (default cuda when available, else cpu)")
    parser.add_argument("--actors-per-device", type=int, default=1,
                        help="also make batches with N actors sharing the device (each its own context and queue, "
                             "in threads): the overlap pipeline.sim_num_gpus = 1/N buys (default 1: skip)")
    parser.set_defaults(handler=run)


def make_factory(model: str, batch_size: int, size: int, device: str):
    """A profiling BatchFactory over ``batch_size`` g2 molecules, one unrotated view each."""
    from afm_ray.augment import AugmentConfig
    from afm_ray.batches import BatchFactory, SplitSamples, Task
    from afm_ray.bench.sim import benchmark_molecules
    from afm_ray.descriptors import DescriptorsConfig
    from afm_ray.molecules.molecule import Molecule
    from afm_ray.sim import SimConfig

    pool = [Molecule.create(atoms.get_chemical_formula(), atoms.numbers, atoms.positions, atoms.get_initial_charges(),
                            source="ase g2") for atoms in benchmark_molecules()]
    molecules = tuple(pool[index % len(pool)] for index in range(batch_size))
    rotations = np.broadcast_to(np.eye(3), (batch_size, 1, 3, 3))
    return BatchFactory(Task(model), SimConfig(scan_pixels=(size, size)), AugmentConfig(), DescriptorsConfig(),
                        {"bench": SplitSamples(molecules, rotations)}, device=device, profile=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from afm_ray.plan import BatchSpec

    if args.batch_size < 1 or args.repeats < 1 or args.size < 16 or args.size % 8:
        raise InputError("bench batch", "need --batch-size ≥ 1, --repeats ≥ 1 and --size ≥ 16, a multiple of 8")
    factory = make_factory(args.model, args.batch_size, args.size, args.device)
    print(f"{args.model} batch of {args.batch_size} at {args.size}×{args.size} px, {factory.simulator.config.num_slices} "
          f"slices → 10, on {factory.simulator.device_name}; median of {args.repeats}")
    torch_device = torch.device(args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu"))
    raw_df = args.augment_on == "trainer"
    print(f"augmentation: {'torch on ' + str(torch_device) + ' (trainer side)' if raw_df else 'NumPy on the actor'}")
    samples = np.arange(args.batch_size)
    records = [timed_batch(factory, BatchSpec("bench", 0, index, samples, (0, index), raw_df=raw_df), torch_device)
               for index in range(args.repeats + 1)][1:]
    medians = {stage: statistics.median(record[stage][0] for record in records) for stage in records[0]}
    moved = {stage: records[0][stage][1] for stage in records[0]}
    for stage, seconds in medians.items():
        nbytes = f"{moved[stage] / 2**20:9.2f} MiB" if moved[stage] else ""
        print(f"  {stage:<34} {seconds * 1e3:9.1f} ms  {nbytes}")
    total = medians["whole batch (actor)"]
    df_seconds = sum(medians.get(stage, 0.0) for stage in DF_STAGES)
    read = sum(moved[stage] for stage in moved if stage.startswith("read"))
    print(f"actor: {args.batch_size / total:.1f} samples/s")
    if raw_df:
        trainer = medians["augmentation on the trainer (torch)"]
        print(f"trainer-side augmentation: {args.batch_size / trainer:.0f} samples/s on {torch_device}")
    if "Height + ES Map" in medians:
        print(f"Height + ES / Δf simulation:             {medians['Height + ES Map'] / df_seconds:6.1%}")
    print(f"actor work besides the Δf kernels / Δf:  {(total - df_seconds) / df_seconds:6.1%}")
    print(f"device→host bytes / returned bytes:      {read / moved['returned arrays']:6.2f}×")
    factory.close()
    if args.actors_per_device > 1:
        rate = shared_device_rate(args, raw_df)
        print(f"{args.actors_per_device} actors on one device: {rate:.1f} samples/s together "
              f"({rate * total / args.batch_size:.2f}× one actor)")
    return 0


def shared_device_rate(args: argparse.Namespace, raw_df: bool) -> float:
    """Samples/s of ``--actors-per-device`` factories making ``--repeats`` batches each at once (threads: the
    OpenCL calls and NumPy release the GIL, as separate actor processes would not need to)."""
    from concurrent.futures import ThreadPoolExecutor

    from afm_ray.plan import BatchSpec

    factories = [make_factory(args.model, args.batch_size, args.size, args.device)
                 for _ in range(args.actors_per_device)]
    samples = np.arange(args.batch_size)

    def work(factory, rounds: int) -> None:
        for index in range(rounds):
            factory.make_batch(BatchSpec("bench", 0, index, samples, (1, index), raw_df=raw_df))

    with ThreadPoolExecutor(len(factories)) as pool:
        list(pool.map(lambda factory: work(factory, 1), factories))  # warm-up
        started = time.perf_counter()
        list(pool.map(lambda factory: work(factory, args.repeats), factories))
        elapsed = time.perf_counter() - started
    for factory in factories:
        factory.close()
    return len(factories) * args.repeats * args.batch_size / elapsed


def timed_batch(factory, spec, torch_device) -> dict[str, tuple[float, int]]:
    """``{stage: (seconds, bytes)}`` of one batch: device stages from profiling, host stages by wall clock."""
    import torch

    from afm_ray.augment_torch import augment_batch

    factory.simulator.profile.reset()
    factory.stage_seconds.clear()
    started = time.perf_counter()
    batch = factory.make_batch(spec)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    pickle.dumps(batch, protocol=5, buffer_callback=[].append)
    serialisation = time.perf_counter() - started
    profile = factory.simulator.profile
    record = {stage: (seconds, profile.nbytes.get(stage, 0)) for stage, seconds in profile.seconds.items()}
    # wall time on the actor; the descriptor stages include their device commands listed above
    record.update({stage: (seconds, 0) for stage, seconds in factory.stage_seconds.items()})
    accounted = sum(profile.seconds.get(stage, 0.0) for stage in (*DF_STAGES, "upload", "read Δf")) + sum(
        factory.stage_seconds.values())
    record["other host work"] = (max(whole - accounted, 0.0), 0)
    record["Ray serialisation (pickle 5)"] = (serialisation, 0)
    record["returned arrays"] = (0.0, sum(value.nbytes for value in batch.values() if isinstance(value, np.ndarray)))
    record["whole batch (actor)"] = (whole, 0)
    if spec.raw_df:  # what the training worker does with it: host → device, then augmentation there
        df = torch.from_numpy(batch["df"]).to(torch_device)
        _synchronize(torch_device)
        started = time.perf_counter()
        augment_batch(df, spec.seed, factory.augment_config)
        _synchronize(torch_device)
        record["augmentation on the trainer (torch)"] = (time.perf_counter() - started, 0)
    return record


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
