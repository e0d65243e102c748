"""Pulling batches from the simulation actors: every actor busy, bounded memory, failures finite.

A :class:`BatchStream` belongs to one consumer (a Ray Train rank, or the driver building a fixed
set). It keeps at most ``max_in_flight`` batches outstanding (calls pending plus results not yet
handed out), so the object store holds at most ``consumers × max_in_flight`` batches and a slow
trainer simply stops asking (backpressure).

**Which actor.** Consumer ``c`` of ``W`` owns the *home* actors ``c, c + W, c + 2W, …`` (with fewer
actors than consumers, actor ``c mod N``, shared). A home actor receives calls from its owner
alone, so the owner's count of its outstanding calls *is* the actor's global load: each call goes
to the home actor with the fewest, ties broken at random. (When ``W`` does not divide ``N``, the
``N mod W`` last actors are shared by all consumers.) Other actors are used only when every
home actor is failing, has failed this batch, or has timed out. Where ``max_in_flight`` is not
given it is ``max(4, 2 × ⌈N / W⌉)``: every home actor has one batch queued behind the one it is making.
(Before, every consumer balanced over *all* actors by its own counter, starting at zero with ties
to the lowest index, so all consumers piled onto the same first actors: 4 of 32 actors used.)

**Failures are finite.** The consumer calls the actor, so it owns the returned object: a batch
survives the death of the actor that made it. A call that fails (the actor died, or raised) is
sent again to an actor that has not failed it, at most ``max_attempts`` times in all; a call
that has not returned after ``batch_timeout_s`` is re-sent elsewhere with a warning naming the
actor and the batch (if the slow call still returns first, its result is used). A batch that
fails every attempt is *dropped*: reported, counted, and handed out as ``(spec, None)`` so that
the consumer can keep DDP ranks in step. Samples an actor skipped (see
:meth:`~afm_ray.batches.BatchFactory.make_batch`) are logged and counted.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import ray
from ray.exceptions import (ActorUnschedulableError, GetTimeoutError, NodeDiedError, ObjectLostError, RayActorError,
                            RayError)

from afm_ray.plan import BatchSpec

try:  # Ray ≥ 2.34: a call to an actor that is restarting
    from ray.exceptions import ActorUnavailableError
except ImportError:  # pragma: no cover
    ActorUnavailableError = RayActorError

log = logging.getLogger("afm_ray.pipeline")
# errors that say the actor (or its node, or the object it made) is gone, rather than that the batch failed
ACTOR_LOST = (RayActorError, ActorUnavailableError, ActorUnschedulableError, NodeDiedError, ObjectLostError)
MIN_DEFAULT_IN_FLIGHT = 4
SUSPECT_SECONDS = 30.0
"""How long an actor that died is passed over (it restarts meanwhile); a hung one stays so until it answers."""


@dataclass
class StreamStats:
    """What a consumer received and waited for.

    ``wait_seconds``: blocked on data; ``resent``: calls sent again after a failure or timeout;
    ``timed_out``: calls given up on after ``batch_timeout_s``; ``dropped_batches``: batches that
    failed every attempt; ``samples_skipped``: samples an actor could not make;
    ``per_actor_batches``: batches delivered by each actor index.
    """

    wait_seconds: float = 0.0
    batches: int = 0
    samples: int = 0
    resent: int = 0
    timed_out: int = 0
    dropped_batches: int = 0
    samples_skipped: int = 0
    produce_seconds: float = 0.0
    per_actor_batches: dict[int, int] = field(default_factory=dict)


@dataclass
class _Call:
    spec: BatchSpec
    actor: int
    sent_at: float


def home_actors(n_actors: int, consumer: int, consumers: int) -> list[int]:
    """Actor indices ``consumer`` of ``consumers`` sends work to (see the module doc).

    Each consumer owns ``n_actors // consumers`` actors; the ``n_actors % consumers`` left over are
    shared by all, so that no rank (and with DDP, no step) is fed by fewer actors than the others.
    """
    if n_actors < consumers:
        return [consumer % n_actors]
    owned = n_actors // consumers * consumers
    return list(range(consumer, owned, consumers)) + list(range(owned, n_actors))


def default_in_flight(n_actors: int, consumers: int) -> int:
    """Two batches per home actor (one being made, one queued behind it), and at least 4."""
    return max(MIN_DEFAULT_IN_FLIGHT, 2 * math.ceil(n_actors / consumers))


class BatchStream:
    """Batches of ``specs`` from ``actors`` for consumer ``consumer`` of ``consumers``.

    Iterating yields ``(spec, batch)`` for the specs given here, in completion order. For several
    epochs, :meth:`request` queues specs (the next epoch's, while this one is still running) and
    :meth:`results` yields exactly the results of the specs it is given. ``batch`` is ``None`` for
    a dropped batch.
    """

    def __init__(self, actors: list, specs: Iterable[BatchSpec] = (), max_in_flight: int | None = None, *,
                 consumer: int = 0, consumers: int = 1, batch_timeout_s: float = 600.0, max_attempts: int = 3,
                 seed: int = 0):
        if not actors:
            raise ValueError("BatchStream needs at least one simulation actor")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be ≥ 1, got {max_in_flight}")
        if not 0 <= consumer < consumers:
            raise ValueError(f"consumer {consumer} is not one of {consumers}")
        self.actors = list(actors)
        self.home = home_actors(len(self.actors), consumer, consumers)
        self.max_in_flight = max_in_flight or default_in_flight(len(self.actors), consumers)
        if self.max_in_flight < len(self.home):
            log.warning("%d batches in flight for %d simulation actors of this consumer: at most %d of them are "
                        "busy at a time (leave pipeline.max_in_flight_per_worker unset for 2 per actor)",
                        self.max_in_flight, len(self.home), self.max_in_flight)
        self.batch_timeout_s = batch_timeout_s
        self.max_attempts = max_attempts
        self.stats = StreamStats()
        self._random = random.Random(hash((seed, consumer, consumers)))
        self._queue: deque[BatchSpec] = deque()
        self._pending: dict = {}  # ref → _Call
        self._abandoned: dict = {}  # ref → _Call: timed out, re-sent; a late success is still used
        self._ready: dict = {}  # key → (spec, batch | None), results not handed out yet
        self._known: set = set()
        self._attempts: dict = {}  # key → calls sent
        self._failed_on: dict = {}  # key → actor indices that failed or timed out on it
        self._outstanding = [0] * len(self.actors)
        self._suspect: dict[int, float] = {}  # actor → until when it is passed over (inf: hung, until it answers)
        self._initial = list(specs)
        self.request(self._initial)

    # -- public ----------------------------------------------------------------------------------
    def request(self, specs: Iterable[BatchSpec]) -> None:
        """Queue ``specs`` (those not queued yet) behind the work already queued."""
        for spec in specs:
            if spec.key not in self._known:
                self._known.add(spec.key)
                self._queue.append(spec)

    def results(self, specs: Iterable[BatchSpec]) -> Iterator[tuple[BatchSpec, dict | None]]:
        """``(spec, batch)`` once for each of ``specs`` (queued if needed), in completion order."""
        specs = list(specs)
        self.request(specs)
        wanted = {spec.key for spec in specs}
        while wanted:
            for key in [key for key in wanted if key in self._ready]:
                wanted.discard(key)
                self._known.discard(key)
                spec, batch, actor = self._ready.pop(key)
                self._count(spec, batch, actor)
                yield spec, batch
            if wanted:
                self._fill(wanted)
                self._receive_one()

    def __iter__(self) -> Iterator[tuple[BatchSpec, dict | None]]:
        return self.results(self._initial)

    # -- dispatch --------------------------------------------------------------------------------
    def _fill(self, wanted: set) -> None:
        while self._queue and (len(self._pending) + len(self._ready) < self.max_in_flight or not self._pending):
            self._send(self._queue.popleft())
        # the budget may be full of later work (the next epoch) while a re-queued batch of this one waits
        if not any(call.spec.key in wanted for call in self._pending.values()):
            waiting = next((spec for spec in self._queue if spec.key in wanted), None)
            if waiting is not None:
                self._queue.remove(waiting)
                self._send(waiting)

    def _choose_actor(self, key) -> int:
        failed = self._failed_on.get(key, set())
        everyone = range(len(self.actors))
        now = time.monotonic()
        suspect = {actor for actor, until in self._suspect.items() if until > now}
        for pool in ([a for a in self.home if a not in failed and a not in suspect],
                     [a for a in everyone if a not in failed and a not in suspect],
                     [a for a in everyone if a not in failed],
                     list(everyone)):
            if pool:
                lowest = min(self._outstanding[a] for a in pool)
                return self._random.choice([a for a in pool if self._outstanding[a] == lowest])
        raise AssertionError("unreachable: there is at least one actor")

    def _send(self, spec: BatchSpec) -> None:
        actor = self._choose_actor(spec.key)
        self._attempts[spec.key] = self._attempts.get(spec.key, 0) + 1
        self._pending[self.actors[actor].make_batch.remote(spec)] = _Call(spec, actor, time.monotonic())
        self._outstanding[actor] += 1

    # -- receive ---------------------------------------------------------------------------------
    def _receive_one(self) -> None:
        if not self._pending and not self._abandoned:
            raise RuntimeError("BatchStream: results wanted but nothing queued or pending (a bug: please report)")
        started = time.perf_counter()
        try:
            oldest = min((call.sent_at for call in self._pending.values()), default=time.monotonic())
            timeout = max(0.0, oldest + self.batch_timeout_s - time.monotonic())
            ready, _ = ray.wait([*self._pending, *self._abandoned], num_returns=1, timeout=timeout)
            if not ready:
                self._time_out_overdue()
                return
            ref = ready[0]
            late = ref in self._abandoned
            call = self._abandoned.pop(ref) if late else self._pending.pop(ref)
            self._outstanding[call.actor] -= 1
            try:
                batch = ray.get(ref, timeout=self.batch_timeout_s)
            except (RayError, GetTimeoutError) as error:
                if not late:
                    self._failed(call, error)
                return
            self._suspect.pop(call.actor, None)
            if late:
                self._late_success(call, batch)
            else:
                self._deliver(call, batch)
        finally:
            self.stats.wait_seconds += time.perf_counter() - started

    def _deliver(self, call: _Call, batch: dict) -> None:
        key = call.spec.key
        if key in self._ready or key not in self._known:
            return  # already handed out (a late and a re-sent copy both finished)
        self._forget(key)
        self._ready[key] = (call.spec, batch, call.actor)

    def _count(self, spec: BatchSpec, batch: dict | None, actor: int | None) -> None:
        """Statistics of what is handed out (so a prefetched batch counts in the epoch that uses it)."""
        if batch is None:
            self.stats.dropped_batches += 1
            return
        stats = self.stats
        stats.batches += 1
        stats.samples += len(batch.get("samples", spec.samples))
        stats.produce_seconds += float(batch.get("produce_seconds", 0.0))
        stats.per_actor_batches[actor] = stats.per_actor_batches.get(actor, 0) + 1
        skipped = batch.get("skipped", ())
        stats.samples_skipped += len(skipped)
        for line in skipped:
            log.warning("skipped %s (simulation actor %d)", line, actor)

    def _late_success(self, call: _Call, batch: dict) -> None:
        """A timed-out call returned after all: use it unless a re-sent copy already did."""
        key = call.spec.key
        if key in self._ready or key not in self._known:
            return
        for spec in list(self._queue):
            if spec.key == key:
                self._queue.remove(spec)
        for ref, pending in list(self._pending.items()):
            if pending.spec.key == key:
                self._abandoned[ref] = self._pending.pop(ref)
        self._deliver(call, batch)

    def _failed(self, call: _Call, error: Exception) -> None:
        if isinstance(error, ACTOR_LOST):
            self._suspect[call.actor] = max(self._suspect.get(call.actor, 0.0), time.monotonic() + SUSPECT_SECONDS)
        reason = str(error).strip().splitlines()[-1][:300] if str(error).strip() else type(error).__name__
        self._retry_or_drop(call, f"failed on simulation actor {call.actor}: {reason}")

    def _time_out_overdue(self) -> None:
        now = time.monotonic()
        for ref, call in list(self._pending.items()):
            if now - call.sent_at >= self.batch_timeout_s:
                self.stats.timed_out += 1
                self._abandoned[ref] = self._pending.pop(ref)
                self._suspect[call.actor] = math.inf
                log.warning("batch %s has not come back from simulation actor %d after %.0f s; sending it "
                            "to another actor", _name(call.spec), call.actor, now - call.sent_at)
                self._retry_or_drop(call, f"timed out on simulation actor {call.actor}")

    def _retry_or_drop(self, call: _Call, what: str) -> None:
        key = call.spec.key
        self._failed_on.setdefault(key, set()).add(call.actor)
        if self._attempts.get(key, 0) < self.max_attempts:
            self.stats.resent += 1
            log.warning("batch %s %s; trying again (attempt %d of %d)", _name(call.spec), what,
                        self._attempts[key] + 1, self.max_attempts)
            self._queue.appendleft(call.spec)
            return
        log.error("batch %s dropped: %s, after %d attempts on simulation actors %s", _name(call.spec), what,
                  self._attempts[key], sorted(self._failed_on[key]))
        self._forget(key)
        self._ready[key] = (call.spec, None, None)

    def _forget(self, key) -> None:
        self._attempts.pop(key, None)
        self._failed_on.pop(key, None)


def _name(spec: BatchSpec) -> str:
    return f"({spec.split}, epoch {spec.epoch}, #{spec.index}, {len(spec.samples)} samples)"
