"""``afm-ray bench pipeline``: training throughput against the number of simulation actors.

For each actor count in ``--actors`` (default 1,2,4) the benchmark starts that many
:class:`~afm_ray.pipeline.actors.SimulationActor` s from ``--config`` (CPU OpenCL here, GPUs where
``pipeline.sim_num_gpus`` asks for them), then runs one training consumer exactly as a Ray Train
rank does — a :class:`~afm_ray.pipeline.BatchStream` within ``pipeline.object_store_budget_mib_per_worker``
feeding forward, loss, backward and optimiser steps of the configured model — for
``--batches`` batches after ``--warmup`` untimed ones. It prints per actor count:

* training samples/s and the scaling efficiency against one actor
  (``rate(N) / (N × rate(1))``, 100 % = perfect);
* the fraction of step time the trainer waited for data;
* the simulation rate one actor sustains while producing (stacks/s, all tips);
* the object-store high-water mark, polled every 0.1 s from Ray's memory summary, next to the
  bound the stream guarantees: the budget (or ``max_in_flight × batch bytes`` if smaller) plus the
  batch being trained on (reached only when the actors keep up).

* how idle the actors are while the trainer validates, with and without requesting the next
  epoch's batches first (``pipeline.prefetch_next_epoch``): after the timed batches the consumer
  runs ``--validation-batches`` forward passes, repeated for at least ``--validation-seconds`` (a
  validation), then pulls the next epoch. Idle is the share of actor-seconds in that window with
  no batch being made (from the actors' own clocks); with prefetch the pool keeps making the next
  epoch within the budget, so a validation of many batches' time leaves the actors busy.

On a machine with fewer cores than actors + trainer the figures show contention, not scaling:
read them with ``os.cpu_count()`` (printed). Compare ratios within one run.

``--synthetic`` measures the stream alone with many fixed-latency actors instead
(:mod:`afm_ray.bench.synthetic_stream`).
"""

from __future__ import annotations

import argparse
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from afm_ray.bench.synthetic_stream import CASES, DEFAULT_LAYOUTS
from afm_ray.errors import InputError
from afm_ray.samples.sample_batch import MadeBy

PLASMA_LINE = re.compile(r"Plasma memory usage (\d+) MiB")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pipeline", help="training samples/s with 1, 2, 4 simulation actors; data wait; object-store peak",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("quickstart"),
                        help="training config whose data/sim/augment/model/pipeline settings are used "
                             "(a file or a preset name; default quickstart)")
    parser.add_argument("--actors", default="1,2,4", help="comma-separated actor counts (default 1,2,4)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per actor count (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    parser.add_argument("--validation-batches", type=int, default=8,
                        help="forward passes of the pause between epochs (default 8)")
    parser.add_argument("--validation-seconds", type=float, default=0.0,
                        help="repeat the validation's passes for at least this long (default 0: once)")
    parser.add_argument("--synthetic", action="store_true",
                        help="fixed-latency actors (no CPU), many consumers: is every actor busy? (see below)")
    parser.add_argument("--layouts", default=DEFAULT_LAYOUTS,
                        help="--synthetic: ACTORSxCONSUMERS[xTRIALS][:CASE] layouts, CASE one of "
                             f"{', '.join(CASES)} (default {DEFAULT_LAYOUTS})")
    parser.add_argument("--latency", type=float, default=0.2, help="--synthetic: seconds per batch (default 0.2)")
    parser.add_argument("--rounds", type=int, default=30, help="--synthetic: batches per actor (default 30)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray instance (default: all); ignored with RAY_ADDRESS")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for `afm-ray train`")
    parser.set_defaults(handler=run)


