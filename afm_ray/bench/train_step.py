"""``afm-ray bench train-step``: where a training step's time goes, with and without the overlapped loader.

A real Ray actor makes ``--distinct`` real raw-Δf batches of ``--model`` once (its own
:class:`~afm_ray.samples.batches.BatchFactory`, ASE's g2 organics at ``--size`` px, 20 slices) and then answers
every ``make_batch`` call at once with one of them: a *saturated* stream, whose batches still travel
through the object store and are deserialised by the real :class:`~afm_ray.pipeline.BatchStream`. The
trainer (this process, on ``--device``) runs the training worker's own parts: the
:class:`~afm_ray.train.loader.StepLoader` (``--depth`` steps ahead in a background thread, or 0: in series)
and the :class:`~afm_ray.train.step.StepRunner`, under ``--precision`` and ``--compile``. Rounds of
``--steps`` steps alternate between depth 0 and ``--depth`` (after ``--warmup`` steps each); per step:
data wait (the loop blocked), and the loader's receive, host → device and augmentation (hidden when
overlapped), forward + backward and optimiser (the device is synchronised after each on a GPU).

``--source local`` serves the same replayed batches in this process, without Ray (no object store, so no
receive or deserialisation): what ``benchmarks/gpu_check.sh`` runs on a GPU machine that has no Ray.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from afm_ray.errors import InputError
from afm_ray.models import list_model_specs
from afm_ray.pipeline.dispatch import BatchMaker
from afm_ray.samples.sample_batch import SampleBatch


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-step", help="ms per training step by stage, with and without the overlapped loader",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[spec.name for spec in list_model_specs()], default="dsh",
                        help="whose step (default dsh)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    parser.add_argument("--size", type=int, default=128, help="pixels along x and y (default 128; xyz: 128 only)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="run.precision (default fp32)")
    parser.add_argument("--compile", action="store_true", help="run.compile: torch.compile the network")
    parser.add_argument("--channels-last", choices=("auto", "true", "false"), default="auto",
                        help="run.channels_last (default auto: measured on --device)")
    parser.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each round (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per loader setting, interleaved (default 2)")
    parser.add_argument("--depth", type=int, default=2, help="steps the overlapped loader prepares ahead (default 2)")
    parser.add_argument("--distinct", type=int, default=2, help="real batches the actor makes and replays (default 2)")
    parser.add_argument("--raw-df-slices", choices=("read", "all"), default="read",
                        help="pipeline.raw_df_slices: the actor ships the slices augmentation reads (default) or all")
    parser.add_argument("--raw-df-dtype", choices=("float32", "float16"), default="float16",
                        help="pipeline.raw_df_dtype (default float16)")
    parser.add_argument("--target-dtype", choices=("float32", "float16"), default="float16",
                        help="pipeline.target_dtype (default float16)")
    parser.add_argument("--source", choices=("ray", "local"), default="ray",
                        help="ray: a replay actor through the object store and the real BatchStream (default); "
                             "local: the replayed batches in this process, without Ray")
    parser.set_defaults(handler=run)


class ReplayActor(BatchMaker):
    """A simulation actor that makes ``distinct`` real raw-Δf batches once, then answers each call at once."""

    def __init__(self, model: str, batch_size: int, size: int, distinct: int, slim: dict):
        from afm_ray.bench.batch import make_factory
        from afm_ray.samples.plan import BatchSpec

        factory = make_factory(model, batch_size, size, "auto")
        self.batches = [factory.make_batch(BatchSpec("bench", 0, index, np.arange(batch_size), (0, index), **slim))
                        for index in range(distinct)]

    def make_batch(self, spec) -> SampleBatch:
        """The replayed batch made with the seed ``(0, spec.index % distinct)``: augmented with that seed."""
        return self.batches[spec.index % len(self.batches)]

    def describe(self) -> dict:
        return {"pid": os.getpid(), "bytes_per_batch": self.batches[0].nbytes}


def _config(args):
    from afm_ray.config import validate
    from afm_ray.recipe import TrainConfig

    last = {"auto": "auto", "true": True, "false": False}[args.channels_last]
    return validate(TrainConfig, {"model": {"name": args.model}, "sim": {"scan_pixels": [args.size, args.size]},
                                  "run": {"batch_size": args.batch_size, "precision": args.precision,
                                          "compile": args.compile, "channels_last": last}}, "bench train-step")


class LocalReplay:
    """A :class:`ReplayActor` in this process, answering like a stream's ``results``: no Ray, no object store."""

    def __init__(self, replay: ReplayActor):
        self.replay = replay

    def results(self, specs):
        return ((spec, self.replay.make_batch(spec)) for spec in specs)


