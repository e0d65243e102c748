"""A batch's host work (issue 26): one pack and upload, every kernel enqueued with one wait, Δf read straight into
its channel, reused page-locked results, vectorised per-sample draws; each equal to the synchronous calls."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from afm_ray.descriptors import HeightMapConfig, ScanWindow, height_and_es_maps
from afm_ray.descriptors.device_maps import DeviceMaps
from afm_ray.descriptors.height_es import enqueue_height_and_es_maps
from afm_ray.errors import InputError
from afm_ray.molecules.molecule import Molecule
from afm_ray.samples.plan import plan_epoch
from afm_ray.sim import ScanParams, SimConfig, Simulator, draw_scan_params
from afm_ray.sim.buffers import PinnedHostArrays
from afm_ray.sim.simulator import derived_seeds

WATER = Molecule("water", np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.0], [0.76, 0.0, 0.59], [-0.76, 0.0, 0.59]]),
                 np.array([-0.8, 0.4, 0.4]))
FORMALDEHYDE = Molecule("formaldehyde", np.array([6, 8, 1, 1]),
                        np.array([[0.0, 0.0, 0.0], [1.2, 0.0, 0.1], [-0.55, 0.94, 0.0], [-0.55, -0.94, 0.0]]),
                        np.array([0.3, -0.5, 0.1, 0.1]))


@pytest.fixture(scope="module")
def sim(cpu_device) -> Simulator:
    return Simulator(SimConfig(scan_pixels=(32, 32)), device=cpu_device)


def test_one_load_and_one_wait_give_what_the_synchronous_calls_give(sim):
    molecules = [WATER, FORMALDEHYDE, WATER.rotated(np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]))]
    params = {tip: draw_scan_params(sim.config, 3, seed) for seed, tip in enumerate(("CO", "Xe"))}
    window = ScanWindow.from_sim_config(sim.config)
    maps = DeviceMaps(sim.context, sim.queue, track=sim.track)
    host = PinnedHostArrays(sim.queue)

    batch = sim.load(molecules)
    df = host.empty("df", (3, 2, 32, 32, sim.config.num_slices))
    runs = [sim.enqueue_run(batch, tip, params[tip], df_out=df, df_channel=channel)
            for channel, tip in enumerate(("CO", "Xe"))]
    height_es = enqueue_height_and_es_maps(batch, sim, HeightMapConfig(highest_plane_angstrom=7.0), host=host)
    drawn = maps.enqueue_maps(batch, window, host=host)
    sim.finish()

    for channel, (run, tip) in enumerate(zip(runs, ("CO", "Xe"))):
        alone = sim.run(molecules, tip, params[tip])
        np.testing.assert_array_equal(df[:, channel], alone.df)
        np.testing.assert_array_equal(run.result().df, alone.df)
        np.testing.assert_array_equal(run.result().tip_z, alone.tip_z)
    expected = height_and_es_maps(molecules, sim, HeightMapConfig(highest_plane_angstrom=7.0))
    np.testing.assert_array_equal(height_es.result().height, expected.height)
    np.testing.assert_array_equal(height_es.result().es, expected.es)
    for name, value in maps.maps(molecules, window).items():
        np.testing.assert_array_equal(drawn.result()[name], value)
    with pytest.raises(RuntimeError, match="replaced on the device by a later Simulator.load"):
        sim.load([WATER]) and sim.enqueue_run(batch, "CO")


def test_reused_host_memory_gives_the_same_batch_and_is_overwritten_by_the_next(tiny_config):
    from afm_ray.samples.batches import BatchFactory
    from afm_ray.pipeline.sources import load_split_samples, task_of

    settings = tiny_config.sample_settings.model_copy(update={"model": "es"})
    specs = [dataclasses.replace(spec, raw_df=True) for spec in plan_epoch(24, 4, 0, 0)[:2]]
    made = {}
    for reuse in (False, True):
        factory = BatchFactory(task_of(settings), settings.sim, settings.augment, settings.descriptors,
                               load_split_samples(settings, ("train",)), device="cpu", reuse_host_memory=reuse)
        try:
            first = factory.make_batch(specs[0])
            arrays = {**first.float_arrays(), "samples": first.samples}
            copies = {name: np.copy(value) for name, value in arrays.items()}
            factory.make_batch(specs[1])
            made[reuse] = copies, first
        finally:
            factory.close()
    fresh, lent = made[False][0], made[True][0]
    assert fresh.keys() == lent.keys() >= {"df", "es_map", "height_map", "samples"}
    for name in fresh:
        np.testing.assert_array_equal(lent[name], fresh[name], err_msg=name)
    assert np.array_equal(made[False][1].df, fresh["df"])  # a new array per batch: kept
    assert not np.array_equal(made[True][1].df, lent["df"])  # the reused memory: the next batch's now


def test_each_samples_draw_depends_on_its_own_seed_only():
    config = SimConfig()
    sequence = np.random.SeedSequence((0, 1, 2))
    seeds = derived_seeds(sequence, [5, 9, 12])
    assert seeds.tolist() == derived_seeds(np.random.SeedSequence((0, 1, 2)), [12, 9, 5])[::-1].tolist()
    assert derived_seeds(sequence, [9])[0] == seeds[1] and len(set(seeds.tolist())) == 3 and seeds.max() < 2**63
    together = ScanParams.draw_many(config, seeds)
    assert together == [ScanParams.draw(config, int(seed)) for seed in seeds]
    many = ScanParams.draw_many(config, derived_seeds(sequence, np.arange(2000)))
    radii = np.hypot(*np.array([p.tilt_angstrom for p in many]).T)
    # uniform in the disk: the fraction within radius r is (r / R)²
    assert abs((radii < 0.5 * config.tilt_radius_angstrom).mean() - 0.25) < 0.03 and radii.max() <= 1.0


def test_a_faulty_molecule_in_a_packed_batch_is_named(sim):
    broken = Molecule("broken", np.array([8, 1, 1]), WATER.positions.copy(), np.array([-0.8, np.nan, 0.4]))
    with pytest.raises(InputError, match="molecule broken: atom 1 has a non-finite charge"):
        sim.load([WATER, FORMALDEHYDE, broken])
    wide = Molecule("wide", np.array([6, 6]), np.array([[-9.0, 0, 0], [9.0, 0, 0]]), np.zeros(2))
    with pytest.raises(InputError, match="molecule wide: the scan window"):
        sim.load([WATER, wide])