class ObjectStorePeak:
    """Polls the cluster's plasma usage in a thread; ``peak_mib`` is the highest value seen."""

    def __init__(self, gcs_address: str, period_s: float = 0.1):
        self.gcs_address, self.period_s = gcs_address, period_s
        self.peak_mib = 0
        self.available = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _usage_mib(self) -> int | None:
        # Ray has no public API for live plasma usage; the `ray memory --stats-only` summary is it.
        from ray._private.internal_api import memory_summary

        match = PLASMA_LINE.search(memory_summary(address=self.gcs_address, stats_only=True))
        return int(match.group(1)) if match else None

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                usage = self._usage_mib()
            except Exception:  # the private API moved: report "n/a" rather than fail the benchmark
                self.available = False
                return
            if usage is not None:
                self.peak_mib = max(self.peak_mib, usage)
            self._stop.wait(self.period_s)

    def __enter__(self) -> "ObjectStorePeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def idle_fraction(intervals: list[MadeBy], n_actors: int, window: tuple[float, float]) -> float:
    """Share of ``n_actors × window`` actor-seconds in which no batch was being made (``intervals``: each
    batch's ``made_by``, or any ``(pid, started, finished)``)."""
    begin, end = window
    busy = sum(max(0.0, min(stop, end) - max(start, begin)) for _, start, stop in intervals)
    return 1.0 - busy / (n_actors * max(end - begin, 1e-9))


def measure(config, n_actors: int, n_batches: int, n_warmup: int, n_validation: int, n_train: int,
            gcs_address: str, prefetch: bool, validation_seconds: float = 0.0) -> dict:
    """One row of the table: a consumer training on ``n_batches`` batches from ``n_actors`` actors, then validating."""
    import torch

    from afm_ray.train.optim import build_optimizer
    from afm_ray.pipeline import BatchStream, plan_epoch
    from afm_ray.pipeline.actors import create_simulation_actors, stop_actors
    from afm_ray.train.configured_model import build_loss, compute_loss, to_tensors

    pipeline = config.pipeline.model_copy(update={"num_sim_actors": n_actors})
    actors = create_simulation_actors(config.sample_settings, pipeline)
    try:
        model, loss_fn = config.build_network(), build_loss(config)
        optimizer, _ = build_optimizer(model.parameters(), config.optimizer.learning_rate, config.optimizer.decay,
                                       (config.optimizer.beta1, config.optimizer.beta2))
        specs, epoch = [], 0
        while len(specs) < n_warmup + n_batches:
            specs += plan_epoch(n_train, config.run.batch_size, config.run.seed, epoch)
            epoch += 1
        specs = specs[:n_warmup + n_batches]
        stream = BatchStream(actors, max_in_flight=pipeline.max_in_flight_per_worker,
                             budget_mib=pipeline.object_store_budget_mib_per_worker)
        following = [spec for ahead in range(epoch + 1, epoch + 3)  # two epochs ahead, as the training loop
                     for spec in plan_epoch(n_train, config.run.batch_size, config.run.seed, ahead)]
        stream.request(specs)
        if prefetch:
            stream.request(following)
        timed_from = wait_from = None
        samples, largest_batch, intervals = 0, 0, []
        with ObjectStorePeak(gcs_address) as peak:
            for index, (spec, batch) in enumerate(stream.results(specs)):
                if index == n_warmup:
                    timed_from, wait_from = time.perf_counter(), stream.stats.wait_seconds
                    produce_from, produced_from = stream.stats.produce_seconds, stream.stats.samples
                tensors = to_tensors(batch, "cpu")
                loss = compute_loss(config.model.spec, loss_fn, model(tensors["x"]), tensors)
                optimizer.zero_grad(set_to_none=True)
                loss.total.backward()
                optimizer.step()
                largest_batch = max(largest_batch, batch.nbytes)
                intervals.append(batch.made_by)
                if index >= n_warmup:
                    samples += len(spec.samples)
            elapsed = time.perf_counter() - timed_from
            # the timed batches' figures, before the next epoch's batches add to the stream's counters
            waited = stream.stats.wait_seconds - wait_from
            produce_seconds = stream.stats.produce_seconds - produce_from
            produced = stream.stats.samples - produced_from
            validation_started = time.time()
            with torch.no_grad():
                while True:
                    for _ in range(n_validation):
                        model(tensors["x"])  # the last batch, as a stand-in validation set
                    if time.time() - validation_started >= validation_seconds:
                        break
            validation = (validation_started, time.time())
            after = 0  # batches begun after the validation: once every actor has begun two, the window is covered
            for _, batch in stream.results(following):
                intervals.append(batch.made_by)
                after += batch.made_by.started_s >= validation[1]
                if after >= 2 * n_actors:
                    break
        stream.close()
        return {
            "actors": n_actors, "samples_per_s": samples / elapsed, "prefetch": prefetch,
            "wait_fraction": waited / elapsed,
            "sim_stacks_per_s_per_actor": produced * len(config.model.spec.tips) / max(produce_seconds, 1e-9),
            "store_peak_mib": peak.peak_mib if peak.available else None,
            "store_bound_mib": (min(pipeline.object_store_budget_mib_per_worker * 2**20,
                                    (stream.max_in_flight or np.inf) * largest_batch) + largest_batch) / 2**20,
            "validation_s": validation[1] - validation[0],
            "idle_in_validation": idle_fraction(intervals, n_actors, validation),
        }
    finally:
        stop_actors(actors)


