"""``afm-ray bench pipeline --synthetic``: does the pool keep every simulation actor busy, alike or not?

Real Ray, the real dispatcher and :class:`~afm_ray.pipeline.BatchStream` and real consumer
processes (Ray actors that iterate their rank's share of an epoch plan, as Ray Train ranks do),
but simulation actors that answer every call after a fixed latency without using a CPU, so that
the figures measure the pool alone, with many more actors than this machine has cores.

Consumers **step together**, as DDP ranks do: a round ends when every consumer of a trial has
its batch (a barrier actor per trial). A layout is ``ACTORSxCONSUMERS[xTRIALS][:CASE]``; the
cases make the actors uneven:

========  ===========================================================================
alike     every actor ``--latency`` s per batch
slow4     every 4th actor twice as slow
slowhome  the actors ``c, c + W, …`` of one consumer ``c`` twice as slow (with the
          earlier static "home actor" split they all fed the same rank)
dead      actor 0 fails every call at once, from the start
killed    actor 0 is killed (no restart) halfway through the run
========  ===========================================================================

Each row prints batches/s against the *capacity*, the summed rate ``Σ 1 / latency`` of the
actors alive at the end (so a dead actor's share is not counted against the pool), per trial
for several trials (each should get about half), how many actors made batches, and whether every
planned batch arrived exactly once.
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np

from afm_ray.pipeline.dispatch import BatchMaker
from afm_ray.samples.plan import BatchSpec
from afm_ray.samples.sample_batch import SampleBatch

CASES = ("alike", "slow4", "slowhome", "dead", "killed")
DEFAULT_LAYOUTS = "32x8,64x4,32x8:slow4,64x8:slowhome,32x8:dead,32x8:killed,32x4x2"


class FixedLatencyActor(BatchMaker):
    """A simulation actor stand-in: sleeps ``latency_s`` per batch (no CPU) and returns a small batch, of
    ``payload_bytes`` zeros in ``x`` (B, 1, 1, 1, n) and no targets.

    ``fail``: raise at once on every call instead (a dead node's actor that restarts and fails again).
    """

    def __init__(self, latency_s: float, payload_bytes: int = 4096, fail: bool = False):
        self.latency_s = latency_s
        self.fail = fail
        self.payload_bytes = payload_bytes

    def make_batch(self, spec: BatchSpec) -> SampleBatch:
        if self.fail:
            raise RuntimeError("this synthetic actor fails every call")
        started = time.perf_counter()
        time.sleep(self.latency_s)
        count = len(spec.samples)
        x = np.zeros((count, 1, 1, 1, max(self.payload_bytes // (4 * max(count, 1)), 1)), np.float32)
        return SampleBatch(spec.samples, x=x, produce_seconds=time.perf_counter() - started)

    def describe(self) -> dict:
        return {"pid": os.getpid()}


class RoundBarrier:
    """Async actor: ``arrive(round)`` returns once all ``parties`` consumers have arrived at that round."""

    def __init__(self, parties: int):
        self.parties = parties
        self.arrived: dict[int, int] = {}
        self.events: dict[int, asyncio.Event] = {}

    async def arrive(self, round_index: int) -> None:
        event = self.events.setdefault(round_index, asyncio.Event())
        self.arrived[round_index] = self.arrived.get(round_index, 0) + 1
        if self.arrived[round_index] == self.parties:
            event.set()
            self.events.pop(round_index - 2, None)
        await event.wait()


class StreamConsumer:
    """One consumer (as a Ray Train rank): pulls its share of the plan, one batch per round of its trial."""

    def run(self, pool, specs: list[BatchSpec], consumer: int, consumers: int, tenant: str, barrier,
            start_at: float) -> dict:
        import ray

        from afm_ray.pipeline import BatchStream

        time.sleep(max(0.0, start_at - time.time()))
        started = time.time()
        stream = BatchStream(pool, specs, consumer=consumer, consumers=consumers, tenant=tenant)
        samples = []
        for round_index, (_, batch) in enumerate(stream):
            if batch is not None:
                samples += [int(s) for s in batch.samples]
            ray.get(barrier.arrive.remote(round_index))
        stream.close()
        return {"started": started, "finished": time.time(), "batches": stream.stats.batches,
                "samples": samples, "per_actor": stream.stats.per_actor_batches,
                "dropped": stream.stats.dropped_batches}


def latencies_for(case: str, n_actors: int, n_consumers: int, latency_s: float) -> list[float]:
    if case == "slow4":
        return [2 * latency_s if index % 4 == 3 else latency_s for index in range(n_actors)]
    if case == "slowhome":
        slow_consumer = min(3, n_consumers - 1)
        return [2 * latency_s if index % n_consumers == slow_consumer else latency_s for index in range(n_actors)]
    return [latency_s] * n_actors


def measure_layout(n_actors: int, n_consumers: int, latency_s: float, rounds: int, case: str = "alike",
                   n_trials: int = 1) -> dict:
    """Run about ``rounds`` batches per actor through ``n_trials × n_consumers`` lock-step consumers."""
    import ray

    from afm_ray.pipeline import batches_for_rank, plan_epoch
    from afm_ray.pipeline.dispatch import DispatchLimits
    from afm_ray.pipeline.dispatcher import start_dispatcher

    if case not in CASES:
        raise ValueError(f"unknown case {case!r}: one of {', '.join(CASES)}")
    latencies = latencies_for(case, n_actors, n_consumers, latency_s)
    actor_class = ray.remote(FixedLatencyActor).options(num_cpus=0, max_restarts=0, max_task_retries=0)
    actors = [actor_class.remote(latency, fail=(case == "dead" and index == 0)) for index, latency in enumerate(latencies)]
    dead = {0} if case in ("dead", "killed") else set()
    capacity = sum(1 / latency for index, latency in enumerate(latencies) if index not in dead)
    consumer_class = ray.remote(StreamConsumer).options(num_cpus=0)
    barrier_class = ray.remote(RoundBarrier).options(num_cpus=0, max_concurrency=1000)
    consumers = [[consumer_class.remote() for _ in range(n_consumers)] for _ in range(n_trials)]
    barriers = [barrier_class.remote(n_consumers) for _ in range(n_trials)]
    pool = start_dispatcher(actors, DispatchLimits(timeout_floor_s=max(10 * latency_s, 1.0)))
    try:
        ray.get([actor.describe.remote() for actor in actors])
        per_trial = int(capacity * latency_s * rounds / n_trials) // n_consumers * n_consumers
        plan = plan_epoch(per_trial, 1, run_seed=0, epoch=0)
        start_at = time.time() + 1.0
        running = [consumer.run.remote(pool, batches_for_rank(plan, rank, n_consumers), rank, n_consumers,
                                       f"trial-{trial}", barriers[trial], start_at)
                   for trial in range(n_trials) for rank, consumer in enumerate(consumers[trial])]
        if case == "killed":
            time.sleep(max(0.0, start_at - time.time()) + per_trial * n_trials / capacity / 2)
            ray.kill(actors[0], no_restart=True)
        rows = ray.get(running)
    finally:
        for handle in [*actors, *[c for trial in consumers for c in trial], *barriers, pool]:
            ray.kill(handle)
    trials = [rows[trial * n_consumers:(trial + 1) * n_consumers] for trial in range(n_trials)]
    elapsed = max(r["finished"] for r in rows) - min(r["started"] for r in rows)
    per_actor = np.zeros(n_actors)
    for row in rows:
        for actor, count in row["per_actor"].items():
            per_actor[actor] += count
    trial_rates = [sum(r["batches"] for r in trial) / (max(r["finished"] for r in trial)
                                                       - min(r["started"] for r in trial)) for trial in trials]
    rate = sum(r["batches"] for r in rows) / elapsed
    live = per_actor[[index for index in range(n_actors) if index not in dead]]
    share = live / live.mean()
    return {"actors": n_actors, "consumers": n_consumers, "trials": n_trials, "case": case, "capacity": capacity,
            "rate": rate, "fraction": rate / capacity, "trial_fractions": [r / capacity for r in trial_rates],
            "actors_used": int((per_actor > 0).sum()), "share_min": float(share.min()),
            "share_max": float(share.max()), "dropped": sum(r["dropped"] for r in rows),
            "exactly_once": all(sorted(s for r in trial for s in r["samples"]) == list(range(per_trial))
                                for trial in trials)}


def parse_layout(text: str) -> tuple[int, int, int, str]:
    """``"32x8"`` → (32, 8, 1, "alike"); ``"32x4x2:slow4"`` → (32, 4, 2, "slow4")."""
    shape, _, case = text.partition(":")
    counts = [int(n) for n in shape.lower().split("x")]
    if len(counts) not in (2, 3) or min(counts) < 1 or (case or "alike") not in CASES:
        raise ValueError(text)
    return counts[0], counts[1], counts[2] if len(counts) == 3 else 1, case or "alike"


def run_synthetic(layouts: list[str], latency_s: float, rounds: int, num_cpus: int | None) -> int:
    import ray

    from afm_ray.pipeline.cluster import ensure_ray, shutdown_ray

    parsed = [parse_layout(layout) for layout in layouts]
    ensure_ray(num_cpus=num_cpus, log_to_driver=False, quiet=True)
    print(f"synthetic simulation actors: {latency_s:g} s per batch (slow ones twice that), no CPU; about {rounds} "
          f"batches per actor; consumers step together; {os.cpu_count()} CPUs on this machine, Ray {ray.__version__}")
    print(f"{'layout':>18} {'capacity b/s':>12} {'batches/s':>9} {'of capacity':>11} {'per trial':>15} "
          f"{'actors used':>11} {'share min…max':>15} {'dropped':>7} {'each once':>9}")
    try:
        for (n_actors, n_consumers, n_trials, case), text in zip(parsed, layouts):
            row = measure_layout(n_actors, n_consumers, latency_s, rounds, case, n_trials)
            trials = " / ".join(f"{100 * f:.0f}%" for f in row["trial_fractions"]) if n_trials > 1 else "—"
            print(f"{text:>18} {row['capacity']:>12.1f} {row['rate']:>9.1f} {100 * row['fraction']:>10.0f}% "
                  f"{trials:>15} {row['actors_used']:>5d} of {n_actors:<3d} "
                  f"{100 * row['share_min']:>6.0f}% … {100 * row['share_max']:.0f}% {row['dropped']:>7d} "
                  f"{'yes' if row['exactly_once'] else 'NO':>9}", flush=True)
    finally:
        shutdown_ray()
    return 0
