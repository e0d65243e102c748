"""The simulation pool's dispatcher: one async Ray actor between all consumers and all simulation actors.

Consumers (training ranks of every run or Tune trial sharing the pool, or the driver building a
fixed set) :meth:`~BatchDispatcher.register`, :meth:`~BatchDispatcher.request` batches and
:meth:`~BatchDispatcher.take` the finished ones; the dispatcher makes every ``produce`` call to
the simulation actors as :class:`~afm_ray.pipeline.dispatch.DispatchPolicy` decides. It calls the
actors, so it owns the batches: a batch survives the death of the actor that made it, and the
dispatcher hands it over as a reference (the consumer fetches it from the actor's node; the
bytes never pass through the dispatcher). The dispatcher restarts after a crash with no state;
its consumers then register again and re-request what they had not received (see
:class:`~afm_ray.pipeline.stream.BatchStream`).
"""

from __future__ import annotations

import asyncio
import logging
import time

import ray
from ray.exceptions import (ActorUnschedulableError, NodeDiedError, ObjectLostError, RayActorError,
                            TaskCancelledError)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from afm_ray.pipeline.dispatch import DispatchLimits, DispatchPolicy, Job, Outcome, batch_name

try:  # Ray ≥ 2.34: a call to an actor that is restarting
    from ray.exceptions import ActorUnavailableError
except ImportError:  # pragma: no cover
    ActorUnavailableError = RayActorError

log = logging.getLogger("afm_ray.pipeline")
ACTOR_LOST = (RayActorError, ActorUnavailableError, ActorUnschedulableError, NodeDiedError, ObjectLostError)
"""Errors that say the actor (or its node, or the object it made) is gone, rather than that the batch failed."""


