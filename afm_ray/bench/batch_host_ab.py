"""``afm-ray bench batch-host-ab``: host work of a simulation actor's batch, stage by stage, for two afm-ray
checkouts in one run (issue 26).

    git worktree add /tmp/afm-old 14ac183
    afm-ray bench batch-host-ab --old /tmp/afm-old --new . [--model dsh --rounds 3 --batches 3]

Each round makes ``--batches`` batches (after a warm-up one) of ``afm-ray bench batch``'s workload
(``make_factory``: 32 g2 molecules at 128 × 128 px, raw Δf as the actor ships it) in a fresh process
of each checkout, old and new alternating, so both see the same machine load. Measured on the
process's thread: CPU time (``time.thread_time``: a wait that sleeps costs none, so the figure does
not depend on how fast the OpenCL device is or how loaded the machine is) of the functions each
stage consists of, by wrapping them from outside (the same wrappers for both checkouts; a
function or module a checkout lacks is skipped; nested wrapped functions are not counted twice). "host work"
is the thread's CPU time in ``make_batch`` outside the waits for the device. Prints the median per
batch of each stage, old, new and new / old, and the machine's load average.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import types

# stage → functions ("module:attribute path") whose CPU time counts for it, in either checkout
STAGES = {
    "rotate molecules": ["afm_ray.samples.batches:SplitSamples.molecule", "afm_ray.batches:SplitSamples.molecule"],
    "scan-parameter draws": ["afm_ray.sim.simulator:ScanParams.draw", "afm_ray.sim.simulator:ScanParams.draw_many",
                             "afm_ray.batches:_sample_seed", "afm_ray.batches:derived_seeds",
                             "afm_ray.samples.batches:sample_seeds"],
    "pack molecules": ["afm_ray.sim.simulator:Simulator._pack", "afm_ray.descriptors.height_es:as_atom_batch",
                       "afm_ray.descriptors.device_maps:prepare_atoms",
                       "afm_ray.descriptors.device_maps:padded_atom_batch",
                       "afm_ray.descriptors.device_maps:centred_on_mean_xy"],
    "Δf: scan heights, uploads, kernels, reads": [
        "afm_ray.sim.simulator:Simulator.run", "afm_ray.sim.simulator:Simulator.enqueue_run",
        "afm_ray.sim.simulator:Simulator.load", "afm_ray.sim.simulator:Simulator._upload",
        "afm_ray.sim.simulator:Simulator._scan_heights", "afm_ray.sim.simulator:Simulator._inputs"],
    "Height / ES search (host side)": [
        "afm_ray.sim.simulator:Simulator.iso_surface", "afm_ray.sim.simulator:Simulator.enqueue_iso_surface",
        "afm_ray.descriptors.height_es:height_and_es_maps", "afm_ray.descriptors.height_es:enqueue_height_and_es_maps"],
    "Height / ES maps from the surface": ["afm_ray.descriptors.height_es:maps_from_surface"],
    "sphere + disk maps (host side)": ["afm_ray.descriptors.device_maps:DeviceMaps._compute",
                                       "afm_ray.descriptors.device_maps:DeviceMaps._enqueue"],
    "Δf stacking (np.stack)": ["afm_ray.samples.batches:np.stack", "afm_ray.batches:np.stack"],
    "wait for the device": ["pyopencl:CommandQueue.finish", "pyopencl:wait_for_events"],
}


def instrument(totals: dict[str, float]) -> None:
    """Wrap every listed function so that its CPU time, less that of wrapped callees, adds to its stage."""
    stack: list[list[float]] = []  # per active wrapped call: [children's CPU]

    def wrapper(stage: str, function):
        def timed(*args, **kwargs):
            stack.append([0.0])
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                children = stack.pop()[0]
                totals[stage] = totals.get(stage, 0.0) + spent - children
                if stack:
                    stack[-1][0] += spent
        return timed

    for stage, paths in STAGES.items():
        for path in paths:
            module_name, attribute = path.split(":")
            try:
                owner = importlib.import_module(module_name)
            except ModuleNotFoundError:  # the module's name in the other checkout (issue 28 moved the batch maker)
                continue
            *parents, name = attribute.split(".")
            for parent in parents:
                if not hasattr(owner, parent):
                    break
                if parent == "np":  # a module's NumPy: give it a copy whose function is wrapped
                    proxy = types.ModuleType("numpy_timed")
                    proxy.__dict__.update(vars(getattr(owner, parent)))
                    setattr(owner, parent, proxy)
                owner = getattr(owner, parent)
            else:
                raw = vars(owner).get(name) if isinstance(owner, type) else getattr(owner, name, None)
                if raw is None:
                    continue
                if isinstance(raw, classmethod):
                    bound = getattr(owner, name)
                    setattr(owner, name, staticmethod(wrapper(stage, bound)))
                else:
                    setattr(owner, name, wrapper(stage, raw))


def worker(model: str, batches: int, device: str) -> None:
    import numpy as np

    from afm_ray.bench.batch import make_factory
    try:
        from afm_ray.samples.plan import BatchSpec
    except ModuleNotFoundError:  # a checkout before issue 28
        from afm_ray.plan import BatchSpec

    factory = make_factory(model, 32, 128, device)
    samples = np.arange(32)
    factory.make_batch(BatchSpec("bench", 0, 0, samples, (0, 0), raw_df=True))
    totals: dict[str, float] = {}
    instrument(totals)
    for index in range(1, batches + 1):
        totals.clear()
        started, cpu_started = time.perf_counter(), time.thread_time()
        factory.make_batch(BatchSpec("bench", 0, index, samples, (0, index), raw_df=True))
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
        record = dict(totals)
        record["other host work"] = cpu - sum(totals.values())
        record["host work"] = cpu - totals.get("wait for the device", 0.0)
        record["whole batch (wall)"] = wall
        print("RECORD " + json.dumps(record), flush=True)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch-host-ab", help="a batch's host work stage by stage, two checkouts in one run",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="checkout of the old afm-ray (its root directory)")
    parser.add_argument("--new", default=".", help="checkout of the new afm-ray (default .)")
    parser.add_argument("--model", default="dsh", choices=("dsh", "es", "xyz"))
    parser.add_argument("--rounds", type=int, default=3, help="old/new process pairs (default 3)")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per process (default 3)")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    records: dict[str, list[dict]] = {"old": [], "new": []}
    loads = []
    for _ in range(args.rounds):
        for label in ("old", "new"):
            root = os.path.abspath(getattr(args, label))
            loads.append(os.getloadavg()[0])
            output = subprocess.run(
                [sys.executable, os.path.abspath(__file__), args.model, str(args.batches), args.device],
                env={**os.environ, "PYTHONPATH": root}, cwd=root, capture_output=True, text=True, check=True).stdout
            records[label] += [json.loads(line[7:]) for line in output.splitlines() if line.startswith("RECORD ")]
    stages = [*STAGES, "other host work", "host work", "whole batch (wall)"]
    print(f"{args.model} batch of 32 at 128 × 128 px; median of {len(records['old'])} batches each, "
          f"old and new alternating; load average {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} CPUs")
    print(f"{'thread CPU ms per batch':<44} {'old':>9} {'new':>9} {'new/old':>8}")
    for stage in stages:
        old, new = (statistics.median(record.get(stage, 0.0) for record in records[label]) * 1e3
                    for label in ("old", "new"))
        unit = " (wall)" if "wall" in stage else ""
        print(f"{stage + unit if not unit else stage:<44} {old:9.2f} {new:9.2f} {new / old if old else float('nan'):8.2f}")
    return 0


if __name__ == "__main__":  # a worker: this file run by path, timing the checkout on PYTHONPATH
    del sys.path[0]  # this file's folder: afm_ray/bench's modules are no top-level ones
    _, model_name, batch_count, device_name = sys.argv
    worker(model_name, int(batch_count), device_name)
