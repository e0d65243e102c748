"""The distributed pipeline on a real local Ray cluster: actors, streaming, fault tolerance."""

import os
import signal

import numpy as np
import ray

from afm_ray.pipeline import BatchStream, batches_for_rank, plan_epoch
from afm_ray.pipeline.actors import create_simulation_actors
from afm_ray.pipeline.fixed_sets import FixedSet, materialize


def test_plan_is_deterministic_disjoint_and_equal_per_rank():
    first = plan_epoch(103, 8, run_seed=5, epoch=2)
    again = plan_epoch(103, 8, run_seed=5, epoch=2)
    assert [b.samples.tolist() for b in first] == [b.samples.tolist() for b in again]
    assert [b.samples.tolist() for b in first] != [b.samples.tolist() for b in plan_epoch(103, 8, 5, 3)]
    samples = np.concatenate([b.samples for b in first])
    assert len(first) == 12 and len(set(samples.tolist())) == 96  # 7 left over, dropped
    ranks = [batches_for_rank(first, rank, 5) for rank in range(5)]
    assert {len(r) for r in ranks} == {2}
    assert not set(b.index for b in ranks[0]) & set(b.index for b in ranks[1])


def test_simulation_actors_stream_real_batches(ray_session, tiny_config):
    actors = create_simulation_actors(tiny_config)
    try:
        places = ray.get([a.describe.remote() for a in actors])
        assert len({p["pid"] for p in places}) == 2
        specs = plan_epoch(24, 6, run_seed=0, epoch=0)
        stream = BatchStream(actors, specs, max_in_flight=2)
        batches = list(stream)
        assert len(batches) == 4 and stream.stats.batches == 4
        spec, batch = batches[0]
        assert batch["x"].shape == (6, 1, 32, 32, 6) and batch["x"].dtype == np.float32
        assert batch["vdw_spheres"].shape == (6, 32, 32) and batch["height_map"].shape == (6, 32, 32)
        np.testing.assert_allclose(batch["x"].mean(axis=(2, 3)), 0, atol=0.2)  # normalised slices (+ noise)
        assert set(stream.stats.per_actor_batches) == {0, 1}  # both actors worked
        # a batch is a pure function of its spec: regenerating gives the same bytes
        again = ray.get(actors[1].make_batch.remote(spec))
        np.testing.assert_array_equal(again["x"], batch["x"])
    finally:
        for actor in actors:
            ray.kill(actor)


def test_killed_simulation_actor_restarts_and_every_sample_arrives_once(ray_session, tiny_config):
    actors = create_simulation_actors(tiny_config)
    try:
        victim_pid = ray.get(actors[0].describe.remote())["pid"]
        specs = plan_epoch(24, 2, run_seed=0, epoch=0)  # 12 batches
        received = []
        for count, (spec, batch) in enumerate(BatchStream(actors, specs, max_in_flight=4)):
            received.extend(batch["samples"].tolist())
            if count == 1:
                os.kill(victim_pid, signal.SIGKILL)
        assert sorted(received) == sorted(np.concatenate([s.samples for s in specs]).tolist())
        assert len(received) == len(set(received)) == 24
        restarted = ray.get(actors[0].describe.remote(), timeout=120)
        assert restarted["pid"] != victim_pid
    finally:
        for actor in actors:
            ray.kill(actor)


def test_fixed_sets_are_materialised_once_and_read_back(ray_session, tiny_config):
    actors = create_simulation_actors(tiny_config)
    try:
        path = materialize(tiny_config, "val", 6, actors, progress=False)
        stamp = (path / "_SUCCESS").stat().st_mtime_ns
        assert materialize(tiny_config, "val", 6, actors, progress=False) == path
        assert (path / "_SUCCESS").stat().st_mtime_ns == stamp  # not simulated again
        fixed = FixedSet(path)
        assert len(fixed) == 6
        first = fixed.first(4)
        assert first["x"].shape == (4, 1, 32, 32, 6) and first["samples"].tolist() == [0, 1, 2, 3]
        regenerated = ray.get(actors[0].make_batch.remote(
            plan_epoch(6, 16, tiny_config.run.seed, 0, split="val", shuffle=False, drop_last=False)[0]))
        np.testing.assert_array_equal(regenerated["x"][:4], first["x"])
    finally:
        for actor in actors:
            ray.kill(actor)
