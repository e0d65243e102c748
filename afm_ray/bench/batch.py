"""``afm-ray bench batch``: where a simulation actor's time goes, stage by stage, for one training batch.

Workload: ``--batch-size`` molecules (default 32; ASE's g2 organics, as ``bench sim``) at the thesis
scan (128 × 128 px, 20 slices → 10), made by the actor's own :class:`~afm_ray.samples.batches.BatchFactory`
for ``--model`` (DSH: CO Δf, Atomic Disks, vdW Spheres, Height Map; ES: CO + Xe Δf, ES and Height
Map; xyz: CO Δf, xyz grid). After one warm-up batch, ``--repeats`` batches are made and each
figure is the median:

* device stages, from OpenCL profiling on the simulator's queue: uploads, the relaxation and
  Giessibl kernels (the Δf simulation), the iso-surface search (Height / ES Map), the sphere and
  disk maps kernel, the device → host reads, with bytes moved;
* host stages on the actor's thread, CPU time and wall time: molecule rotation, packing and
  upload, scan draws and enqueueing, the descriptors enqueued (xyz encoding runs here, while the
  device works), the one wait for the device, augmentation (NumPy, with ``--augment-on actor``),
  the descriptors finished from the device's results, and the rest of ``make_batch``. **Host
  work** is the thread's CPU time outside the wait: what the host adds to each batch when the
  device is fast;
* the batch as Ray serialises it (pickle protocol 5 with out-of-band buffers, what Ray does for
  NumPy arrays: the one copy of the page-locked results the actor reuses);
* the whole batch: wall ms and samples/s of the actor; with ``--augment-on trainer`` (default)
  the actor ships the raw Δf and the trainer's augmentation is timed on ``--torch-device``.

Then the ratios of issue 14: Height + ES time / Δf time, the actor's work besides the Δf kernels /
Δf time, and device → host bytes per sample / bytes the actor returns per sample.

``--actors-per-device 1 2 4`` then runs N actors at once on the device (separate processes, each
its own context and queue, as Ray's actors with ``pipeline.sim_num_gpus = 1/N`` are) and prints
samples/s per device for each N.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import numpy as np

from afm_ray.errors import InputError
from afm_ray.models import list_model_specs

DF_STAGES = ("relax_scan kernel", "giessibl_df kernel")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch", help="ms and bytes per stage of one training batch on a simulation actor",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[spec.name for spec in list_model_specs()], default="dsh",
                        help="whose batch (default dsh)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    parser.add_argument("--size", type=int, default=128, help="pixels along x and y (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches; medians are reported (default 3)")
    parser.add_argument("--device", default="auto", help="OpenCL device: auto | cpu | gpu | index | name")
    parser.add_argument("--augment-on", choices=("trainer", "actor"), default="trainer",
                        help="trainer (default): the actor ships raw Δf, torch augments it on --torch-device; "
                             "actor: NumPy augmentation on the actor")
    parser.add_argument("--torch-device", help="the trainer's torch device (default cuda when available, else cpu)")
    parser.add_argument("--actors-per-device", type=int, nargs="+", default=[],
                        help="also make batches with N actors sharing the device for each N given (e.g. 1 2 4; each "
                             "actor a process with its own context and queue, as with pipeline.sim_num_gpus = 1/N) "
                             "and print samples/s per device (default: skip)")
    parser.set_defaults(handler=run)


def make_factory(model: str, batch_size: int, size: int, device: str, profile: bool = True):
    """A BatchFactory over ``batch_size`` g2 molecules, one unrotated view each, set up as a simulation actor's."""
    from afm_ray.samples.augment import AugmentConfig
    from afm_ray.samples.batches import BatchFactory, SplitSamples, Task
    from afm_ray.bench.sim import benchmark_molecules
    from afm_ray.descriptors import DescriptorsConfig
    from afm_ray.models import get_model_spec
    from afm_ray.molecules.molecule import Molecule
    from afm_ray.sim import SimConfig

    pool = [Molecule.create(atoms.get_chemical_formula(), atoms.numbers, atoms.positions, atoms.get_initial_charges(),
                            source="ase g2") for atoms in benchmark_molecules()]
    molecules = tuple(pool[index % len(pool)] for index in range(batch_size))
    rotations = np.broadcast_to(np.eye(3), (batch_size, 1, 3, 3))
    spec = get_model_spec(model)
    return BatchFactory(Task(spec.tips, spec.targets), SimConfig(scan_pixels=(size, size)), AugmentConfig(), DescriptorsConfig(),
                        {"bench": SplitSamples(molecules, rotations)}, device=device, profile=profile,
                        reuse_host_memory=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from afm_ray.samples.plan import BatchSpec

    if args.batch_size < 1 or args.repeats < 1 or args.size < 16 or args.size % 8 or min(args.actors_per_device,
                                                                                          default=1) < 1:
        raise InputError("bench batch", "need --batch-size ≥ 1, --repeats ≥ 1, --size ≥ 16 (a multiple of 8) and "
                                        "--actors-per-device ≥ 1")
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
    print(f"  {'device stages (OpenCL profiling)':<40} {'ms':>9}")
    for stage in (stage for stage in medians if stage in factory.simulator.profile.seconds):
        nbytes = f"{moved[stage] / 2**20:9.2f} MiB" if moved[stage] else ""
        print(f"  {stage:<40} {medians[stage] * 1e3:9.1f}  {nbytes}")
    print(f"  {'host stages (the actor thread)':<40} {'CPU ms':>9} {'wall ms':>9}")
    for stage in (stage for stage in medians if stage.startswith("host: ")):
        print(f"  {stage[6:]:<40} {medians[stage] * 1e3:9.2f} {medians['wall: ' + stage[6:]] * 1e3:9.1f}")
    print(f"  {'host work (CPU outside the wait)':<40} {medians['host work'] * 1e3:9.2f}")
    for stage in ("Ray serialisation (pickle 5)", "whole batch (actor)", "augmentation on the trainer (torch)"):
        if stage in medians:
            print(f"  {stage:<40} {medians[stage] * 1e3:9.1f}")
    print(f"  {'returned arrays':<40} {'':9}  {moved['returned arrays'] / 2**20:9.2f} MiB")
    total = medians["whole batch (actor)"]
    df_seconds = sum(medians.get(stage, 0.0) for stage in DF_STAGES)
    read = sum(moved[stage] for stage in moved if stage.startswith("read"))
    print(f"actor: {args.batch_size / total:.1f} samples/s; host work {medians['host work'] * 1e3:.1f} ms per batch")
    if raw_df:
        trainer = medians["augmentation on the trainer (torch)"]
        print(f"trainer-side augmentation: {args.batch_size / trainer:.0f} samples/s on {torch_device}")
    if "iso search kernels" in medians:
        print(f"Height + ES / Δf simulation (kernels):   {medians['iso search kernels'] / df_seconds:6.1%}")
    print(f"actor work besides the Δf kernels / Δf:  {(total - df_seconds) / df_seconds:6.1%}")
    print(f"device→host bytes / returned bytes:      {read / moved['returned arrays']:6.2f}×")
    factory.close()
    for count in args.actors_per_device:  # each actor makes --repeats batches after a warm-up one
        rate = shared_device_rate(args, raw_df, count)
        print(f"{count} actor{'s' if count > 1 else ''} on one device: {rate:.1f} samples/s per device, "
              f"{rate / count:.1f} per actor", flush=True)
    return 0


def shared_device_rate(args: argparse.Namespace, raw_df: bool, count: int) -> float:
    """Samples/s of ``count`` actor processes on the device, each making ``--repeats`` batches after a warm-up
    one, all starting together: total samples / (last end − common start)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh OpenCL runtime per actor, as in a Ray worker
    go, messages = context.Event(), context.Queue()
    workers = [context.Process(target=_actor_process, args=(args, raw_df, go, messages), daemon=True)
               for _ in range(count)]
    for worker in workers:
        worker.start()
    try:
        _collect(messages, workers, "ready")  # every actor has built its factory and made its warm-up batch
        go.set()
        started = time.perf_counter()
        ends = _collect(messages, workers, "done")
    finally:
        for worker in workers:
            worker.kill()
    return count * args.repeats * args.batch_size / (max(ends) - started)


def _collect(messages, workers: list, kind: str) -> list[float]:
    """One ``(kind, time)`` message per worker; a worker's error, or its death, raises instead of waiting forever."""
    import queue

    times = []
    while len(times) < len(workers):
        try:
            message, value = messages.get(timeout=1.0)
        except queue.Empty:
            dead = [worker.exitcode for worker in workers if worker.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"an actor process died (exit code {dead[0]})") from None
            continue
        if message == "error":
            raise RuntimeError(f"an actor process failed: {value}")
        times.append(value)
    return times


def _actor_process(args: argparse.Namespace, raw_df: bool, go, messages) -> None:
    from afm_ray.samples.plan import BatchSpec

    try:
        factory = make_factory(args.model, args.batch_size, args.size, args.device, profile=False)
        samples = np.arange(args.batch_size)
        factory.make_batch(BatchSpec("bench", 0, 0, samples, (1, 0), raw_df=raw_df))
        messages.put(("ready", 0.0))
        go.wait()
        for index in range(args.repeats):
            factory.make_batch(BatchSpec("bench", 0, index, samples, (1, index), raw_df=raw_df))
        messages.put(("done", time.perf_counter()))  # CLOCK_MONOTONIC: shared by the processes of a machine
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        messages.put(("error", f"{type(exc).__name__}: {exc}"))


def timed_batch(factory, spec, torch_device) -> dict[str, tuple[float, int]]:
    """``{stage: (seconds, bytes)}`` of one batch: device stages from profiling, ``host: STAGE`` the actor thread's
    CPU time and ``wall: STAGE`` its wall time per host stage, ``host work`` its CPU time outside the wait."""
    import torch

    from afm_ray.samples.augment_torch import augment_batch

    factory.simulator.profile.reset()
    factory.stage_seconds.clear()
    factory.stage_cpu_seconds.clear()
    started, cpu_started = time.perf_counter(), time.thread_time()
    batch = factory.make_batch(spec)
    whole, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    started = time.perf_counter()
    pickle.dumps(batch, protocol=5, buffer_callback=[].append)
    serialisation = time.perf_counter() - started
    profile = factory.simulator.profile
    record = {stage: (seconds, profile.nbytes.get(stage, 0)) for stage, seconds in profile.seconds.items()}
    cpu_stages, wall_stages = dict(factory.stage_cpu_seconds), dict(factory.stage_seconds)
    cpu_stages["rest of make_batch"] = max(cpu - sum(cpu_stages.values()), 0.0)
    wall_stages["rest of make_batch"] = max(whole - sum(wall_stages.values()), 0.0)
    record.update({f"host: {stage}": (seconds, 0) for stage, seconds in cpu_stages.items()})
    record.update({f"wall: {stage}": (seconds, 0) for stage, seconds in wall_stages.items()})
    record["host work"] = (cpu - cpu_stages.get("wait for the device", 0.0), 0)
    record["Ray serialisation (pickle 5)"] = (serialisation, 0)
    record["returned arrays"] = (0.0, batch.nbytes)
    record["whole batch (actor)"] = (whole, 0)
    if spec.raw_df:  # what the training worker does with it: host → device, then augmentation there
        df = torch.from_numpy(batch.df).to(torch_device)
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
