"""Augmentation statistics and bookkeeping (thesis 3.4), one step at a time."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from afm_ray.errors import InputError
from afm_ray.samples.augment import (AugmentConfig, CutoutConfig, ShiftConfig, augment, draw_batch, normalize_slices,
                                    shift_slices)
from afm_ray.samples.plan import micro_batches_for_rank, plan_epoch
from afm_ray.samples.seeds import sample_seeds, tip_seeds

B, NX, NY, NZ = 6, 48, 40, 20


def only(step: str, **fields) -> AugmentConfig:
    """A config with every step off except ``step`` (configured by ``fields``)."""
    off = {name: {"enabled": False} for name in ("scan_height", "normalization", "noise", "shift", "cutout")}
    off[step] = {"enabled": True, **fields}
    return AugmentConfig.model_validate(off)


@pytest.fixture
def stacks():
    rng = np.random.default_rng(0)
    # slices with different offsets and scales so normalisation has work to do
    return (rng.normal(size=(B, NX, NY, NZ)) * rng.uniform(0.5, 5, NZ) + rng.uniform(-20, 20, NZ)).astype(np.float32)


def test_defaults_are_the_thesis_values():
    config = AugmentConfig()
    assert (config.scan_height.window_slices, config.scan_height.kept_slices) == (15, 10)
    assert config.noise.relative_amplitude == 0.1 and config.shift.max_shift_px == 3
    assert config.cutout.enabled and config.normalization.enabled


def test_config_rejects_unknown_fields_and_bad_values():
    with pytest.raises(pydantic.ValidationError):
        AugmentConfig.model_validate({"noise": {"amplitude": 0.2}})
    with pytest.raises(pydantic.ValidationError):
        AugmentConfig.model_validate({"scan_height": {"window_slices": 5, "kept_slices": 10}})
    with pytest.raises(pydantic.ValidationError):
        AugmentConfig.model_validate({"shift": {"max_shift_px": -1}})


def test_scan_height_keeps_ten_of_a_contiguous_fifteen_in_order(stacks):
    marked = np.broadcast_to(np.arange(NZ, dtype=np.float32), stacks.shape).copy()
    result = augment(marked, seed=1, config=only("scan_height"))
    assert result.stacks.shape == (B, NX, NY, 10)
    chosen = result.stacks[:, 0, 0, :]
    np.testing.assert_array_equal(chosen, result.slice_indices)
    assert np.all(np.diff(chosen, axis=1) > 0)  # far → close order kept, no repeats
    assert np.all(chosen[:, -1] - chosen[:, 0] <= 14)  # inside one window of 15
    assert len({tuple(row) for row in result.slice_indices}) > 1  # varies between samples


def test_scan_height_needs_enough_slices(stacks):
    with pytest.raises(InputError, match="fewer than the window"):
        augment(stacks[..., :12], seed=0)


def test_normalised_slices_have_mean_0_and_std_1(stacks):
    result = augment(stacks, seed=2, config=only("normalization"))
    np.testing.assert_allclose(result.stacks.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(result.stacks.std(axis=(1, 2)), 1, atol=1e-5)
    assert np.all(normalize_slices(np.ones((1, 4, 4, 2), np.float32)) == 0)  # constant slice


def test_noise_is_uniform_and_bounded_by_half_c_times_slice_range(stacks):
    config = AugmentConfig.model_validate({"scan_height": {"enabled": False}, "shift": {"enabled": False},
                                           "cutout": {"enabled": False}})
    result = augment(stacks, seed=3, config=config)
    clean = normalize_slices(stacks)
    amplitude = 0.5 * 0.1 * (clean.max(axis=(1, 2)) - clean.min(axis=(1, 2)))  # (B, K)
    relative = (result.stacks - clean) / amplitude[:, None, None, :]
    assert np.abs(relative).max() <= 1 + 1e-4
    assert np.abs(relative).max() > 0.99  # fills [−A, A]
    assert abs(relative.mean()) < 0.01 and relative.std() == pytest.approx(1 / np.sqrt(3), abs=0.01)


def test_each_slice_is_shifted_by_at_most_three_pixels(stacks):
    result = augment(stacks, seed=4, config=only("shift"))
    assert np.abs(result.shifts).max() <= 3 and result.shifts.shape == (B, NZ, 2)
    assert len(np.unique(result.shifts.reshape(-1, 2), axis=0)) > 10  # slices move independently
    for b in range(B):
        for k in range(NZ):
            sx, sy = result.shifts[b, k]
            # interior pixels come straight from the input, moved by (sx, sy)
            moved = result.stacks[b, 3:-3, 3:-3, k]
            np.testing.assert_array_equal(moved, stacks[b, 3 - sx:NX - 3 - sx, 3 - sy:NY - 3 - sy, k])


def test_shift_mirrors_at_the_border():
    row = np.arange(5, dtype=np.float32)[None, :, None, None] * np.ones((1, 5, 1, 1), np.float32)
    shifted = shift_slices(row, np.array([[[2, 0]]]))
    np.testing.assert_array_equal(shifted[0, :, 0, 0], [2, 1, 0, 1, 2])


def test_cutouts_zero_exactly_the_recorded_rectangles():
    ones = np.ones((40, 64, 64, 10), np.float32)
    result = augment(ones, seed=5, config=only("cutout"))
    cutouts = result.cutouts
    expected = np.ones_like(ones)
    for sample, slice_, x0, x1, y0, y1 in cutouts:
        expected[sample, x0:x1, y0:y1, slice_] = 0
    np.testing.assert_array_equal(result.stacks, expected)
    # 5 attempts per slice at p = 0.2: one per slice on average, never more than 5
    per_slice = np.bincount(cutouts[:, 0] * 10 + cutouts[:, 1], minlength=400)
    assert per_slice.max() <= 5 and per_slice.mean() == pytest.approx(1.0, abs=0.15)
    area = (cutouts[:, 3] - cutouts[:, 2]) * (cutouts[:, 5] - cutouts[:, 4])
    assert area.max() <= 0.01 * 64 * 64 and np.all(cutouts[:, [3, 5]] <= 64) and np.all(cutouts[:, [2, 4]] >= 0)


def test_full_pipeline_is_reproducible_from_a_seed(stacks):
    first, again = augment(stacks, seed=(11, 3)), augment(stacks, seed=(11, 3))
    other = augment(stacks, seed=(11, 4))
    assert first.stacks.shape == (B, NX, NY, 10) and first.stacks.dtype == np.float32
    np.testing.assert_array_equal(first.stacks, again.stacks)
    np.testing.assert_array_equal(first.cutouts, again.cutouts)
    assert not np.array_equal(first.stacks, other.stacks)
    assert not np.array_equal(first.slice_indices, other.slice_indices)


def test_the_seed_tree_draws_what_stored_fixed_sets_were_made_with():
    """Values drawn by afm-ray before the seeds moved to one module: a change here needs a new
    SAMPLE_DRAWS_VERSION (afm_ray.pipeline.fixed_sets), or stored validation sets no longer match."""
    plan = plan_epoch(10, 4, run_seed=7, epoch=2, split="val")
    assert [batch.samples.tolist() for batch in plan] == [[1, 5, 3, 4], [6, 9, 0, 8]]
    assert [batch.seed for batch in plan] == [(7, 2, 0, 1), (7, 2, 1, 1)]
    assert [[piece.seed for piece in step] for step in micro_batches_for_rank(plan, 1, 2)] == [[(7, 2, 0, 1, 1)],
                                                                                                [(7, 2, 1, 1, 1)]]
    simulation, _ = tip_seeds(plan[1].seed, 2)
    assert sample_seeds(simulation[1], [3, 8]).tolist() == [5681816088867268027, 2329858767315993696]
    second_tip = draw_batch((2, 2, 8, 8, 20), plan[1].seed, AugmentConfig())[1]
    assert second_tip.slice_indices.tolist() == [[3, 5, 6, 8, 9, 12, 13, 14, 15, 16], [3, 4, 5, 7, 8, 9, 10, 12, 13, 14]]
    assert second_tip.shifts[:, :2].tolist() == [[[-1, -2], [0, -1]], [[1, 1], [-2, 3]]]
    assert len(second_tip.cutouts) == 18 and second_tip.cutouts[0].tolist() == [0, 0, 4, 4, 2, 3]


def test_switching_a_step_off_leaves_the_other_draws_alone(stacks):
    with_noise = augment(stacks, seed=9)
    without = augment(stacks, seed=9, config=AugmentConfig.model_validate({"noise": {"enabled": False}}))
    np.testing.assert_array_equal(with_noise.slice_indices, without.slice_indices)
    np.testing.assert_array_equal(with_noise.shifts, without.shifts)
    np.testing.assert_array_equal(with_noise.cutouts, without.cutouts)


def test_input_is_not_modified(stacks):
    before = stacks.copy()
    augment(stacks, seed=0)
    np.testing.assert_array_equal(stacks, before)


# -- the torch implementation on the training worker's device: the NumPy chain is its oracle ----------
@pytest.mark.parametrize("config", [
    AugmentConfig(),
    only("noise", relative_amplitude=0.3),
    only("shift", max_shift_px=5),
    only("cutout", probability=0.9),
    AugmentConfig.model_validate({"scan_height": {"enabled": False}, "normalization": {"enabled": False}}),
], ids=["thesis", "noise", "shift", "cutout", "all-slices-raw-values"])
def test_torch_augmentation_equals_the_numpy_chain_on_the_same_draws(stacks, config):
    import torch

    from afm_ray.samples.augment import apply_augmentation, draw_augmentation
    from afm_ray.samples.augment_torch import apply_augmentation as apply_on_device

    draws = draw_augmentation(stacks.shape, (3, 1, 4), config)
    expected = apply_augmentation(stacks, draws, config)
    result = apply_on_device(torch.from_numpy(stacks), draws, config)
    assert result.dtype == torch.float32 and tuple(result.shape) == expected.shape
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-6)
    assert not np.array_equal(expected, stacks[..., :expected.shape[3]])  # the steps did something


def test_a_batch_of_two_tips_is_augmented_like_the_actor_does(stacks):
    import torch

    from afm_ray.samples.augment import augment_batch, draw_batch
    from afm_ray.samples.augment_torch import augment_batch as augment_batch_on_device

    df = np.stack([stacks, stacks[::-1] * 2.0], axis=1)  # (B, 2 tips, nx, ny, nz)
    draws = draw_batch(df.shape, (7, 0, 2, 0), AugmentConfig())
    np.testing.assert_array_equal(draws[0].slice_indices, draws[1].slice_indices)  # Xe at CO's heights
    assert not np.array_equal(draws[0].unit_noise, draws[1].unit_noise)  # each tip its own noise
    expected = augment_batch(df, (7, 0, 2, 0), AugmentConfig())
    result = augment_batch_on_device(torch.from_numpy(df), (7, 0, 2, 0), AugmentConfig(), noise_on_device=False)
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-6)
    assert expected.shape == (B, 2, NX, NY, 10)


def test_noise_drawn_on_the_device_is_the_numpy_noise_in_distribution_and_seeded_by_the_batch(stacks):
    """Every deterministic stage (slices, normalisation, shifts, cutouts) equals the NumPy oracle; what is left
    is the noise, uniform in [−A, A] per voxel with A = 0.5 · c · (max − min) of the slice, drawn from a
    torch.Generator seeded by the batch: the same batch seed gives the same field, each tip its own."""
    import torch

    from afm_ray.samples.augment import augment_batch
    from afm_ray.samples.augment_torch import augment_batch as augment_batch_on_device

    config = AugmentConfig.model_validate({"noise": {"relative_amplitude": 0.1}, "cutout": {"probability": 0.5}})
    quiet = config.model_copy(update={"noise": config.noise.model_copy(update={"enabled": False})})
    df = np.stack([stacks, stacks[::-1] * 2.0], axis=1)  # (B, 2 tips, nx, ny, nz)
    seed = (7, 0, 2, 0)
    result = augment_batch_on_device(torch.from_numpy(df), seed, config).numpy()
    noiseless = augment_batch(df, seed, quiet)  # the same slices, shifts and cutouts
    np.testing.assert_array_equal(result, augment_batch_on_device(torch.from_numpy(df), seed, config).numpy())
    assert not np.array_equal(result, augment_batch_on_device(torch.from_numpy(df), (7, 0, 2, 1), config).numpy())
    cut = noiseless == 0  # cutouts (zero in both); shifts only move pixels within a slice
    np.testing.assert_array_equal(result[cut], 0)
    unshifted = augment_batch(df, seed, quiet.model_copy(update={"shift": ShiftConfig(enabled=False),
                                                                  "cutout": CutoutConfig(enabled=False)}))
    amplitude = 0.5 * 0.1 * (unshifted.max(axis=(2, 3)) - unshifted.min(axis=(2, 3)))  # (B, tips, K)
    relative = ((result - noiseless) / amplitude[:, :, None, None, :])[~cut]
    assert np.abs(relative).max() <= 1 + 1e-3 and np.abs(relative).max() > 0.99  # fills [−A, A]
    assert abs(relative.mean()) < 0.01 and relative.std() == pytest.approx(1 / np.sqrt(3), abs=0.01)
    histogram, _ = np.histogram(relative, bins=10, range=(-1, 1))
    assert histogram.min() > 0.9 * len(relative) / 10  # flat: each tenth of the range within 10 % of its share
    tip_noise = result - noiseless
    assert not np.allclose(tip_noise[:, 0], tip_noise[:, 1])  # each tip its own field
