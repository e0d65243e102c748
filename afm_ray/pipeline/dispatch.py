"""The dispatch policy of the simulation pool: which batch goes to which actor, and when. No Ray here.

:class:`DispatchPolicy` is the bookkeeping and every decision of the pool's dispatcher
(:class:`~afm_ray.pipeline.dispatcher.BatchDispatcher`, the Ray actor that makes the calls); it takes
the time as an argument, so the same code runs under a virtual clock in the tests.

**Work-conserving.** Batches wait in the consumers' queues, not at the actors: an actor is given a
call only while it has fewer than ``actor_queue_depth`` (default 2: one being made, one queued so
that it never waits for the dispatcher). The free slot goes to the actor that would finish the
batch first (its outstanding calls + 1, times its measured seconds per batch), whichever consumer
the batch is for, so any idle actor serves any rank and a slow actor gets work in proportion to
its speed (an idle actor is always preferred to a busy one's queue).

**Fair.** Each consumer belongs to a *tenant* (a training run or a Tune trial; its DDP ranks).
A free slot goes to the tenant holding the fewest actor slots per unit of weight, and within it to
the consumer with the fewest batches pending or waiting to be taken, so ranks that step together
are fed alike. A consumer sends while its batches pending and ready fit its object-store budget
(``budget_bytes``, estimated from its last batch), so actors keep working while the trainer
validates or checkpoints. A consumer that stops heartbeating for ``lease_s`` is released: its
queued work is forgotten and its running calls are cancelled (a stopped Tune trial).

**Stragglers.** A call's limits follow the observed call times (from sending to the result, pool
wide, the last :data:`LATENCY_WINDOW`): after ``hedge_factor × p95`` (at least
``timeout_floor_s / 2``) the batch is sent once more to another actor, and the first result wins;
after ``clamp(timeout_factor × p95, timeout_floor_s, timeout_cap_s)`` the call is given up, its
actor is passed over until it answers, and the batch is tried again elsewhere. A batch is tried at
most ``max_attempts`` times (a hedge is an attempt), so a consumer waits at most
``max_attempts × timeout_cap_s`` for any batch before it is dropped (handed out as ``None``; DDP
ranks stay in step); the training run's collective timeout is checked to be at least twice that
(:class:`~afm_ray.recipe.TrainConfig`).

**Failures.** A call that fails is tried again on an actor that has not failed that batch. An actor
that died (:data:`ACTOR_LOST` errors) or failed three calls in a row is passed over for
``quarantine_s`` (doubling while it keeps failing, at most ten times), then tried again.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field

from afm_ray.samples.plan import BatchSpec
from afm_ray.samples.sample_batch import MadeBy, SampleBatch

LATENCY_WINDOW = 200
"""Completed calls whose durations set the p95 of the straggler limits."""
MIN_LATENCY_SAMPLES = 8
"""Below this many completed calls, no hedging and the timeout is ``timeout_cap_s``."""
FAILURES_BEFORE_QUARANTINE = 3
DEFAULT_BATCH_BYTES = 64 * 2**20
"""Assumed size of a consumer's batch until its first one arrives (a DSH batch of 32 ships ~46 MiB)."""


class BatchMaker:
    """What the simulation pool calls: ``produce(spec)`` → ``(summary, batch)`` of a subclass's ``make_batch(spec)``.

    The small summary (``nbytes``, ``busy_seconds``) is a second return object, so that the pool's
    dispatcher learns a batch's size and making time without fetching the batch itself.
    """

    def make_batch(self, spec: BatchSpec) -> SampleBatch:
        raise NotImplementedError

    def produce(self, spec: BatchSpec) -> tuple[dict, SampleBatch]:
        started = time.time()
        batch = self.make_batch(spec)
        finished = time.time()
        batch.made_by = MadeBy(os.getpid(), started, finished)  # wall clock: a benchmark sees when actors idle
        return {"nbytes": batch.nbytes, "busy_seconds": finished - started}, batch


