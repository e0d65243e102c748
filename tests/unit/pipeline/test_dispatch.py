"""The simulation pool's dispatch policy under a virtual clock: work-conserving, fair, exactly once, finite.

:class:`VirtualPool` plays simulation actors (FIFO, one batch at a time, a fixed latency each, or
failing at once, or hanging) and consumers that step together as DDP ranks do, against the real
:class:`~afm_ray.pipeline.dispatch.DispatchPolicy`. The layouts are the issue's: with the earlier
static "home actor" split, 8 slow actors in one rank's home set gave 53 % of capacity.
"""

import heapq
import math
import subprocess
import sys
from collections import deque

import numpy as np
import pytest

from afm_ray.errors import InputError
from afm_ray.pipeline.dispatch import BatchMaker, DispatchLimits, DispatchPolicy
from afm_ray.samples.plan import batches_for_rank, plan_epoch
from afm_ray.recipe import load_train_config

from conftest import CONFIGS

HUNG = math.inf
FAILS = -1.0


class VirtualPool:
    """Actors with ``latencies`` (s per batch; :data:`HUNG` never answers, :data:`FAILS` fails at once)."""

    def __init__(self, latencies: list[float], limits: DispatchLimits = DispatchLimits(), batch_bytes: int = 1000):
        self.policy = DispatchPolicy(len(latencies), limits, seed=1)
        self.latencies = latencies
        self.batch_bytes = batch_bytes
        self.now = 0.0
        self.fifo = [deque() for _ in latencies]  # call ids queued at each actor
        self.running: dict[int, int] = {}  # actor → call id being made
        self.events: list = []  # (time, sequence, actor, call)
        self.sequence = 0
        self.made_by: dict[int, list[int]] = {index: [] for index in range(len(latencies))}

    def pump(self) -> None:
        for send in self.policy.next_sends(self.now):
            self.fifo[send.actor].append(send.call)
            self._start(send.actor)

    def _start(self, actor: int) -> None:
        if actor in self.running or not self.fifo[actor]:
            return
        call = self.fifo[actor].popleft()
        self.running[actor] = call
        latency = self.latencies[actor]
        if latency == HUNG:
            return
        self.sequence += 1
        heapq.heappush(self.events, (self.now + max(latency, 1e-3), self.sequence, actor, call))

    def advance(self) -> None:
        """To the next completion or deadline; settles what happened then."""
        deadline = self.policy.next_deadline(self.now)
        if self.events and self.events[0][0] <= deadline:
            self.now, _, actor, call = heapq.heappop(self.events)
            del self.running[actor]
            if self.latencies[actor] == FAILS:
                outcome = self.policy.failed(call, self.now, actor_lost=False, reason="fails")
            else:
                self.made_by[actor].append(call)
                outcome = self.policy.succeeded(call, self.now, self.batch_bytes, self.latencies[actor])
            for cancelled in outcome.cancel:
                for queue in self.fifo:
                    if cancelled in queue:
                        queue.remove(cancelled)
                        self.policy.cancelled(cancelled)
            self._start(actor)
        else:
            self.now = deadline
            self.policy.overdue(self.now)
            for call in self.policy.expire(self.now):
                for queue in self.fifo:
                    if call in queue:
                        queue.remove(call)
                        self.policy.cancelled(call)
        self.pump()


def run_lockstep(pool: VirtualPool, tenants: dict[str, int], batches_per_consumer: int, max_time: float = 1e5):
    """Consumers (``tenants``: name → ranks) that each need one batch per round; returns per-tenant figures."""
    plans = {}
    for tenant, ranks in tenants.items():
        plan = plan_epoch(batches_per_consumer * ranks, 1, run_seed=0, epoch=0)
        for rank in range(ranks):
            key = (tenant, rank)
            pool.policy.register(key, tenant, pool.now, budget_bytes=math.inf, max_attempts=3)
            specs = batches_for_rank(plan, rank, ranks)
            pool.policy.request(key, specs, pool.now)
            pool.policy.want(key, [spec.key for spec in specs])
            plans[key] = specs
    buffers = {key: deque() for key in plans}
    received = {key: [] for key in plans}
    rounds = {tenant: 0 for tenant in tenants}
    finished = {}
    pool.pump()
    while len(finished) < len(tenants):
        assert pool.now < max_time, "the pool stalled"
        pool.advance()
        for key in plans:
            for job in pool.policy.take(key, pool.now):
                buffers[key].append(job)
                received[key].append((job.spec, job.dropped))
        for tenant, ranks in tenants.items():
            keys = [(tenant, rank) for rank in range(ranks)]
            while tenant not in finished and all(buffers[key] for key in keys):
                for key in keys:
                    buffers[key].popleft()
                rounds[tenant] += 1
                if rounds[tenant] == batches_per_consumer:
                    finished[tenant] = pool.now
    return finished, received, plans


def capacity(latencies) -> float:
    return sum(1 / latency for latency in latencies if 0 < latency < HUNG)


