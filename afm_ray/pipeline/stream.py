"""A consumer's view of the simulation pool: the batches it asked for, exactly once, with bounded memory.

A :class:`BatchStream` belongs to one consumer (a Ray Train rank, or the driver building a fixed
set). It registers with the pool's :class:`~afm_ray.pipeline.dispatcher.BatchDispatcher` under a
*tenant* (its training run or Tune trial) and a consumer index, queues batches there
(:meth:`BatchStream.request`) and takes them as they are made (:meth:`BatchStream.results`). The
dispatcher decides which actor makes what and keeps making this consumer's queued batches while
it validates or checkpoints, within ``budget_mib`` of object store (see
:mod:`afm_ray.pipeline.dispatch`): the memory bound is by construction.

A background thread heartbeats, so a consumer that dies (a stopped Tune trial, a killed rank)
has its queued work forgotten and its running calls cancelled after the dispatcher's lease. If
the dispatcher restarts, the stream registers again and re-requests every batch it has not
received; a batch whose object was lost (its node died) is requested again. Every batch is
handed out exactly once: as ``(spec, batch)``, or ``(spec, None)`` when it failed every attempt,
so that DDP ranks can stay in step.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayError

from afm_ray.pipeline.dispatch import DispatchLimits, batch_name
from afm_ray.pipeline.dispatcher import ACTOR_LOST, start_dispatcher
from afm_ray.samples.plan import BatchSpec
from afm_ray.samples.sample_batch import SampleBatch

log = logging.getLogger("afm_ray.pipeline")
DEFAULT_BUDGET_MIB = 2048.0
"""Object store a consumer's batches may take, made or being made (see ``pipeline.object_store_budget_mib_per_worker``)."""
TAKE_WAIT_S = 2.0
DISPATCHER_RESTART_S = 300.0
"""How long a consumer waits for a restarting dispatcher before it gives up."""


@dataclass
class StreamStats:
    """What a consumer received and waited for.

    ``wait_seconds``: blocked on data, ``max_wait_seconds`` the longest single wait; ``resent``:
    attempts beyond the first (failures, timeouts, hedges); ``timed_out``: calls given up on;
    ``hedged``: batches sent to a second actor because the first was slow; ``dropped_batches``:
    batches that failed every attempt; ``samples_skipped``: samples an actor could not make;
    ``per_actor_batches`` and ``per_actor_seconds``: batches delivered by each actor index and
    the seconds that actor spent making them.
    """

    wait_seconds: float = 0.0
    max_wait_seconds: float = 0.0
    batches: int = 0
    samples: int = 0
    resent: int = 0
    timed_out: int = 0
    hedged: int = 0
    dropped_batches: int = 0
    samples_skipped: int = 0
    produce_seconds: float = 0.0
    per_actor_batches: dict[int, int] = field(default_factory=dict)
    per_actor_seconds: dict[int, float] = field(default_factory=dict)

    def copy(self) -> "StreamStats":
        return StreamStats(**{**self.__dict__, "per_actor_batches": dict(self.per_actor_batches),
                              "per_actor_seconds": dict(self.per_actor_seconds)})