@dataclass(frozen=True)
class DispatchLimits:
    """The pool's limits (see the module doc): slots per actor, straggler rules (s), quarantine (s), lease (s)."""

    actor_queue_depth: int = 2
    timeout_floor_s: float = 30.0
    timeout_cap_s: float = 300.0
    timeout_factor: float = 8.0
    hedge_factor: float = 3.0
    quarantine_s: float = 30.0
    lease_s: float = 60.0

    def __post_init__(self):
        if self.actor_queue_depth < 1:
            raise ValueError(f"actor_queue_depth must be ≥ 1, got {self.actor_queue_depth}")
        if not 0 < self.timeout_floor_s <= self.timeout_cap_s:
            raise ValueError(f"need 0 < timeout_floor_s ({self.timeout_floor_s:g}) ≤ timeout_cap_s "
                             f"({self.timeout_cap_s:g})")


@dataclass
class Job:
    """One batch of one consumer: its attempts, the calls running it and, once made, the winning call."""

    id: int
    spec: BatchSpec
    consumer: tuple
    attempts: int = 0
    calls: set = field(default_factory=set)
    failed_on: set = field(default_factory=set)
    hedged: bool = False
    result: int | None = None  # the call whose result is handed out
    dropped: bool = False
    nbytes: int = 0
    timeouts: int = 0
    events: list = field(default_factory=list)  # what went wrong on the way, for the consumer's log


@dataclass
class Call:
    id: int
    job: int
    actor: int
    sent_at: float
    abandoned: bool = False  # timed out: its slot stays taken until it answers
    isolated: bool = False  # a batch that failed before: alone on its actor, so it cannot take others down


@dataclass
class Consumer:
    """A consumer's queue (jobs not sent), its jobs by batch key, and its budget."""

    key: tuple
    tenant: str
    budget_bytes: float
    max_in_flight: int | None
    max_attempts: int
    heard_at: float
    queue: deque = field(default_factory=deque)
    jobs: dict = field(default_factory=dict)  # batch key → job id, until taken
    active: set = field(default_factory=set)  # job ids sent at least once and not taken
    wanted: set = field(default_factory=set)  # batch keys the consumer waits for now
    batch_bytes: float = DEFAULT_BATCH_BYTES

    def in_flight(self, jobs: dict) -> tuple[int, float]:
        """(batches sent or ready, their bytes: ready ones as measured, the others as estimated)."""
        nbytes = sum(jobs[job].nbytes if jobs[job].result is not None else self.batch_bytes for job in self.active)
        return len(self.active), nbytes

    def may_send(self, jobs: dict) -> bool:
        count, nbytes = self.in_flight(jobs)
        if count == 0:
            return True
        if self.max_in_flight is not None and count >= self.max_in_flight:
            return False
        return nbytes + self.batch_bytes <= self.budget_bytes


@dataclass
class ActorState:
    outstanding: set = field(default_factory=set)  # call ids
    seconds_per_batch: float | None = None  # moving average of the actor's own making time
    failures_in_a_row: int = 0
    passed_over_until: float = 0.0
    hung: bool = False
    batches: int = 0
    busy_seconds: float = 0.0


@dataclass(frozen=True)
class Send:
    call: int
    actor: int
    spec: BatchSpec


@dataclass(frozen=True)
class Outcome:
    """What a finished call means: ``delivered`` (a job became ready), ``cancel`` (calls no longer needed)."""

    delivered: Job | None = None
    cancel: tuple[int, ...] = ()