@pytest.mark.parametrize("latencies, consumers", [
    ([1.0] * 64, 8),
    ([2.0 if index % 4 == 3 else 1.0 for index in range(32)], 8),  # every 4th actor 2× slower
    ([2.0 if index % 8 == 3 else 1.0 for index in range(64)], 8),  # the 8 slow ones of old rank 3's home set
    ([FAILS] + [1.0] * 31, 8),  # one dead actor, failing fast
])
def test_lockstep_ranks_get_at_least_90_percent_of_an_uneven_pools_capacity(latencies, consumers):
    pool = VirtualPool(latencies)
    finished, received, plans = run_lockstep(pool, {"run": consumers}, batches_per_consumer=200)
    rate = consumers * 200 / finished["run"]  # the last round waits for its slowest batch: runs long enough
    assert rate >= 0.9 * capacity(latencies), (rate, capacity(latencies))
    for key, specs in plans.items():  # every planned batch exactly once, none dropped
        assert sorted(spec.key for spec, _ in received[key]) == sorted(spec.key for spec in specs)
        assert not any(dropped for _, dropped in received[key])


def test_two_tenants_each_get_half_the_pool():
    latencies = [2.0 if index % 4 == 3 else 1.0 for index in range(32)]
    pool = VirtualPool(latencies)
    finished, _, _ = run_lockstep(pool, {"trial-a": 4, "trial-b": 4}, batches_per_consumer=60)
    half = capacity(latencies) / 2
    for tenant, at in finished.items():
        assert abs(4 * 60 / at - half) <= 0.1 * half, (tenant, 4 * 60 / at, half)


def test_a_hung_actor_costs_one_hedge_and_no_batch():
    limits = DispatchLimits(timeout_floor_s=4.0, timeout_cap_s=20.0)
    pool = VirtualPool([HUNG, 1.0, 1.0, 1.0], limits)
    finished, received, _ = run_lockstep(pool, {"run": 2}, batches_per_consumer=30)
    assert all(not dropped for key in received for _, dropped in received[key])
    assert finished["run"] < 60 / capacity([1.0] * 3) + limits.timeout_cap_s
    assert not pool.made_by[0]
    # the hung actor is passed over once a call on it timed out: at most its two first calls were waited for
    assert pool.policy.actors[0].hung


def test_a_batch_failing_everywhere_is_dropped_after_max_attempts_alone_on_its_actor():
    pool = VirtualPool([1.0] * 4)
    policy = pool.policy
    policy.register(("run", 0), "run", 0.0, budget_bytes=math.inf, max_attempts=3)
    specs = plan_epoch(2, 1, run_seed=0, epoch=0)
    policy.request(("run", 0), specs, 0.0)
    policy.want(("run", 0), [spec.key for spec in specs])
    sends = policy.next_sends(0.0)
    poison = next(send for send in sends if send.spec.key == specs[0].key)
    outcome = policy.failed(poison.call, 0.1, actor_lost=True, reason="segfault")
    assert outcome.delivered is None  # tried again
    retry = next(send for send in policy.next_sends(0.1) if send.spec.key == specs[0].key)
    assert retry.actor != poison.actor and not policy.actors[retry.actor].outstanding - {retry.call}
    assert policy.actors[poison.actor].passed_over_until > 0.1  # the dead actor restarts meanwhile
    policy.failed(retry.call, 0.2, actor_lost=False, reason="ValueError")
    third = next(send for send in policy.next_sends(0.2) if send.spec.key == specs[0].key)
    outcome = policy.failed(third.call, 0.3, actor_lost=False, reason="ValueError")
    assert outcome.delivered is not None and outcome.delivered.dropped
    assert {poison.actor, retry.actor, third.actor} == set(outcome.delivered.failed_on)
    assert [job.spec.key for job in policy.take(("run", 0), 0.3)] == [specs[0].key]


def test_a_consumer_within_its_budget_and_a_silent_one_released():
    limits = DispatchLimits(lease_s=10.0)
    policy = DispatchPolicy(8, limits)
    policy.register(("a", 0), "a", 0.0, budget_bytes=3 * 2**20, max_attempts=3)
    policy.request(("a", 0), plan_epoch(40, 1, run_seed=0, epoch=0), 0.0)
    first = policy.next_sends(0.0)
    assert len(first) == 1  # the size of its batches is not known yet: one, then by measured size
    policy.succeeded(first[0].call, 1.0, nbytes=2**20, busy_seconds=1.0)
    assert len(policy.next_sends(1.0)) == 2  # 1 MiB ready + 2 × 1 MiB estimated = the 3 MiB budget
    policy.register(("b", 0), "b", 1.0, budget_bytes=math.inf, max_attempts=3)
    policy.request(("b", 0), plan_epoch(40, 1, run_seed=1, epoch=0), 1.0)
    assert {s.spec.split for s in policy.next_sends(1.0)} == {"train"} and len(policy.calls) == 16
    running_b = [c for c in policy.calls.values() if policy.jobs[c.job].consumer == ("b", 0)]
    policy.heard_from(("a", 0), 8.0)
    cancelled = policy.expire(12.0)  # b silent since 1 s: its running calls are cancelled, a keeps its own
    assert sorted(cancelled) == sorted(c.id for c in running_b)
    assert set(policy.consumers) == {("a", 0)}


