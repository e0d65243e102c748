"""The batch every batch maker returns: one of x / df, per-sample arrays, bytes, device arrays, slicing, transport."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from afm_ray.samples.sample_batch import MadeBy, SampleBatch

B, C, NX, NY, K = 3, 2, 8, 6, 4


def batch(samples=(4, 7, 9), raw: bool = False, **fields) -> SampleBatch:
    count = len(samples)
    inputs = ({"df": np.ones((count, C, NX, NY, 10), np.float16)} if raw
              else {"x": np.ones((count, C, NX, NY, K), np.float32)})
    targets = {"height_map": np.full((count, NX, NY), 2.0, np.float32),
               "xyz_offsets": np.zeros((count, 3, 2, 2), np.float32)}
    return SampleBatch(np.asarray(samples), **inputs, targets=targets, **fields)


def test_a_batch_holds_exactly_one_of_the_input_and_the_raw_df():
    x = np.zeros((1, C, NX, NY, K), np.float32)
    with pytest.raises(ValueError, match="exactly one of x .* and df .*, got neither"):
        SampleBatch(np.array([0]))
    with pytest.raises(ValueError, match="exactly one of x .* and df .*, got both"):
        SampleBatch(np.array([0]), x=x, df=x)
    made, raw = batch(), batch(raw=True)
    assert made.input_name == "x" and made.inputs is made.x and made.df is None
    assert raw.input_name == "df" and raw.inputs is raw.df and raw.x is None


def test_every_array_has_one_row_per_sample():
    with pytest.raises(ValueError, match="height_map has 2 samples .*, samples has 3"):
        SampleBatch(np.arange(3), x=np.zeros((3, C, NX, NY, K), np.float32),
                    targets={"height_map": np.zeros((2, NX, NY), np.float32)})
    with pytest.raises(ValueError, match="x has 1 samples"):
        SampleBatch(np.arange(3), x=np.zeros((1, C, NX, NY, K), np.float32))
    empty = SampleBatch(np.zeros(0, np.int64), x=np.zeros((0, C, NX, NY, K), np.float32),
                        skipped_samples=[5], skipped=["train sample 5 (molecule m, rotation 0): outside"])
    assert len(empty) == 0 and empty.skipped_samples.dtype == np.int64 and empty.skipped == (
        "train sample 5 (molecule m, rotation 0): outside",)


def test_len_bytes_and_what_goes_to_the_device():
    made = batch(skipped_samples=np.array([11]))
    assert len(made) == B and made.samples.dtype == np.int64
    assert made.nbytes == (B * C * NX * NY * K * 4 + B * NX * NY * 4 + B * 3 * 2 * 2 * 4  # x, two targets
                           + B * 8 + 1 * 8)  # samples, skipped samples
    arrays = made.float_arrays()
    assert list(arrays) == ["x", "height_map", "xyz_offsets"]  # the input first, then the targets in order
    assert arrays["x"] is made.x and arrays["height_map"] is made.targets["height_map"]
    raw = batch(raw=True)
    assert list(raw.float_arrays()) == ["df", "height_map", "xyz_offsets"] and raw.inputs is raw.df
    assert raw.nbytes == B * C * NX * NY * 10 * 2 + B * NX * NY * 4 + B * 3 * 2 * 2 * 4 + B * 8
    assert made.made_by is None and made.sim_seconds == made.produce_seconds == 0.0


def test_batches_are_joined_and_cut_for_the_figures_samples():
    first, second = batch((1, 2), sim_seconds=0.5, skipped_samples=[3], skipped=["three"]), batch((4, 5, 6))
    second.x[:] = 2.0
    joined = SampleBatch.concatenate([first, second])
    assert joined.samples.tolist() == [1, 2, 4, 5, 6] and joined.x[:, 0, 0, 0, 0].tolist() == [1, 1, 2, 2, 2]
    assert joined.targets.keys() == first.targets.keys() and joined.targets["height_map"].shape == (5, NX, NY)
    assert joined.skipped_samples.tolist() == [3] and joined.skipped == ("three",) and joined.sim_seconds == 0.5
    head = joined.head(3)
    assert head.samples.tolist() == [1, 2, 4] and head.x.shape == (3, C, NX, NY, K)
    assert head.targets["xyz_offsets"].shape == (3, 3, 2, 2) and len(head.skipped_samples) == 0
    assert len(joined.head(10)) == 5
    with pytest.raises(ValueError, match="different inputs or targets"):
        SampleBatch.concatenate([first, batch(raw=True)])


def test_the_arrays_travel_out_of_band_as_rays_pickle_5_does():
    made = batch(made_by=MadeBy(123, 1.0, 2.5))
    buffers = []
    data = pickle.dumps(made, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 5 and len(data) < 2000  # samples, skipped samples, x, two targets: no copy in the pickle
    again = pickle.loads(data, buffers=buffers)
    assert again.made_by == (123, 1.0, 2.5) and again.made_by.finished_s == 2.5
    for name, value in made.float_arrays().items():
        np.testing.assert_array_equal(again.float_arrays()[name], value)
