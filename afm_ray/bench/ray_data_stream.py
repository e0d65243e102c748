"""``afm-ray bench ray-data-stream``: can Ray Data spread a stream of batches over many simulation actors?
(comparison benchmark)

    afm-ray bench ray-data-stream [--layouts 32x8,64x4,4x8] [--latency 0.2] [--rounds 20]

The Ray Data counterpart of ``afm-ray bench pipeline --synthetic`` (``afm_ray/bench/synthetic_stream.py``),
which measures our own ``BatchStream``. For every ``ACTORSxCONSUMERS`` layout it builds one dataset
``ray.data.range(actors * rounds)`` (one row = one batch of work, one row per block), maps it with a
callable class on a fixed pool of ``actors`` Ray Data actors (``ActorPoolStrategy(size=actors)``,
``batch_size=1``, ``num_cpus=0``) that sleeps ``--latency`` seconds per call without using a CPU and
tags every row with the pid of the actor that made it, splits the stream with
``streaming_split(consumers, equal=True)`` and hands each split to a consumer Ray actor
(``num_cpus=0``) that iterates it with ``iter_batches(batch_size=1)``, as Ray Train ranks do.

Per layout it prints:

* ``ideal b/s``: ``actors / latency`` (Ray Data has no in-flight setting, so the consumers' in-flight
  bound of our stream, ``min(actors, consumers × in_flight) / latency``, is not applied);
* ``batches/s``: rows received by all consumers / (last consumer finish − stream start), where the
  stream start is the earliest UDF call, i.e. the moment the (already started) actor pool got its
  first batch, so that, as in our synthetic benchmark (which warms its actors first), actor start-up
  is not counted; ``of ideal`` is the ratio;
* ``actors used``: distinct actor pids seen by the consumers, and the smallest and largest
  per-actor share of the rows relative to the mean share (``rows / actors``; an actor that made
  nothing counts as 0 %);
* ``busy``: the actors' time inside the UDF / (actors × the same interval): how much of the pool the
  stream kept busy;
* ``start-up s``: from the consumers' first ``iter_batches`` call to the first UDF call (Ray Data
  starts the pipeline, and the actor pool, lazily at that moment) and ``wall s``: from building the
  dataset to the last consumer finish, actor-pool start-up included.

``--source range`` (default) streams the lazy ``range`` dataset, so its read tasks (one per block,
``num_cpus=1`` each, Ray's default for reads) run inside the stream ahead of the actors;
``--source materialized`` materializes it first (outside the timed stream but inside ``wall s``), as
one would for a small in-memory list of batch specifications. ``--blocks per-row`` (default) makes
one block per row (``override_num_blocks``); with ``--blocks auto`` Ray chooses the blocks, and every
block (many rows) is a single actor task.

By default the pool is fully started before the first batch is dispatched (``DataContext
.wait_for_min_actors_s``); ``--async-actor-start`` keeps Ray Data's default, where batches go to
actors as they come up (with many actors on few cores the first ones then do most of the work).

For the ``--epoch-layout`` layout (default ``32x8``), if it is in ``--layouts``, it also runs a second
epoch over the same split iterators and reports whether the actor pids changed (whether Ray Data
recreated the actor pool for the new epoch) and the gap between the last batch of epoch 1 and the
first batch of epoch 2.

Each layout runs in its own local Ray (``ray.init(address="local", num_cpus=--num-cpus, ...)``; any
``RAY_ADDRESS`` is ignored), shut down afterwards, and is abandoned with ``timed out`` after
``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import numpy as np


class FixedLatencyUDF:
    """A simulation actor stand-in: sleeps ``latency_s`` per call (no CPU), tags rows with its pid and call times."""

    def __init__(self, latency_s: float):
        self.latency_s = latency_s
        self.ready_at = time.time()

    def __call__(self, batch: dict) -> dict:
        started = time.time()
        time.sleep(self.latency_s)
        n = len(batch["id"])
        batch["pid"] = np.full(n, os.getpid(), np.int64)
        batch["ready_at"] = np.full(n, self.ready_at, np.float64)
        batch["call_start"] = np.full(n, started, np.float64)
        batch["call_end"] = np.full(n, time.time(), np.float64)
        return batch


class SplitConsumer:
    """One consumer (as a Ray Train rank): iterates its split of the stream for ``epochs`` epochs."""

    def run(self, split, epochs: int) -> list[dict]:
        out = []
        for _ in range(epochs):
            started, first = time.time(), None
            ids, pids, ready, call_start, call_end = [], [], [], [], []
            for batch in split.iter_batches(batch_size=1):
                if first is None:
                    first = time.time()
                ids.extend(int(i) for i in batch["id"])
                pids.extend(int(p) for p in batch["pid"])
                ready.extend(float(t) for t in batch["ready_at"])
                call_start.extend(float(t) for t in batch["call_start"])
                call_end.extend(float(t) for t in batch["call_end"])
            out.append({"started": started, "first": first, "finished": time.time(), "ids": ids, "pids": pids,
                        "ready_at": ready, "call_start": call_start, "call_end": call_end})
        return out


def start_ray(num_cpus: int) -> None:
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def epoch_figures(rows: list[dict], n_actors: int, latency_s: float, wall_start: float) -> dict:
    ids = [i for r in rows for i in r["ids"]]
    pids = [p for r in rows for p in r["pids"]]
    call_start = [t for r in rows for t in r["call_start"]]
    busy_s = sum(e - s for r in rows for s, e in zip(r["call_start"], r["call_end"]))
    ready_at = [t for r in rows for t in r["ready_at"]]
    finished = max(r["finished"] for r in rows)
    stream_start = min(call_start) if call_start else finished
    counts = Counter(pids)
    per_actor = np.array(sorted(counts.values()) + [0] * max(0, n_actors - len(counts)), float)
    mean = len(ids) / n_actors
    rate = len(ids) / (finished - stream_start) if finished > stream_start else float("nan")
    ideal = n_actors / latency_s
    return {"rows": len(ids), "unique_ids": len(set(ids)), "rate": rate, "ideal": ideal, "fraction": rate / ideal,
            "pids": set(counts), "busy": busy_s / (n_actors * (finished - stream_start)) if finished > stream_start else 0.0,
            "share_min": per_actor.min() / mean, "share_max": per_actor.max() / mean,
            "startup": stream_start - min(r["started"] for r in rows),
            "pool_spread": (max(ready_at) - min(ready_at)) if ready_at else float("nan"),
            "wall": finished - wall_start, "first_batch": min(r["first"] for r in rows if r["first"] is not None),
            "finished": finished}


def measure_layout(n_actors: int, n_consumers: int, latency_s: float, rounds: int, epochs: int,
                   timeout_s: float, wait_for_actors: bool, materialize: bool, per_row_blocks: bool) -> dict | None:
    """Runs one layout; returns per-epoch figures, or None if it did not finish within ``timeout_s``."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if wait_for_actors:
        ctx.wait_for_min_actors_s = int(timeout_s)

    wall_start = time.time()
    n_rows = n_actors * rounds
    source = ray.data.range(n_rows, override_num_blocks=n_rows if per_row_blocks else None)
    if materialize:
        source = source.materialize()
    ds = source.map_batches(
        FixedLatencyUDF, fn_constructor_kwargs={"latency_s": latency_s},
        compute=ray.data.ActorPoolStrategy(size=n_actors), batch_size=1, batch_format="numpy", num_cpus=0)
    splits = ds.streaming_split(n_consumers, equal=True)
    consumer_class = ray.remote(SplitConsumer).options(num_cpus=0)
    consumers = [consumer_class.remote() for _ in range(n_consumers)]
    refs = [c.run.remote(split, epochs) for c, split in zip(consumers, splits)]
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if len(done) < len(refs):
        return None
    results = ray.get(refs)
    per_epoch = []
    for epoch in range(epochs):
        rows = [r[epoch] for r in results]
        per_epoch.append(epoch_figures(rows, n_actors, latency_s, wall_start if epoch == 0 else
                                       max(r[epoch - 1]["finished"] for r in results)))
    return {"epochs": per_epoch, "expected_rows": n_rows - n_rows % n_consumers}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ray-data-stream", help="Ray Data's stream over many simulation actors (vs bench pipeline --synthetic)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", default="32x8,64x4,4x8", help="comma-separated ACTORSxCONSUMERS")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per batch (sleep, no CPU)")
    parser.add_argument("--rounds", type=int, default=20, help="batches per actor")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per layout before giving up")
    parser.add_argument("--num-cpus", type=int, default=4, help="num_cpus of the local Ray")
    parser.add_argument("--epoch-layout", default="32x8", help="layout that also runs a second epoch")
    parser.add_argument("--async-actor-start", action="store_true",
                        help="Ray Data's default: dispatch batches while the actor pool is still starting")
    parser.add_argument("--source", choices=["range", "materialized"], default="range",
                        help="range: lazy ray.data.range, its read tasks run inside the stream; materialized: "
                             "ray.data.range(...).materialize() first (in-memory blocks, no read stage)")
    parser.add_argument("--blocks", choices=["per-row", "auto"], default="per-row",
                        help="per-row: override_num_blocks = rows (one batch of work per block); auto: Ray's default")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    layouts = [tuple(int(v) for v in item.lower().split("x")) for item in args.layouts.split(",") if item]

    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    t0 = time.time()
    print(f"Ray Data stream: {args.latency:g} s per batch (sleep, no CPU); {args.rounds} batches per actor; "
          f"source {args.source}, {'one row per block' if args.blocks == 'per-row' else 'default blocks'}; max tasks in flight per actor {ctx.max_tasks_in_flight_per_actor or 'Ray default'}; "
          f"actor pool {'started asynchronously (Ray default)' if args.async_actor_start else 'fully started before the first batch'}; "
          f"{os.cpu_count()} CPUs on this machine, Ray {ray.__version__}, local Ray with num_cpus={args.num_cpus}",
          flush=True)
    header = (f"{'actors×consumers':>16} {'ideal b/s':>9} {'batches/s':>9} {'of ideal':>8} {'actors used':>11} "
              f"{'share min…max of mean':>21} {'rows ok':>7} {'busy':>5} {'start-up s':>10} {'wall s':>7}")
    print(header, flush=True)
    epoch_notes = []
    for n_actors, n_consumers in layouts:
        name = f"{n_actors}x{n_consumers}"
        label = f"{n_actors}×{n_consumers}"
        epochs = 2 if name == args.epoch_layout else 1
        start_ray(args.num_cpus)
        try:
            result = measure_layout(n_actors, n_consumers, args.latency, args.rounds, epochs, args.timeout,
                                    not args.async_actor_start, args.source == "materialized", args.blocks == "per-row")
        except Exception as error:  # report and go on with the next layout
            print(f"{label:>16} failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                  flush=True)
            result = "failed"
        finally:
            ray.shutdown()
        if result == "failed":
            continue
        if result is None:
            print(f"{label:>16} timed out (after {args.timeout:g} s)", flush=True)
            continue
        for epoch, row in enumerate(result["epochs"]):
            ok = row["rows"] == result["expected_rows"] and row["unique_ids"] == row["rows"]
            tag = label if epoch == 0 else f"  epoch {epoch + 1}"
            print(f"{tag:>16} {row['ideal']:>9.1f} {row['rate']:>9.1f} {100 * row['fraction']:>7.0f}% "
                  f"{len(row['pids']):>5d} of {n_actors:<3d} {100 * row['share_min']:>9.0f}% … "
                  f"{100 * row['share_max']:.0f}% {'yes' if ok else 'NO':>7} {100 * row['busy']:>4.0f}% {row['startup']:>10.1f} "
                  f"{row['wall']:>7.1f}", flush=True)
        if len(result["epochs"]) > 1:
            first, second = result["epochs"][0], result["epochs"][1]
            same = first["pids"] == second["pids"]
            shared = len(first["pids"] & second["pids"])
            epoch_notes.append(
                f"{label} epoch 2: actor pids {'unchanged' if same else 'CHANGED'} "
                f"({shared} of {len(second['pids'])} epoch-2 pids also made epoch-1 rows) -> "
                f"{'actor pool reused' if same else 'actor pool recreated (at least partly)'}; gap between the last "
                f"epoch-1 batch and the first epoch-2 batch {second['first_batch'] - first['finished']:.1f} s "
                f"(epoch-2 start-up to first UDF call {second['startup']:.1f} s)")
    for note in epoch_notes:
        print(note)
    print(f"total wall time {time.time() - t0:.1f} s", flush=True)
    return 0