def test_hedge_and_timeout_follow_the_observed_p95():
    limits = DispatchLimits(timeout_floor_s=2.0, timeout_cap_s=100.0, timeout_factor=8.0, hedge_factor=3.0)
    policy = DispatchPolicy(4, limits)
    assert policy.call_timeout_s() == 100.0 and policy.hedge_after_s() is None  # nothing observed yet
    policy.latencies.extend([1.0] * 19 + [1.5])
    assert policy.call_timeout_s() == pytest.approx(8.0)
    assert policy.hedge_after_s() == pytest.approx(3.0)
    policy.latencies.clear()
    policy.latencies.extend([0.01] * 20)
    assert policy.call_timeout_s() == 2.0 and policy.hedge_after_s() == 1.0  # floors
    policy.latencies.extend([50.0] * 200)
    assert policy.call_timeout_s() == 100.0  # cap: the retry budget max_attempts × cap always holds


TRAINING_CONFIGS = sorted(path for path in CONFIGS.glob("*.yaml") if path.name != "sim.yaml")  # sim.yaml: simulate


@pytest.mark.parametrize("config_file", TRAINING_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_gives_up_on_a_batch_well_inside_the_collective_timeout(config_file):
    config = load_train_config(config_file)
    budget = config.pipeline.max_attempts_per_batch * config.pipeline.batch_timeout_s
    assert config.pipeline.retry_budget_s == budget
    assert config.scaling.collective_timeout_s >= 2 * budget, config_file


def test_a_collective_timeout_inside_the_retry_budget_is_refused():
    with pytest.raises(InputError, match="scaling.collective_timeout_s .* must be at least twice"):
        load_train_config(CONFIGS / "quickstart.yaml", ["pipeline.batch_timeout_s=600", "scaling.collective_timeout_s=1800"])


def test_data_wait_is_the_starved_ranks_and_every_actor_has_a_share():
    from afm_ray.train.epoch_metrics import data_metrics

    # rank 1 waited 6 of 10 s; rank 0 none (it waited for rank 1 inside the all-reduce instead)
    shares = [{"loop_wait_seconds": 0.0, "elapsed": 10.0, "max_wait_seconds": 0.0, "actor_0": 3, "actor_seconds_0": 3.0},
              {"loop_wait_seconds": 6.0, "elapsed": 10.0, "max_wait_seconds": 2.5, "actor_0": 1, "actor_seconds_0": 1.0,
               "actor_2": 4, "actor_seconds_2": 8.0}]
    metrics = data_metrics(shares, n_actors=3)
    assert metrics["data_wait_fraction"] == pytest.approx(0.6)
    assert metrics["data_wait_fraction_mean"] == pytest.approx(0.3)
    assert metrics["step_time_over_compute"] == pytest.approx(10.0 / 4.0)
    assert metrics["data_max_wait_seconds"] == 2.5
    assert [metrics[f"sim_actor_{a}_share"] for a in range(3)] == pytest.approx([0.5, 0.0, 0.5])
    assert metrics["sim_actor_2_batches_per_s"] == pytest.approx(0.5) and metrics["sim_actors_used"] == 2


class OneSampleMaker(BatchMaker):
    """A batch maker of one float32 value per sample (what the pool's actors subclass)."""

    def make_batch(self, spec):
        from afm_ray.samples.sample_batch import SampleBatch

        return SampleBatch(spec.samples, x=np.zeros((len(spec.samples), 1, 1, 1, 1), np.float32))


def test_produce_returns_the_batch_with_its_maker_and_a_summary_of_its_size_and_time():
    import os
    import time

    spec = plan_epoch(6, 3, run_seed=0, epoch=0)[0]
    before = time.time()
    summary, batch = OneSampleMaker().produce(spec)
    assert batch.samples.tolist() == spec.samples.tolist() and batch.x.shape == (3, 1, 1, 1, 1)
    assert summary["nbytes"] == batch.nbytes == 3 * 4 + 3 * 8  # x, samples
    assert batch.made_by.pid == os.getpid() and before <= batch.made_by.started_s <= batch.made_by.finished_s
    assert summary["busy_seconds"] == pytest.approx(batch.made_by.finished_s - batch.made_by.started_s)


def test_the_dispatcher_process_imports_neither_torch_nor_the_settings():
    # Every pool starts a dispatcher actor in a fresh worker process: torch (via the settings' model specs)
    # would cost it seconds of CPU at start-up for nothing. The settings stay importable from the package.
    probe = ("import sys, afm_ray.pipeline.dispatcher; "
             "print(sorted(m for m in ('torch', 'afm_ray.models', 'afm_ray.pipeline.settings') if m in sys.modules)); "
             "from afm_ray.pipeline import SampleSettings, StreamStats; print(SampleSettings.__module__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "afm_ray.pipeline.settings"], out
