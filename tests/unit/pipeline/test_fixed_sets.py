"""A fixed set's Parquet shards without Ray: the stored format (columns, metadata) and reading it back as batches."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from afm_ray.pipeline.fixed_sets import FixedSet, _batch_to_table, table_to_batch
from afm_ray.samples.sample_batch import SampleBatch


def made(samples, offset: float = 0.0) -> SampleBatch:
    count = len(samples)
    rng = np.random.default_rng(int(samples[0]))
    return SampleBatch(np.asarray(samples), x=rng.normal(size=(count, 1, 4, 4, 3)).astype(np.float32) + offset,
                       targets={"vdw_spheres": rng.random((count, 4, 4), np.float32),
                                "xyz_classes": rng.random((count, 2, 2, 2), np.float32)},
                       skipped_samples=np.array([99]), skipped=("train sample 99: outside",),
                       sim_seconds=1.0, produce_seconds=2.0)


def test_a_shard_stores_the_input_targets_and_samples_in_the_format_older_sets_have():
    batch = made([0, 1, 2])
    table = _batch_to_table(batch)
    assert table.column_names == ["x", "vdw_spheres", "xyz_classes", "samples"]  # no skipped samples, no timings
    assert json.loads(table.schema.metadata[b"afm_ray.arrays"]) == {
        "x": {"dtype": "<f4", "shape": [1, 4, 4, 3]}, "vdw_spheres": {"dtype": "<f4", "shape": [4, 4]},
        "xyz_classes": {"dtype": "<f4", "shape": [2, 2, 2]}}
    assert table["x"].to_pylist()[1] == batch.x[1].tobytes() and table["samples"].to_pylist() == [0, 1, 2]
    back = table_to_batch(table)
    assert back.samples.tolist() == [0, 1, 2] and back.samples.dtype == np.int64 and back.df is None
    np.testing.assert_array_equal(back.x, batch.x)
    assert list(back.targets) == ["vdw_spheres", "xyz_classes"]
    for name, value in batch.targets.items():
        np.testing.assert_array_equal(back.targets[name], value)
    assert back.x.flags.writeable and len(back.skipped_samples) == 0 and back.skipped == ()


def test_a_fixed_set_reads_its_shards_as_batches_and_its_first_samples_across_shards(tmp_path):
    shards = [made([0, 1, 2]), made([3, 4], offset=10.0)]
    for index, batch in enumerate(shards):
        pq.write_table(_batch_to_table(batch), tmp_path / f"shard-{index:05d}.parquet")
    (tmp_path / "_SUCCESS").write_text(json.dumps({"samples": 5, "batches": 2, "samples_skipped": 0}))
    fixed = FixedSet(tmp_path, cache_mib=1.0)
    read = list(fixed.batches())
    assert len(fixed) == 5 and [batch.samples.tolist() for batch in read] == [[0, 1, 2], [3, 4]]
    assert next(fixed.batches()) is read[0]  # kept decoded
    assert [batch.samples.tolist() for batch in fixed.batches(rank=1, world_size=2)] == [[3, 4]]
    first = fixed.first(4)
    assert first.samples.tolist() == [0, 1, 2, 3] and first.x.shape == (4, 1, 4, 4, 3)
    np.testing.assert_array_equal(first.x[3], shards[1].x[0])
    np.testing.assert_array_equal(first.targets["xyz_classes"][:3], shards[0].targets["xyz_classes"])
