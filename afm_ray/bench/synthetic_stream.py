"""``afm-ray bench pipeline --synthetic``: does the stream keep every simulation actor busy?

Real Ray, the real :class:`~afm_ray.pipeline.BatchStream` and real consumer processes (Ray actors
that iterate their rank's share of an epoch plan, as Ray Train ranks do), but simulation actors
that answer every call after a fixed ``--latency`` without using a CPU, so that the figures
measure the stream alone, with many more actors than this machine has cores.

Per ``ACTORSxCONSUMERS`` layout it prints batches/s against the ideal
``min(actors, consumers × in-flight) / latency``, how many distinct actors were used, and the
smallest and largest actor's share of the batches relative to the mean share.
"""

from __future__ import annotations

import os
import time

import numpy as np

from afm_ray.plan import BatchSpec


class FixedLatencyActor:
    """A simulation actor stand-in: sleeps ``latency_s`` per batch (no CPU) and returns a small batch."""

    def __init__(self, latency_s: float, payload_bytes: int = 4096):
        self.latency_s = latency_s
        self.payload = np.zeros(max(payload_bytes // 4, 1), np.float32)

    def make_batch(self, spec: BatchSpec) -> dict:
        started = time.time()
        time.sleep(self.latency_s)
        return {"x": self.payload, "samples": np.asarray(spec.samples, np.int64),
                "made_by": (os.getpid(), started, time.time())}

    def describe(self) -> dict:
        return {"pid": os.getpid()}


class StreamConsumer:
    """One consumer (as a Ray Train rank): pulls its share of the plan through a :class:`BatchStream`."""

    def run(self, actors: list, specs: list[BatchSpec], consumer: int, consumers: int,
            max_in_flight: int | None, start_at: float) -> dict:
        from afm_ray.pipeline import BatchStream

        time.sleep(max(0.0, start_at - time.time()))
        started = time.time()
        stream = BatchStream(actors, specs, max_in_flight, consumer=consumer, consumers=consumers)
        samples = [int(s) for _, batch in stream for s in batch["samples"]]
        return {"started": started, "finished": time.time(), "batches": stream.stats.batches,
                "samples": samples, "per_actor": stream.stats.per_actor_batches,
                "in_flight": stream.max_in_flight}


def measure_layout(n_actors: int, n_consumers: int, latency_s: float, rounds: int,
                   max_in_flight: int | None = None) -> dict:
    """Run ``rounds`` batches per actor through ``n_consumers`` consumers; returns the row's figures."""
    import ray

    from afm_ray.pipeline import batches_for_rank, plan_epoch

    actor_class = ray.remote(FixedLatencyActor).options(num_cpus=0)
    consumer_class = ray.remote(StreamConsumer).options(num_cpus=0)
    actors = [actor_class.remote(latency_s) for _ in range(n_actors)]
    consumers = [consumer_class.remote() for _ in range(n_consumers)]
    try:
        ray.get([actor.describe.remote() for actor in actors])
        n_batches = n_actors * rounds - (n_actors * rounds) % n_consumers
        plan = plan_epoch(n_batches, 1, run_seed=0, epoch=0)
        start_at = time.time() + 1.0
        rows = ray.get([consumer.run.remote(actors, batches_for_rank(plan, rank, n_consumers), rank, n_consumers,
                                            max_in_flight, start_at)
                        for rank, consumer in enumerate(consumers)])
    finally:
        for handle in actors + consumers:
            ray.kill(handle)
    elapsed = max(r["finished"] for r in rows) - min(r["started"] for r in rows)
    per_actor = np.zeros(n_actors)
    for row in rows:
        for actor, count in row["per_actor"].items():
            per_actor[actor] += count
    samples = sorted(s for row in rows for s in row["samples"])
    in_flight = rows[0]["in_flight"]
    ideal = min(n_actors, n_consumers * in_flight) / latency_s
    rate = sum(r["batches"] for r in rows) / elapsed
    share = per_actor / per_actor.mean()
    return {"actors": n_actors, "consumers": n_consumers, "in_flight": in_flight, "ideal": ideal, "rate": rate,
            "fraction": rate / ideal, "actors_used": int((per_actor > 0).sum()),
            "share_min": float(share.min()), "share_max": float(share.max()),
            "exactly_once": samples == list(range(n_batches))}


def run_synthetic(layouts: list[tuple[int, int]], latency_s: float, rounds: int, max_in_flight: int | None,
                  num_cpus: int | None) -> int:
    import ray

    from afm_ray.ray_cluster import ensure_ray, shutdown_ray

    ensure_ray(num_cpus=num_cpus, log_to_driver=False, quiet=True)
    print(f"synthetic simulation actors: {latency_s:g} s per batch, no CPU; {rounds} batches per actor; "
          f"in-flight {'max(4, 2 × ⌈actors / consumers⌉) (default)' if max_in_flight is None else max_in_flight}; "
          f"{os.cpu_count()} CPUs on this machine, Ray {ray.__version__}")
    print(f"{'actors×consumers':>16} {'in-flight':>9} {'ideal b/s':>9} {'batches/s':>9} {'of ideal':>8} "
          f"{'actors used':>11} {'share min…max of mean':>21} {'each once':>9}")
    try:
        for n_actors, n_consumers in layouts:
            row = measure_layout(n_actors, n_consumers, latency_s, rounds, max_in_flight)
            print(f"{f'{n_actors}×{n_consumers}':>16} {row['in_flight']:>9d} {row['ideal']:>9.1f} {row['rate']:>9.1f} "
                  f"{100 * row['fraction']:>7.0f}% {row['actors_used']:>5d} of {n_actors:<3d} "
                  f"{100 * row['share_min']:>9.0f}% … {100 * row['share_max']:.0f}% "
                  f"{'yes' if row['exactly_once'] else 'NO':>9}", flush=True)
    finally:
        shutdown_ray()
    return 0