class DispatchPolicy:
    """Every decision of the pool's dispatcher over ``n_actors`` actors; times are seconds on any one clock."""

    def __init__(self, n_actors: int, limits: DispatchLimits = DispatchLimits(), seed: int = 0):
        if n_actors < 1:
            raise ValueError("a simulation pool needs at least one actor")
        self.limits = limits
        self.actors = [ActorState() for _ in range(n_actors)]
        self.consumers: dict[tuple, Consumer] = {}
        self.jobs: dict[int, Job] = {}
        self.calls: dict[int, Call] = {}
        self.tenant_weight: dict[str, float] = {}
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._retries: deque[int] = deque()  # job ids to send before any queued work
        self._random = random.Random(seed)
        self._next_id = 0

    # -- consumers ---------------------------------------------------------------------------------
    def register(self, key: tuple, tenant: str, now: float, budget_bytes: float, max_in_flight: int | None = None,
                 max_attempts: int = 3, weight: float = 1.0) -> tuple[int, ...]:
        """Add consumer ``key`` (replacing one of the same key: a restarted rank); returns calls to cancel."""
        cancel = self.release(key) if key in self.consumers else ()
        self.consumers[key] = Consumer(key, tenant, budget_bytes, max_in_flight, max_attempts, now)
        self.tenant_weight[tenant] = weight
        return cancel

    def heard_from(self, key: tuple, now: float) -> bool:
        consumer = self.consumers.get(key)
        if consumer is not None:
            consumer.heard_at = now
        return consumer is not None

    def request(self, key: tuple, specs, now: float) -> None:
        """Queue ``specs`` for consumer ``key`` (a batch already queued, made or ready is not queued twice)."""
        consumer = self.consumers[key]
        consumer.heard_at = now
        for spec in specs:
            if spec.key not in consumer.jobs:
                job = Job(self._new_id(), spec, key)
                self.jobs[job.id] = job
                consumer.jobs[spec.key] = job.id
                consumer.queue.append(job.id)

    def want(self, key: tuple, batch_keys) -> None:
        """Consumer ``key`` now waits for ``batch_keys`` (what :meth:`take` hands over)."""
        self.consumers[key].wanted = set(batch_keys)

    def take(self, key: tuple, now: float) -> list[Job]:
        """The ready (made or dropped) jobs that consumer ``key`` wants, handed over and forgotten."""
        consumer = self.consumers[key]
        consumer.heard_at = now
        taken = [self.jobs[job_id] for job_id in consumer.active
                 if self.jobs[job_id].spec.key in consumer.wanted
                 and (self.jobs[job_id].result is not None or self.jobs[job_id].dropped)]
        for job in taken:
            consumer.active.discard(job.id)
            consumer.wanted.discard(job.spec.key)
            del consumer.jobs[job.spec.key]
            del self.jobs[job.id]
        return taken

    def release(self, key: tuple) -> tuple[int, ...]:
        """Forget consumer ``key`` and its jobs; returns its calls still running (to cancel)."""
        consumer = self.consumers.pop(key, None)
        if consumer is None:
            return ()
        cancel = []
        for job_id in consumer.jobs.values():
            job = self.jobs.pop(job_id)
            cancel.extend(call for call in job.calls if not self.calls[call].abandoned)
        if not any(c.tenant == consumer.tenant for c in self.consumers.values()):
            self.tenant_weight.pop(consumer.tenant, None)
        self._retries = deque(job for job in self._retries if job in self.jobs)
        return tuple(cancel)

    def expire(self, now: float) -> tuple[int, ...]:
        """Release consumers not heard from for ``lease_s``; returns their running calls (to cancel)."""
        silent = [key for key, c in self.consumers.items() if now - c.heard_at > self.limits.lease_s]
        return tuple(call for key in silent for call in self.release(key))

    # -- sending -----------------------------------------------------------------------------------
    def next_sends(self, now: float) -> list[Send]:
        """Fill every free actor slot with the most deserving batch (see the module doc)."""
        sends: list[Send] = []
        blocked: set = set()  # consumers whose head job has no allowed actor free now
        slots = self._tenant_slots()
        known = sorted(s.seconds_per_batch for s in self.actors if s.seconds_per_batch is not None)
        typical = known[len(known) // 2] if known else 1.0
        while True:
            free = [a for a in range(len(self.actors)) if self._has_slot(a, now)]
            if not free:
                return sends
            job = self._next_retry(free) if self._retries else None
            if job is None:
                consumer = self._pick_consumer(blocked, slots)
                if consumer is None:
                    return sends
                job = self.jobs[consumer.queue[0]]
                if not self._allowed(job, free):
                    blocked.add(consumer.key)
                    continue
                consumer.queue.popleft()
            sends.append(self._send(job, self._pick_actor(self._allowed(job, free), typical), now))
            tenant = self.consumers[job.consumer].tenant
            slots[tenant] = slots.get(tenant, 0) + 1

    def _has_slot(self, actor: int, now: float) -> bool:
        state = self.actors[actor]
        return (len(state.outstanding) < self.limits.actor_queue_depth and not state.hung
                and state.passed_over_until <= now and not any(self.calls[c].isolated for c in state.outstanding))

    def _allowed(self, job: Job, free: list[int]) -> list[int]:
        if job.failed_on:  # a batch that may kill its actor goes where nothing is queued behind it
            free = [a for a in free if not self.actors[a].outstanding]
        running_on = {self.calls[c].actor for c in job.calls}
        fresh = [a for a in free if a not in job.failed_on and a not in running_on]
        if fresh:
            return fresh
        everyone_failed = len(job.failed_on | running_on) >= len(self.actors)
        return [a for a in free if a not in running_on] if everyone_failed else []

    def _next_retry(self, free: list[int]) -> Job | None:
        for job_id in list(self._retries):
            job = self.jobs.get(job_id)
            if job is None or job.result is not None or job.dropped:
                self._retries.remove(job_id)
            elif self._allowed(job, free):
                self._retries.remove(job_id)
                return job
        return None

    def _tenant_slots(self) -> dict[str, int]:
        """Actor slots each tenant's calls hold now."""
        slots: dict[str, int] = {}
        for call in self.calls.values():
            job = self.jobs.get(call.job)
            if job is not None and not call.abandoned:
                tenant = self.consumers[job.consumer].tenant
                slots[tenant] = slots.get(tenant, 0) + 1
        return slots

    def _pick_consumer(self, blocked: set, slots: dict[str, int]) -> Consumer | None:
        candidates = [c for c in self.consumers.values()
                      if c.queue and c.key not in blocked and c.may_send(self.jobs)]
        if not candidates:
            return None

        def rank(consumer: Consumer):
            share = slots.get(consumer.tenant, 0) / self.tenant_weight.get(consumer.tenant, 1.0)
            return share, consumer.in_flight(self.jobs)[0], self._random.random()

        return min(candidates, key=rank)

    def _pick_actor(self, free: list[int], typical: float) -> int:
        """``typical``: seconds per batch assumed for an actor not measured yet (the pool's median)."""

        def finish(actor: int):  # an idle actor first; then the one that would finish the batch soonest
            state = self.actors[actor]
            return (bool(state.outstanding), (len(state.outstanding) + 1) * (state.seconds_per_batch or typical),
                    self._random.random())

        return min(free, key=finish)

    def _send(self, job: Job, actor: int, now: float) -> Send:
        call = Call(self._new_id(), job.id, actor, now, isolated=bool(job.failed_on))
        self.calls[call.id] = call
        job.calls.add(call.id)
        job.attempts += 1
        self.consumers[job.consumer].active.add(job.id)
        self.actors[actor].outstanding.add(call.id)
        return Send(call.id, actor, job.spec)

    # -- results -----------------------------------------------------------------------------------
    def succeeded(self, call_id: int, now: float, nbytes: int, busy_seconds: float) -> Outcome:
        """Call ``call_id`` returned a batch of ``nbytes`` that its actor made in ``busy_seconds``."""
        call, actor = self._finish(call_id)
        if call is None:
            return Outcome()
        self.latencies.append(now - call.sent_at)
        actor.hung = False
        actor.failures_in_a_row = 0
        actor.batches += 1
        actor.busy_seconds += busy_seconds
        actor.seconds_per_batch = (busy_seconds if actor.seconds_per_batch is None
                                   else 0.8 * actor.seconds_per_batch + 0.2 * busy_seconds)
        job = self.jobs.get(call.job)
        if job is None or job.result is not None or job.dropped:
            return Outcome()  # its consumer is gone, or another attempt won
        job.calls.discard(call_id)
        job.result, job.nbytes = call_id, nbytes
        consumer = self.consumers[job.consumer]
        consumer.batch_bytes = float(nbytes)
        cancel = tuple(other for other in job.calls if not self.calls[other].abandoned)
        return Outcome(delivered=job, cancel=cancel)

    def failed(self, call_id: int, now: float, actor_lost: bool, reason: str = "") -> Outcome:
        """Call ``call_id`` raised ``reason``; ``actor_lost``: its actor (or node, or object) is gone."""
        call, actor = self._finish(call_id)
        if call is None:
            return Outcome()
        job = self.jobs.get(call.job)
        if job is not None and job.result is None:
            job.events.append(f"failed on simulation actor {call.actor}: {reason}")
        actor.hung = False  # it answered
        actor.failures_in_a_row += 1
        if actor_lost or actor.failures_in_a_row >= FAILURES_BEFORE_QUARANTINE:
            extra = max(0, actor.failures_in_a_row - FAILURES_BEFORE_QUARANTINE)
            actor.passed_over_until = now + self.limits.quarantine_s * 2 ** min(extra, 10)
        return self._retry_or_drop(call)

    def cancelled(self, call_id: int) -> None:
        """Call ``call_id`` was cancelled by us (another attempt won, or its consumer left): no one's fault."""
        self._finish(call_id)

    def _finish(self, call_id: int) -> tuple[Call | None, ActorState | None]:
        call = self.calls.pop(call_id, None)
        if call is None:
            return None, None
        actor = self.actors[call.actor]
        actor.outstanding.discard(call_id)
        job = self.jobs.get(call.job)
        if job is not None:
            job.calls.discard(call_id)
        return call, actor

    def _retry_or_drop(self, call: Call) -> Outcome:
        job = self.jobs.get(call.job)
        if job is None or job.result is not None or job.dropped:
            return Outcome()
        job.failed_on.add(call.actor)
        if job.calls:  # a hedge is still running: it may yet deliver
            return Outcome()
        if job.attempts < self.consumers[job.consumer].max_attempts:
            self._retries.append(job.id)
            return Outcome()
        job.dropped = True
        return Outcome(delivered=job)

    # -- stragglers --------------------------------------------------------------------------------
    def p95_seconds(self) -> float | None:
        if len(self.latencies) < MIN_LATENCY_SAMPLES:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    def call_timeout_s(self) -> float:
        p95 = self.p95_seconds()
        limits = self.limits
        if p95 is None:
            return limits.timeout_cap_s
        return min(limits.timeout_cap_s, max(limits.timeout_floor_s, limits.timeout_factor * p95))

    def hedge_after_s(self) -> float | None:
        p95 = self.p95_seconds()
        if p95 is None:
            return None
        return min(self.call_timeout_s(), max(self.limits.timeout_floor_s / 2, self.limits.hedge_factor * p95))

    def overdue(self, now: float) -> tuple[list[Job], list[Job]]:
        """Hedge slow calls and give up on timed-out ones: returns (jobs hedged, jobs dropped)."""
        timeout, hedge_after = self.call_timeout_s(), self.hedge_after_s()
        hedged, dropped = [], []
        for call in [c for c in self.calls.values() if not c.abandoned]:
            age = now - call.sent_at
            job = self.jobs.get(call.job)
            if job is None or job.result is not None or job.dropped:
                if age >= timeout:  # no longer needed, but its actor has not answered: it is hung
                    call.abandoned = True
                    self.actors[call.actor].hung = True
                continue
            if age >= timeout:
                job.timeouts += 1
                job.events.append(f"has not come back from simulation actor {call.actor} after {age:.0f} s "
                                  f"(call timeout {timeout:.0f} s)")
                call.abandoned = True
                self.actors[call.actor].hung = True
                job.calls.discard(call.id)
                outcome = self._retry_or_drop(call)
                if outcome.delivered is not None:
                    dropped.append(job)
            elif (hedge_after is not None and age >= hedge_after and not job.hedged
                  and job.attempts < self.consumers[job.consumer].max_attempts):
                job.hedged = True
                job.events.append(f"is slow on simulation actor {call.actor} ({age:.1f} s, hedge after "
                                  f"{hedge_after:.1f} s): sent to another actor too")
                self._retries.append(job.id)
                hedged.append(job)
        return hedged, dropped

    def next_deadline(self, now: float) -> float:
        """When :meth:`overdue` next has something to do (or a lease may expire)."""
        timeout, hedge_after = self.call_timeout_s(), self.hedge_after_s()
        deadlines = [now + self.limits.lease_s / 4]
        for call in self.calls.values():
            if call.abandoned:
                continue
            deadlines.append(call.sent_at + timeout)
            job = self.jobs.get(call.job)
            live = job is not None and job.result is None and not job.dropped
            if live and hedge_after is not None and not job.hedged:
                deadlines.append(call.sent_at + hedge_after)
        return max(now, min(deadlines))

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id


def batch_name(spec: BatchSpec) -> str:
    """How a batch is named in the log: split, epoch, index and size."""
    return f"({spec.split}, epoch {spec.epoch}, #{spec.index}, {len(spec.samples)} samples)"