def run(args: argparse.Namespace) -> int:
    import ray

    from afm_ray.pipeline.sources import load_split_samples
    from afm_ray.pipeline.cluster import ensure_ray, shutdown_ray
    from afm_ray.recipe import load_train_config, with_absolute_paths

    if args.synthetic:
        from afm_ray.bench.synthetic_stream import parse_layout, run_synthetic

        layouts = args.layouts.split(",")
        for layout in layouts:
            try:
                parse_layout(layout)
            except ValueError:
                raise InputError("--layouts", f"expected ACTORSxCONSUMERS[xTRIALS][:CASE] with counts ≥ 1 and CASE one "
                                              f"of {', '.join(CASES)}, got {layout!r}") from None
        if args.latency <= 0 or args.rounds < 1:
            raise InputError("bench pipeline --synthetic", "needs --latency > 0 and --rounds ≥ 1")
        return run_synthetic(layouts, args.latency, args.rounds, args.num_cpus)
    try:
        actor_counts = [int(part) for part in args.actors.split(",")]
    except ValueError:
        raise InputError("--actors", f"expected comma-separated integers, got {args.actors!r}") from None
    if min(actor_counts) < 1 or args.batches < 1 or args.warmup < 0:
        raise InputError("bench pipeline", "--actors must be ≥ 1, --batches ≥ 1, --warmup ≥ 0")
    config = with_absolute_paths(load_train_config(args.config, args.overrides))
    n_train = len(load_split_samples(config.sample_settings, ("train",))["train"])
    ensure_ray(num_cpus=args.num_cpus, log_to_driver=False, quiet=True)
    gcs_address = ray.get_runtime_context().gcs_address
    print(f"model {config.model.name}, scan {config.sim.scan_pixels[0]}×{config.sim.scan_pixels[1]} px × "
          f"{config.sim.num_slices} slices, batch {config.run.batch_size}, "
          f"object-store budget {config.pipeline.object_store_budget_mib_per_worker:g} MiB"
          f"{f', at most {config.pipeline.max_in_flight_per_worker} batches' if config.pipeline.max_in_flight_per_worker else ''}, "
          f"{os.cpu_count()} CPUs on this machine, "
          f"Ray cluster {ray.cluster_resources().get('CPU', 0):g} CPU / {ray.cluster_resources().get('GPU', 0):g} GPU")
    print(f"{'actors':>6} {'prefetch':>8} {'samples/s':>10} {'efficiency':>10} {'data wait':>9} "
          f"{'sim stacks/s/actor':>18} {'store peak MiB':>14} {'bound MiB':>9} {'validation s':>12} "
          f"{'actors idle in it':>17}")
    baseline = None
    try:
        for n_actors in actor_counts:
            for prefetch in (False, True):
                row = measure(config, n_actors, args.batches, args.warmup, args.validation_batches, n_train,
                              gcs_address, prefetch, args.validation_seconds)
                baseline = baseline or row["samples_per_s"] / row["actors"]
                peak = "n/a" if row["store_peak_mib"] is None else f"{row['store_peak_mib']:d}"
                print(f"{row['actors']:>6d} {'on' if prefetch else 'off':>8} {row['samples_per_s']:>10.1f} "
                      f"{100 * row['samples_per_s'] / (row['actors'] * baseline):>9.0f}% "
                      f"{100 * row['wait_fraction']:>8.0f}% {row['sim_stacks_per_s_per_actor']:>18.1f} "
                      f"{peak:>14} {row['store_bound_mib']:>9.1f} {row['validation_s']:>12.2f} "
                      f"{100 * row['idle_in_validation']:>16.0f}%", flush=True)
    finally:
        shutdown_ray()
    return 0