class BatchDispatcher:
    """Async Ray actor owning every call to ``actors`` (see the module doc); create with :func:`start_dispatcher`."""

    def __init__(self, actors: list, limits: DispatchLimits, seed: int = 0):
        # named actors are looked up again after a restart; handles in a constructor could be lost by then
        self.actors = [ray.get_actor(actor) if isinstance(actor, str) else actor for actor in actors]
        self.policy = DispatchPolicy(len(self.actors), limits, seed)
        self.refs: dict[int, tuple] = {}  # call id → (summary ref, batch ref)
        self.summaries: dict[int, dict] = {}  # call id → summary of a made batch not taken yet
        self._changed: dict[tuple, asyncio.Event] = {}  # consumer → set when one of its batches is ready
        self._watchdog: asyncio.Task | None = None

    # -- consumers ---------------------------------------------------------------------------------
    async def register(self, key: tuple, tenant: str, budget_bytes: float, max_in_flight: int | None,
                       max_attempts: int, weight: float = 1.0) -> None:
        self._start_watchdog()
        self._cancel(self.policy.register(key, tenant, time.monotonic(), budget_bytes, max_in_flight,
                                          max_attempts, weight))

    async def request(self, key: tuple, specs: list) -> bool:
        """Queue ``specs`` for consumer ``key``; False if it is not registered (this dispatcher restarted)."""
        if key not in self.policy.consumers:
            return False
        self.policy.request(key, specs, time.monotonic())
        self._pump()
        return True

    async def want(self, key: tuple, batch_keys: list) -> bool:
        """Consumer ``key`` now waits for ``batch_keys``; False if it is not registered."""
        if key not in self.policy.consumers:
            return False
        self.policy.want(key, batch_keys)
        return True

    async def take(self, key: tuple, wait_s: float, wanted: list | None = None) -> list | None:
        """The finished batches consumer ``key`` wants (:meth:`want`) once there is one, or ``[]`` after ``wait_s``.

        ``wanted``: batch keys to :meth:`want` first (one call per training step instead of two).

        Each is ``(spec, summary, [batch ref], job)`` (the ref in a list, so that the consumer borrows
        it rather than waiting for the batch here); a dropped batch has ``None`` for summary and ref.
        ``None``: consumer ``key`` is not registered (this dispatcher restarted).
        """
        deadline = time.monotonic() + wait_s
        if wanted is not None and key in self.policy.consumers:
            self.policy.want(key, wanted)
        while True:
            if key not in self.policy.consumers:
                return None
            jobs = self.policy.take(key, time.monotonic())
            if jobs:
                self._pump()  # taking frees budget
                return [self._hand_over(job) for job in jobs]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            changed = self._changed.setdefault(key, asyncio.Event())
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
            changed.clear()

    async def heartbeat(self, key: tuple) -> bool:
        return self.policy.heard_from(key, time.monotonic())

    async def release(self, key: tuple) -> None:
        self._cancel(self.policy.release(key))
        self._pump()

    async def actor_stats(self) -> list[dict]:
        """Per simulation actor: batches made, seconds spent making them, seconds per batch, passed over now."""
        now = time.monotonic()
        return [{"batches": a.batches, "busy_seconds": a.busy_seconds, "seconds_per_batch": a.seconds_per_batch,
                 "passed_over": a.hung or a.passed_over_until > now} for a in self.policy.actors]

    # -- calls -------------------------------------------------------------------------------------
    def _pump(self) -> None:
        for send in self.policy.next_sends(time.monotonic()):
            summary_ref, batch_ref = self.actors[send.actor].produce.options(num_returns=2).remote(send.spec)
            self.refs[send.call] = (summary_ref, batch_ref)
            asyncio.get_running_loop().create_task(self._await_call(send.call, send.actor, summary_ref))

    async def _await_call(self, call_id: int, actor: int, summary_ref) -> None:
        try:
            summary = await summary_ref
        except TaskCancelledError:
            self.policy.cancelled(call_id)
            self.refs.pop(call_id, None)
            outcome = Outcome()
        except Exception as error:  # noqa: BLE001 — any Ray error: the batch is tried again elsewhere
            self.refs.pop(call_id, None)
            outcome = self.policy.failed(call_id, time.monotonic(), isinstance(error, ACTOR_LOST), _reason(error))
        else:
            outcome = self.policy.succeeded(call_id, time.monotonic(), int(summary["nbytes"]),
                                            float(summary["busy_seconds"]))
            if outcome.delivered is not None:
                self.summaries[call_id] = {**summary, "actor": actor}
            else:
                self.refs.pop(call_id, None)
        self._cancel(outcome.cancel)
        self._pump()
        if outcome.delivered is not None:
            self._notify(outcome.delivered.consumer)

    def _hand_over(self, job: Job) -> tuple:
        if job.dropped:
            return job.spec, None, None, _job_record(job)
        _, batch_ref = self.refs.pop(job.result)
        return job.spec, self.summaries.pop(job.result), [batch_ref], _job_record(job)

    def _cancel(self, call_ids) -> None:
        for call_id in call_ids:
            refs = self.refs.get(call_id)
            if refs is not None:
                ray.cancel(refs[0])  # a queued call never runs; a running one finishes and is ignored

    def _notify(self, consumer: tuple) -> None:
        """Wake ``consumer``'s :meth:`take` (only its own: the others have nothing new)."""
        event = self._changed.get(consumer)
        if event is not None:
            event.set()

    # -- stragglers and leases ---------------------------------------------------------------------
    def _start_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            now = time.monotonic()
            await asyncio.sleep(max(0.05, self.policy.next_deadline(now) - now))
            now = time.monotonic()
            hedged, dropped = self.policy.overdue(now)
            for job in hedged:
                log.warning("batch %s %s", batch_name(job.spec), job.events[-1])
            for job in dropped:
                log.error("batch %s dropped after %d attempts: %s", batch_name(job.spec), job.attempts, job.events[-1])
            self._cancel(self.policy.expire(now))
            self._pump()
            for job in dropped:
                self._notify(job.consumer)


def _job_record(job: Job) -> dict:
    return {"attempts": job.attempts, "timeouts": job.timeouts, "hedged": job.hedged, "dropped": job.dropped,
            "events": list(job.events)}


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1][:300] if text else type(error).__name__


def start_dispatcher(actors: list, limits: DispatchLimits, seed: int = 0, name: str | None = None):
    """A :class:`BatchDispatcher` for ``actors`` on this node (no CPU reserved).

    ``actors``: the simulation actors' names (then the dispatcher is restarted after a crash, and
    finds them again), or their handles (then it is not: a stream of its own, for one job).
    """
    restartable = all(isinstance(actor, str) for actor in actors)
    options = {"num_cpus": 0, "max_restarts": -1 if restartable else 0, "max_task_retries": 0, "max_concurrency": 1000,
               "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                     soft=True)}
    if name is not None:
        options["name"] = name
    return ray.remote(BatchDispatcher).options(**options).remote(actors, limits, seed)
