"""The distributed pipeline on a real local Ray cluster: actors, streaming, balance, fault tolerance, fixed sets."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import ray
import ray.cloudpickle
import torch

from afm_ray.bench.synthetic_stream import FixedLatencyActor, measure_layout
from afm_ray.pipeline import BatchStream, batches_for_rank, plan_epoch
from afm_ray.errors import InputError
from afm_ray.pipeline.actors import create_simulation_actors, stop_actors
from afm_ray.pipeline.cluster import assigned_opencl_device
from afm_ray.pipeline.fixed_sets import FixedSet, fixed_set_key, materialize
from afm_ray.train.device_shard import DeviceShard

# the fault-injecting actors below live in this test module: workers get them by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def all_samples(specs) -> list[int]:
    return sorted(np.concatenate([s.samples for s in specs]).tolist())


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


def test_a_global_batch_is_cut_into_the_same_pieces_for_any_ranks_times_micro_batches():
    from afm_ray.samples.plan import micro_batches_for_rank

    plan = plan_epoch(40, 7, run_seed=1, epoch=0)  # 5 global batches of 7
    one_rank = micro_batches_for_rank(plan, 0, 1, micro_batches=2)
    two_ranks = [micro_batches_for_rank(plan, rank, 2) for rank in range(2)]
    for step, (alone, *shared) in enumerate(zip(one_rank, *two_ranks)):
        assert [(p.index, p.seed, p.samples.tolist()) for p in alone] == \
            [(p.index, p.seed, p.samples.tolist()) for part in shared for p in part]
        assert [len(p.samples) for p in alone] == [4, 3]  # sizes differ by at most one
        assert np.concatenate([p.samples for p in alone]).tolist() == plan[step].samples.tolist()
        assert [p.seed for p in alone] == [(*plan[step].seed, 0), (*plan[step].seed, 1)]
    # one piece per step keeps the plan's batch; pieces beyond the batch's samples are left out
    assert micro_batches_for_rank(plan, 0, 1) == [[batch] for batch in plan]
    assert [[len(p.samples) for p in step] for step in micro_batches_for_rank(plan, 3, 4, 2)] == [[1]] * 5  # 7 in 8


def test_importing_the_batch_stages_does_not_import_ray():
    code = "import sys, afm_ray.samples.batches, afm_ray.samples.plan, afm_ray.recipe; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_actor_asking_for_the_gpu_ray_assigned_it_needs_one(ray_session):
    @ray.remote(num_cpus=0, num_gpus=0)
    def simulator_device(spec):
        try:
            return assigned_opencl_device(spec)
        except InputError as error:
            return str(error)

    assert ray.get([simulator_device.remote(spec) for spec in ("auto", 1, "nvidia:0")]) == ["auto", 1, "nvidia:0"]
    assert "Ray assigned no GPU to this actor" in ray.get(simulator_device.remote("ray"))


def test_every_actor_works_for_lockstep_consumers_and_a_slow_one_less(ray_session):
    """6 real actors (2 twice as slow) through the real dispatcher to 3 consumers that step together. A batch
    takes 0.4 s (0.8 s on the slow ones): a call's round trip on a 2-core machine busy with other work can take
    0.2 s, which evens the shares out at short latencies (at 0.05 s: 0.75 idle, 1.0 with three busy loops beside
    it; at 0.4 s over 12 rounds: 0.7 both ways)."""
    row = measure_layout(6, 3, latency_s=0.4, rounds=12, case="slowhome")
    assert row["exactly_once"] and row["dropped"] == 0
    assert row["actors_used"] == 6
    assert row["share_min"] < 0.8 and row["share_max"] <= 1.3, row  # the slow actor made about half as many


class SlowOrBrokenActor(FixedLatencyActor):
    """A fixed-latency actor that hangs (``hang``) or dies (``crash``) on the batch with index ``bad_index``
    (``None``: on every batch)."""

    def __init__(self, latency_s: float, fault: str = "", bad_index: int = -1):
        super().__init__(latency_s)
        self.fault, self.bad_index = fault, bad_index

    def make_batch(self, spec):
        bad = self.bad_index is None or spec.index == self.bad_index
        if bad and self.fault == "hang":
            time.sleep(3600)
        if bad and self.fault == "crash":
            os._exit(1)
        return super().make_batch(spec)


def start_fake_actors(faults: list[tuple[str, int]], latency_s: float = 0.05) -> list:
    remote = ray.remote(SlowOrBrokenActor).options(num_cpus=0, max_restarts=-1, max_task_retries=0)
    actors = [remote.remote(latency_s, fault, index) for fault, index in faults]
    ray.get([actor.describe.remote() for actor in actors])
    return actors


def test_a_hanging_actor_is_warned_about_and_its_batch_made_elsewhere(ray_session, caplog):
    actors = start_fake_actors([("hang", None), ("", -1), ("", -1)])
    specs = plan_epoch(24, 2, run_seed=0, epoch=0)
    try:
        stream = BatchStream(actors, specs, max_in_flight=6, batch_timeout_s=2.0)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="afm_ray.pipeline"):
            received = [int(s) for spec, batch in stream for s in batch.samples]
        assert time.monotonic() - started < 30
    finally:
        stop_actors(actors)
    assert sorted(received) == all_samples(specs)
    # hedged on another actor after 3 × p95 of the calls so far, or given up on after the 2 s cap
    assert stream.stats.hedged + stream.stats.timed_out >= 1 and stream.stats.dropped_batches == 0
    assert any("simulation actor 0" in r.message and ("is slow" in r.message or "has not come back" in r.message)
               for r in caplog.records), caplog.text


def test_a_batch_that_always_kills_its_actor_is_dropped_after_bounded_retries(ray_session, caplog):
    """Every actor dies on batch 2; the stream tries it on 3 different actors, then drops it and finishes."""
    actors = start_fake_actors([("crash", 2)] * 4)
    specs = plan_epoch(12, 2, run_seed=0, epoch=0)
    try:
        stream = BatchStream(actors, specs, max_attempts=3, batch_timeout_s=60)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="afm_ray.pipeline"):
            results = list(stream)
        assert time.monotonic() - started < 120
    finally:
        stop_actors(actors)
    dropped = [spec.index for spec, batch in results if batch is None]
    assert dropped == [2] and stream.stats.dropped_batches == 1 and stream.stats.resent >= 2
    assert sorted(spec.index for spec, _ in results) == list(range(6))
    assert any("dropped" in r.message for r in caplog.records)


def test_next_epoch_is_made_while_this_one_ends(ray_session):
    actors = start_fake_actors([("", -1)] * 2, latency_s=0.1)
    epoch0, epoch1 = plan_epoch(16, 2, 0, 0), plan_epoch(16, 2, 0, 1)
    try:
        stream = BatchStream(actors, max_in_flight=4)
        stream.request(epoch0)
        stream.request(epoch1)
        first = list(stream.results(epoch0))
        time.sleep(0.3)  # "validation"
        validated = time.time()
        second = list(stream.results(epoch1))
    finally:
        stop_actors(actors)
    assert {spec.epoch for spec, _ in first} == {0} and {spec.epoch for spec, _ in second} == {1}
    assert all_samples([s for s, _ in second]) == list(range(16))
    # both actors made epoch-1 batches during the "validation": they had been requested before it
    made_meanwhile = {batch.made_by.pid for _, batch in second if batch.made_by.started_s < validated}
    assert len(made_meanwhile) == 2


def test_two_tenants_share_one_pool_and_a_closed_streams_work_is_cancelled(ray_session):
    """Trial a queues 40 batches on a shared pool of 2 actors and stops after 2; trial b is then served at once."""
    from afm_ray.pipeline.dispatch import DispatchLimits
    from afm_ray.pipeline.dispatcher import start_dispatcher

    actors = start_fake_actors([("", -1)] * 2, latency_s=0.2)
    pool = start_dispatcher(actors, DispatchLimits())
    try:
        first = BatchStream(pool, tenant="trial-a")
        plan_a = plan_epoch(40, 1, run_seed=0, epoch=0)
        taken = []
        for spec, batch in first.results(plan_a[:2]):
            taken.append(batch)
        first.request(plan_a[2:])  # queued, then abandoned: the trial was stopped
        first.close()
        second = BatchStream(pool, tenant="trial-b")
        started = time.monotonic()
        received = list(second.results(plan_epoch(4, 1, run_seed=1, epoch=0)))
        waited = time.monotonic() - started
        made = sum(s["batches"] for s in ray.get(pool.actor_stats.remote()))
    finally:
        stop_actors([*actors, pool])
    assert len(taken) == 2 and len(received) == 4 and all(batch is not None for _, batch in received)
    assert waited < 3.0  # 4 batches on 2 actors: ~0.4 s, not behind trial a's 38 (~4 s)
    assert made <= 2 + 4 + 2 * 2  # besides the 6 taken, at most the calls already on the actors when a left


class NeverReadyActor(FixedLatencyActor):
    def __init__(self, *args):
        time.sleep(3600)


def test_actor_start_up_has_a_timeout_with_a_clear_error(ray_session, tiny_config):
    pipeline = tiny_config.pipeline.model_copy(update={"actor_startup_timeout_s": 2.0, "sim_num_cpus": 0.0})
    with pytest.raises(RuntimeError, match="did not start within pipeline.actor_startup_timeout_s = 2 s"):
        create_simulation_actors(tiny_config.sample_settings, pipeline, actor_class=NeverReadyActor, args=(0.1,))


# -- real simulation actors ------------------------------------------------------------------------

def test_simulation_actors_stream_real_batches(ray_session, tiny_config):
    actors = create_simulation_actors(tiny_config.sample_settings, tiny_config.pipeline)
    try:
        places = ray.get([a.describe.remote() for a in actors])
        assert len({p["pid"] for p in places}) == 2
        specs = plan_epoch(24, 6, run_seed=0, epoch=0)
        stream = BatchStream(actors, specs, max_in_flight=2)
        batches = list(stream)
        assert len(batches) == 4 and stream.stats.batches == 4
        spec, batch = batches[0]
        assert batch.x.shape == (6, 1, 32, 32, 6) and batch.x.dtype == np.float32 and batch.df is None
        assert batch.targets["vdw_spheres"].shape == (6, 32, 32) and batch.targets["height_map"].shape == (6, 32, 32)
        np.testing.assert_allclose(batch.x.mean(axis=(2, 3)), 0, atol=0.2)  # normalised slices (+ noise)
        assert batch.made_by.pid in {p["pid"] for p in places} and batch.made_by.started_s <= batch.made_by.finished_s
        assert set(stream.stats.per_actor_batches) == {0, 1}  # both actors worked
        # a batch is a pure function of its spec: regenerating gives the same bytes
        again = ray.get(actors[1].make_batch.remote(spec))
        np.testing.assert_array_equal(again.x, batch.x)
    finally:
        stop_actors(actors)


def test_killed_simulation_actor_restarts_and_every_sample_arrives_once(ray_session, tiny_config):
    actors = create_simulation_actors(tiny_config.sample_settings, tiny_config.pipeline)
    try:
        victim_pid = ray.get(actors[0].describe.remote())["pid"]
        specs = plan_epoch(24, 2, run_seed=0, epoch=0)  # 12 batches
        received = []
        stream = BatchStream(actors, specs, max_in_flight=4)
        for count, (spec, batch) in enumerate(stream):
            received.extend(batch.samples.tolist())
            if count == 1:
                os.kill(victim_pid, signal.SIGKILL)
        assert sorted(received) == all_samples(specs)
        assert len(received) == len(set(received)) == 24 and stream.stats.dropped_batches == 0
        deadline = time.monotonic() + 120
        while True:  # a call that reaches the actor while it restarts is refused, not queued
            try:
                restarted = ray.get(actors[0].describe.remote(), timeout=120)
                break
            except ray.exceptions.ActorUnavailableError:
                assert time.monotonic() < deadline, "the killed actor did not come back within 120 s"
                time.sleep(0.5)
        assert restarted["pid"] != victim_pid
    finally:
        stop_actors(actors)


def test_samples_that_cannot_be_simulated_are_skipped_with_their_molecule(tiny_config):
    """A 6.4 Å window holds every molecule of the tiny split but one rotation of one training molecule."""
    from afm_ray.samples.batches import BatchFactory
    from afm_ray.pipeline.sources import load_split_samples, task_of

    settings = tiny_config.sample_settings.model_copy(update={"sim": tiny_config.sim.model_copy(
        update={"scan_size_angstrom": (6.4, 6.4)})})
    splits = load_split_samples(settings, ("train",))
    factory = BatchFactory(task_of(settings), settings.sim, settings.augment, settings.descriptors, splits, device="cpu")
    try:
        batches = [factory.make_batch(spec) for spec in plan_epoch(24, 6, 0, 0)]
    finally:
        factory.close()
    skipped = [line for batch in batches for line in batch.skipped]
    assert len(skipped) == 1 and "molecule qm9:" in skipped[0] and "rotation" in skipped[0]
    assert "does not contain the molecule" in skipped[0]
    assert sum(len(batch) for batch in batches) == 23
    short = next(batch for batch in batches if len(batch.skipped_samples))
    assert len(short.samples) == len(short.x) == len(short.targets["vdw_spheres"]) == 5
    assert short.skipped_samples[0] not in short.samples


# -- fixed sets ----------------------------------------------------------------------------------------

def test_the_validation_cache_takes_half_the_free_memory_shared_by_the_ranks_of_a_node():
    from afm_ray.pipeline.fixed_sets import available_memory_bytes, cache_budget_mib

    assert cache_budget_mib(16 * 2**30, ranks_on_node=2) == 4096.0  # 16 GiB free, 2 ranks: 4 GiB each
    assert cache_budget_mib(16 * 2**30, ranks_on_node=1) == 8192.0
    assert 0 < available_memory_bytes() < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_fixed_sets_are_materialised_once_and_read_back(ray_session, tiny_config):
    settings, seed = tiny_config.sample_settings, tiny_config.run.seed
    actors = create_simulation_actors(settings, tiny_config.pipeline)
    try:
        path = materialize(settings, "val", 6, seed, actors, progress=False)
        stamp = (path / "_SUCCESS").stat().st_mtime_ns
        assert materialize(settings, "val", 6, seed, actors, progress=False) == path
        assert (path / "_SUCCESS").stat().st_mtime_ns == stamp  # not simulated again
        fixed = FixedSet(path, cache_mib=1.0)
        assert len(fixed) == 6
        first = fixed.first(4)
        assert first.x.shape == (4, 1, 32, 32, 6) and first.samples.tolist() == [0, 1, 2, 3]
        assert list(first.targets) == list(tiny_config.model.spec.targets)  # the shards' columns, in order
        regenerated = ray.get(actors[0].make_batch.remote(
            plan_epoch(6, 16, seed, 0, split="val", shuffle=False, drop_last=False)[0]))
        np.testing.assert_array_equal(regenerated.x[:4], first.x)
        for name, target in first.targets.items():
            np.testing.assert_array_equal(regenerated.targets[name][:4], target, err_msg=name)
        cached = next(fixed.batches())
        assert next(fixed.batches()) is cached  # decoded once, kept in memory within the bound
        assert next(FixedSet(path, cache_mib=0).batches()) is not next(FixedSet(path, cache_mib=0).batches())
        # a rank's shard as tensors on its device: filled by the first pass, kept when all of it fits
        shard_bytes = sum(value.nbytes for value in cached.float_arrays().values())
        for budget, kept in ((shard_bytes, True), (shard_bytes - 1, False)):
            shard = DeviceShard(FixedSet(path, cache_mib=0), torch.device("cpu"), 0, 1, budget)
            first_pass = list(shard.batches())
            np.testing.assert_array_equal(first_pass[0]["x"].numpy(), cached.x)
            assert shard.on_device is kept
            assert (list(shard.batches())[0]["x"] is first_pass[0]["x"]) is kept  # not read again

        # two jobs building the same set at once on shared storage: one correct set, no leftovers
        shutil.rmtree(path)
        paths, errors = [], []

        def build():
            try:
                paths.append(materialize(settings, "val", 6, seed, actors, progress=False))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        builders = [threading.Thread(target=build) for _ in range(2)]
        for builder in builders:
            builder.start()
        for builder in builders:
            builder.join()
        assert not errors and paths == [path, path]
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
        np.testing.assert_array_equal(FixedSet(path).first(4).x, first.x)
    finally:
        stop_actors(actors)


def test_fixed_set_hash_covers_only_what_changes_its_samples(tiny_config, tmp_path):
    settings = tiny_config.sample_settings
    key = fixed_set_key(settings, "val", 6, seed=0)
    copy = tmp_path / "elsewhere.parquet"
    shutil.copy(settings.data.database, copy)
    same = [settings.model_copy(update={"data": settings.data.model_copy(update=change)})
            for change in ({"max_train_molecules": 5}, {"rotations_per_molecule": 7}, {"database": copy},
                           {"fixed_set_dir": tmp_path / "other"})]
    same.append(settings.model_copy(update={"train_rotations_per_molecule": 9}))
    assert {fixed_set_key(s, "val", 6, seed=0) for s in same} == {key}
    different = [settings.model_copy(update={"sim": settings.sim.model_copy(update={"num_slices": 10})}),
                 settings.model_copy(update={"data": settings.data.model_copy(update={"eval_rotations_per_molecule": 2})}),
                 settings.model_copy(update={"model": "es"})]
    keys = {fixed_set_key(s, "val", 6, seed=0) for s in different} | {fixed_set_key(settings, "val", 6, seed=1)}
    assert key not in keys and len(keys) == 4


def test_raw_df_batches_augmented_by_the_consumer_equal_the_actors_batches(tiny_config):
    """``BatchSpec.raw_df``: the actor ships every simulated slice, or only those the augmentation reads
    (``raw_df_read_slices``, half of them here); augmenting either on the trainer gives the actor's batch."""
    import dataclasses

    import torch

    from afm_ray.samples.augment_torch import augment_batch
    from afm_ray.samples.batches import BatchFactory
    from afm_ray.pipeline.sources import load_split_samples, task_of

    for model in ("dsh", "es"):
        settings = tiny_config.sample_settings.model_copy(update={"model": model})
        factory = BatchFactory(task_of(settings), settings.sim, settings.augment, settings.descriptors,
                               load_split_samples(settings, ("train",)), device="cpu")
        try:
            spec = plan_epoch(24, 6, 0, 1)[2]
            made = factory.make_batch(spec)
            raw = factory.make_batch(dataclasses.replace(spec, raw_df=True))
            half = factory.make_batch(dataclasses.replace(spec, raw_df=True, raw_df_dtype="float16"))
            slim = factory.make_batch(dataclasses.replace(spec, raw_df=True, raw_df_read_slices=True))
            half_targets = factory.make_batch(dataclasses.replace(spec, raw_df=True, target_dtype="float16"))
        finally:
            factory.close()
        assert raw.x is None and raw.df.shape == (6, len(task_of(settings).tips), 32, 32, settings.sim.num_slices)
        assert raw.targets.keys() == made.targets.keys() == set(task_of(settings).targets)
        np.testing.assert_array_equal(raw.samples, made.samples)
        for name in task_of(settings).targets:
            np.testing.assert_array_equal(raw.targets[name], made.targets[name])
        augmented = augment_batch(torch.from_numpy(raw.df), spec.seed, settings.augment, noise_on_device=False)
        np.testing.assert_allclose(augmented.numpy(), made.x, rtol=0, atol=1e-6)
        assert half.df.dtype == np.float16 and half.df.nbytes == raw.df.nbytes // 2
        from_half = augment_batch(torch.from_numpy(half.df).float(), spec.seed, settings.augment,
                                  noise_on_device=False).numpy()
        np.testing.assert_allclose(from_half, made.x, rtol=0, atol=2e-2)  # normalised values, Δf rounded to 11 bits
        kept = settings.augment.scan_height.kept_slices
        assert slim.df.shape == (*raw.df.shape[:4], kept) and slim.df.nbytes * 2 == raw.df.nbytes
        from_slim = augment_batch(torch.from_numpy(slim.df), spec.seed, settings.augment, noise_on_device=False,
                                  simulated_slices=settings.sim.num_slices)
        np.testing.assert_array_equal(from_slim.numpy(), augmented.numpy())
        with_device_noise = [augment_batch(torch.from_numpy(df), spec.seed, settings.augment, simulated_slices=nz)
                             for df, nz in ((raw.df, None), (slim.df, settings.sim.num_slices))]
        np.testing.assert_array_equal(*[x.numpy() for x in with_device_noise])  # the same noise seed
        for name in task_of(settings).targets:
            assert half_targets.targets[name].dtype == np.float16
            np.testing.assert_allclose(half_targets.targets[name], made.targets[name], rtol=1e-3, atol=1e-4)