class BatchStream:
    """Batches of ``specs`` from a simulation pool for consumer ``consumer`` of ``tenant``.

    ``source`` is the pool's dispatcher (:func:`~afm_ray.pipeline.dispatcher.start_dispatcher`), or
    a list of simulation actors: then this stream starts a dispatcher of its own with limits from
    ``batch_timeout_s`` (the cap of a call's timeout) and ``limits``. Iterating yields ``(spec,
    batch)`` for the specs given here, in completion order. For several epochs, :meth:`request`
    queues specs (the next epoch's, while this one is still running) and :meth:`results` yields
    exactly the results of the specs it is given. ``batch`` is ``None`` for a dropped batch.
    ``consumers`` is accepted for the caller's bookkeeping: the pool needs no static split.
    """

    def __init__(self, source, specs: Iterable[BatchSpec] = (), max_in_flight: int | None = None, *,
                 consumer: int = 0, consumers: int = 1, tenant: str = "default",
                 budget_mib: float = DEFAULT_BUDGET_MIB, batch_timeout_s: float = 300.0, max_attempts: int = 3,
                 seed: int = 0, limits: DispatchLimits | None = None):
        if isinstance(source, (list, tuple)):
            if not source:
                raise ValueError("BatchStream needs at least one simulation actor")
            limits = limits or DispatchLimits(timeout_floor_s=min(30.0, batch_timeout_s), timeout_cap_s=batch_timeout_s)
            source = start_dispatcher(list(source), limits, seed)
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be ≥ 1, got {max_in_flight}")
        if not 0 <= consumer < consumers:
            raise ValueError(f"consumer {consumer} is not one of {consumers}")
        self.dispatcher = source
        self.key = (tenant, consumer)
        self.max_in_flight = max_in_flight
        self._registration = (tenant, budget_mib * 2**20, max_in_flight, max_attempts)
        self.stats = StreamStats()
        self._wanted: dict = {}  # key → spec requested and not handed out
        self._wanted_lock = threading.Lock()  # request() on the training thread, results() on a loader thread
        self._waiting: set = set()  # keys the current results() call waits for
        self._call(lambda: self.dispatcher.register.remote(self.key, *self._registration))
        stop = threading.Event()
        self._heartbeat = threading.Thread(target=_heartbeat, args=(self.dispatcher, self.key, stop, 5.0),
                                           name=f"afm-ray-stream-heartbeat-{consumer}", daemon=True)
        self._heartbeat.start()
        self._finalizer = weakref.finalize(self, _release, self.dispatcher, self.key, stop)
        self._initial = list(specs)
        self.request(self._initial)

    # -- public ----------------------------------------------------------------------------------
    def request(self, specs: Iterable[BatchSpec]) -> None:
        """Queue ``specs`` (those not queued yet) behind the work already queued."""
        with self._wanted_lock:
            new = [spec for spec in specs if spec.key not in self._wanted]
            self._wanted.update((spec.key, spec) for spec in new)
        if new:
            if not self._call(lambda: self.dispatcher.request.remote(self.key, new)):
                self._register_again()

    def results(self, specs: Iterable[BatchSpec]) -> Iterator[tuple[BatchSpec, SampleBatch | None]]:
        """``(spec, batch)`` once for each of ``specs`` (queued if needed), in completion order."""
        specs = list(specs)
        self.request(specs)
        waiting = self._waiting = {spec.key for spec in specs}
        announce = list(waiting)  # wanted with the first take
        while waiting:
            started = time.perf_counter()
            received = self._take(announce)
            announce = None
            waited = time.perf_counter() - started
            self.stats.wait_seconds += waited
            self.stats.max_wait_seconds = max(self.stats.max_wait_seconds, waited)
            for spec, batch in received:
                waiting.discard(spec.key)
                yield spec, batch

    def close(self) -> None:
        """Release this consumer's queued and running work (also done when the stream is collected)."""
        self._finalizer()

    def __iter__(self) -> Iterator[tuple[BatchSpec, SampleBatch | None]]:
        return self.results(self._initial)

    # -- receiving -------------------------------------------------------------------------------
    def _take(self, wanted: list | None = None) -> list[tuple[BatchSpec, SampleBatch | None]]:
        """Blocks until at least one wanted batch is handed out (or re-requested after a loss); ``wanted``:
        the batch keys this consumer now waits for, announced with the first call."""
        while True:
            handed = self._call(lambda: self.dispatcher.take.remote(self.key, TAKE_WAIT_S, wanted))
            wanted = None
            if handed is None:
                self._register_again()
                continue
            received = []
            for spec, summary, batch_refs, record in handed:
                batch = None
                if summary is not None:
                    try:
                        batch = ray.get(batch_refs[0])
                    except RayError as error:  # the object is lost with its node: make it again
                        log.warning("batch %s was lost after it was made (%s); requesting it again",
                                    batch_name(spec), type(error).__name__)
                        self.stats.resent += 1
                        self._call(lambda: self.dispatcher.request.remote(self.key, [spec]))
                        self._call(lambda: self.dispatcher.want.remote(self.key, list(self._waiting)))
                        continue
                self._count(spec, summary, batch, record)
                with self._wanted_lock:
                    self._wanted.pop(spec.key, None)
                received.append((spec, batch))
            if received or not handed:
                return received

    def _count(self, spec: BatchSpec, summary: dict | None, batch: SampleBatch | None, record: dict) -> None:
        """Statistics of what is handed out (so a prefetched batch counts in the epoch that uses it)."""
        stats = self.stats
        stats.resent += record["attempts"] - 1
        stats.timed_out += record["timeouts"]
        stats.hedged += int(record["hedged"])
        for event in record["events"]:
            log.warning("batch %s %s", batch_name(spec), event)
        if batch is None:
            stats.dropped_batches += 1
            log.error("batch %s dropped after %d attempts", batch_name(spec), record["attempts"])
            return
        actor = summary["actor"]
        stats.batches += 1
        stats.samples += len(batch)
        stats.produce_seconds += batch.produce_seconds
        stats.per_actor_batches[actor] = stats.per_actor_batches.get(actor, 0) + 1
        stats.per_actor_seconds[actor] = stats.per_actor_seconds.get(actor, 0.0) + summary["busy_seconds"]
        stats.samples_skipped += len(batch.skipped)
        for line in batch.skipped:
            log.warning("skipped %s (simulation actor %d)", line, actor)

    # -- the dispatcher --------------------------------------------------------------------------
    def _register_again(self) -> None:
        """The dispatcher restarted without us: register and ask again for everything not received."""
        with self._wanted_lock:
            wanted = list(self._wanted.values())
        log.warning("the simulation pool's dispatcher restarted; requesting %d batches again", len(wanted))
        self._call(lambda: self.dispatcher.register.remote(self.key, *self._registration))
        self._call(lambda: self.dispatcher.request.remote(self.key, wanted))
        self._call(lambda: self.dispatcher.want.remote(self.key, list(self._waiting)))

    def _call(self, send):
        """``ray.get(send())``, waiting out a restarting dispatcher (at most :data:`DISPATCHER_RESTART_S`)."""
        give_up = time.monotonic() + DISPATCHER_RESTART_S
        while True:
            try:
                return ray.get(send())
            except ACTOR_LOST as error:
                if time.monotonic() > give_up:
                    raise RuntimeError(f"the simulation pool's dispatcher has not answered for "
                                       f"{DISPATCHER_RESTART_S:.0f} s ({type(error).__name__})") from error
                time.sleep(1.0)


def _heartbeat(dispatcher, key: tuple, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            dispatcher.heartbeat.remote(key)
        except Exception:  # noqa: BLE001 — Ray shut down under this thread: nobody to tell
            return


def _release(dispatcher, key: tuple, stop: threading.Event) -> None:
    stop.set()
    try:
        dispatcher.release.remote(key)
    except Exception:  # noqa: BLE001 — Ray may already be shut down at interpreter exit
        pass