def _round(actor, runner, config, device, depth: int, n_steps: int, first_index: int, slim: dict,
           distinct: int) -> dict[str, float]:
    """Per-step seconds of one round of ``n_steps`` steps through a fresh stream (``actor``: a Ray actor handle of
    a :class:`ReplayActor`, or a :class:`LocalReplay`)."""
    from afm_ray.samples.plan import BatchSpec
    from afm_ray.train.loader import StepLoader

    samples = np.arange(config.run.batch_size)
    steps = [[BatchSpec("bench", 0, first_index + index, samples, (0, (first_index + index) % distinct), **slim)]
             for index in range(n_steps)]
    if isinstance(actor, LocalReplay):
        stream = actor
    else:
        from afm_ray.pipeline import BatchStream

        stream = BatchStream([actor], max_in_flight=max(4, depth + 2))
        stream.request([spec for step in steps for spec in step])
    loader = StepLoader(stream.results, steps, device, config.augment, config.sim.num_slices, depth=depth)
    runner.seconds = dict.fromkeys(runner.seconds, 0.0)
    started = time.perf_counter()
    for micro_batches in loader:
        runner.run(micro_batches)
    elapsed = time.perf_counter() - started
    times = loader.times
    return {name: value / n_steps for name, value in {
        "step": elapsed, "data wait": times.wait_seconds, "receive": times.receive_seconds,
        "host → device": times.transfer_seconds, "augmentation": times.augment_seconds,
        "forward + backward": runner.seconds["forward_backward"], "optimizer": runner.seconds["optimizer"]}.items()}


def run(args: argparse.Namespace) -> int:
    import torch

    from afm_ray.models.memory_format import channels_last_is_faster, to_channels_last
    from afm_ray.train.optim import build_optimizer
    from afm_ray.train.network import compiled
    from afm_ray.train.step import StepRunner
    from afm_ray.train.configured_model import build_loss

    if min(args.batch_size, args.steps, args.rounds, args.distinct) < 1 or args.warmup < 0 or args.depth < 1:
        raise InputError("bench train-step", "need --batch-size, --steps, --rounds, --distinct, --depth ≥ 1, --warmup ≥ 0")
    config = _config(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda requested but torch.cuda.is_available() is False")
    last = config.run.channels_last
    if last == "auto":
        sample = torch.randn(2, len(config.model.spec.tips), args.size, args.size, config.input_slices, device=device)
        last = channels_last_is_faster(config.build_network, sample)
    torch.manual_seed(0)
    network = config.build_network().to(device)
    model = to_channels_last(network) if last else network
    model = compiled(model, config)
    optimizer, schedule = build_optimizer(network.parameters(), global_batch_size=config.run.batch_size)
    runner = StepRunner(model, optimizer, schedule, build_loss(config), config, device, world_size=1,
                        channels_last=last, synchronize=True)

    slim = {"raw_df": True, "raw_df_dtype": args.raw_df_dtype, "target_dtype": args.target_dtype,
            "raw_df_read_slices": args.raw_df_slices == "read"}
    replay_args = (args.model, args.batch_size, args.size, args.distinct, slim)
    if args.source == "local":
        actor = LocalReplay(ReplayActor(*replay_args))
        made, travel = actor.replay.describe(), "served in this process (no Ray)"
    else:
        import ray

        from afm_ray.pipeline.cluster import ensure_ray

        ensure_ray(quiet=True)
        actor = ray.remote(num_cpus=0)(ReplayActor).remote(*replay_args)
        made, travel = ray.get(actor.describe.remote()), "in the object store, from a saturated stream (1 replay actor)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"train-step: {args.model}, batch {args.batch_size} at {args.size}×{args.size} px, raw Δf "
          f"({args.raw_df_slices} slices, {args.raw_df_dtype}; targets {args.target_dtype}): "
          f"{made['bytes_per_batch'] / 2**20:.1f} MiB per batch {travel}; "
          f"{device} {name}, precision {args.precision}, compile={args.compile}, channels_last={last}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps per setting, mean ms per step", flush=True)
    rows: dict[int, list[dict[str, float]]] = {0: [], args.depth: []}
    index = 0
    for _ in range(args.rounds):
        for depth in rows:
            if args.warmup:
                _round(actor, runner, config, device, depth, args.warmup, index, slim, args.distinct)
                index += args.warmup
            rows[depth].append(_round(actor, runner, config, device, depth, args.steps, index, slim, args.distinct))
            index += args.steps
    stages = list(rows[0][0])
    labels = {0: "in series (depth 0)", args.depth: f"overlapped (depth {args.depth})"}
    print(f"{'loader':<24}" + "".join(f"{stage:>20}" for stage in stages) + f"{'wait / step':>14}")
    means = {}
    for depth, results in rows.items():
        means[depth] = {stage: statistics.mean(result[stage] for result in results) for stage in stages}
        print(f"{labels[depth]:<24}" + "".join(f"{means[depth][stage] * 1e3:>20.1f}" for stage in stages)
              + f"{means[depth]['data wait'] / means[depth]['step']:>13.1%}")
    print(f"step time, overlapped / in series: {means[args.depth]['step'] / means[0]['step']:.2f}")
    if args.source == "ray":
        ray.kill(actor)
    return 0
