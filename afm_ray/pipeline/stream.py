"""Pulling batches from the simulation actors with bounded memory.

A :class:`BatchStream` keeps at most ``max_in_flight`` ``make_batch`` calls outstanding for its
consumer (one Ray Train worker), sends each new call to the actor with the fewest outstanding
calls, and yields batches as they complete. Memory is bounded by construction: a consumer never
holds more than ``max_in_flight`` batches in the object store, so the store holds at most
``workers × max_in_flight`` batches, and a slow trainer simply stops asking (backpressure).

The consumer calls the actor, so it owns the returned object: a batch survives the death of the
actor that produced it (unlike ``ray.put`` refs handed over by a producer). When an actor dies
mid-call the call is sent again — to the restarted actor or any other — so every planned batch
is delivered exactly once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError

from afm_ray.pipeline.work import BatchSpec


@dataclass
class StreamStats:
    """What a consumer waited for: seconds blocked on data, batches received, calls re-sent."""

    wait_seconds: float = 0.0
    batches: int = 0
    samples: int = 0
    resent: int = 0
    produce_seconds: float = 0.0
    per_actor_batches: dict[int, int] = field(default_factory=dict)


class BatchStream:
    """Iterate ``(spec, batch)`` for ``specs`` produced by ``actors`` (at most ``max_in_flight`` pending)."""

    def __init__(self, actors: list, specs: Iterable[BatchSpec], max_in_flight: int = 4, max_resends: int = 20):
        if not actors:
            raise ValueError("BatchStream needs at least one simulation actor")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be ≥ 1, got {max_in_flight}")
        self.actors = list(actors)
        self.specs = deque(specs)
        self.max_in_flight = max_in_flight
        self.max_resends = max_resends
        self.stats = StreamStats()

    def __iter__(self) -> Iterator[tuple[BatchSpec, dict]]:
        pending: dict = {}
        load = [0] * len(self.actors)
        while self.specs or pending:
            while self.specs and len(pending) < self.max_in_flight:
                spec = self.specs.popleft()
                actor_index = min(range(len(self.actors)), key=load.__getitem__)
                pending[self.actors[actor_index].make_batch.remote(spec)] = (spec, actor_index)
                load[actor_index] += 1
            started = time.perf_counter()
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            spec, actor_index = pending.pop(ready)
            load[actor_index] -= 1
            try:
                batch = ray.get(ready)
            except RayActorError:
                self.stats.resent += 1
                if self.stats.resent > self.max_resends:
                    raise
                self.specs.appendleft(spec)
                continue
            finally:
                self.stats.wait_seconds += time.perf_counter() - started
            self.stats.batches += 1
            self.stats.samples += len(spec.samples)
            self.stats.produce_seconds += float(batch.get("produce_seconds", 0.0))
            self.stats.per_actor_batches[actor_index] = self.stats.per_actor_batches.get(actor_index, 0) + 1
            yield spec, batch
