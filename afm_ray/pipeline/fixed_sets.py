"""Validation and test sets simulated once and stored as Parquet shards.

A fixed set is a folder of ``shard-NNNNN.parquet`` files, one per batch, each row a sample and
each array field a binary column (C-contiguous bytes; dtype and per-sample shape in the schema
metadata). The folder name holds a hash of everything that determines the samples (molecules,
rotations, simulator, descriptors, augmentation, seed), so a run with other settings never reads
stale data, while every run and tuning trial with the same settings reads identical samples. The
folder is written under a temporary name and renamed when complete: an interrupted
materialisation is simply redone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from afm_ray.pipeline.stream import BatchStream
from afm_ray.pipeline.work import plan_epoch
from afm_ray.train.config import TrainConfig

ARRAY_FIELDS_EXCLUDED = ("sim_seconds", "produce_seconds")
FIXED_SET_BATCH_SIZE = 16


def fixed_set_key(config: TrainConfig, subset: str, n_samples: int) -> str:
    """Hash of everything that determines the samples of a fixed set."""
    database = Path(config.data.database)
    identity = {
        "subset": subset, "n_samples": n_samples, "model": config.model.model_dump(mode="json"),
        "data": config.data.model_dump(mode="json", exclude={"fixed_set_dir"}),
        "database_bytes": database.stat().st_size if database.exists() else None,
        "database_mtime_ns": database.stat().st_mtime_ns if database.exists() else None,
        "sim": config.sim.model_dump(mode="json", exclude={"device"}),
        "height_map": config.height_map.model_dump(mode="json"),
        "augment": config.augment.model_dump(mode="json"), "seed": config.run.seed,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{config.model.name}-{config.data.split}-{subset}-{digest}"


def fixed_set_path(config: TrainConfig, subset: str, n_samples: int) -> Path:
    return Path(config.data.fixed_set_dir) / fixed_set_key(config, subset, n_samples)


def _batch_to_table(batch: dict) -> pa.Table:
    columns, metadata = {}, {}
    for name, value in batch.items():
        if name in ARRAY_FIELDS_EXCLUDED:
            continue
        array = np.ascontiguousarray(value)
        if name == "samples":
            columns[name] = pa.array(array)
            continue
        columns[name] = pa.array([row.tobytes() for row in array], pa.binary())
        metadata[name] = {"dtype": array.dtype.str, "shape": list(array.shape[1:])}
    table = pa.table(columns)
    return table.replace_schema_metadata({b"afm_ray.arrays": json.dumps(metadata).encode()})


def table_to_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """Inverse of the shard encoding: ``{name: (B, …) array}``."""
    metadata = json.loads(table.schema.metadata[b"afm_ray.arrays"])
    batch = {"samples": table["samples"].to_numpy()}
    for name, info in metadata.items():
        raw = b"".join(table[name].to_pylist())
        batch[name] = np.frombuffer(raw, dtype=np.dtype(info["dtype"])).reshape(-1, *info["shape"]).copy()
    return batch


def materialize(config: TrainConfig, subset: str, n_samples: int, actors: list, progress: bool = True) -> Path:
    """Simulate ``subset`` once with ``actors`` (if not stored yet); returns the shard folder."""
    path = fixed_set_path(config, subset, n_samples)
    if (path / "_SUCCESS").exists():
        return path
    temporary = path.with_name(path.name + ".partial")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    specs = plan_epoch(n_samples, FIXED_SET_BATCH_SIZE, config.run.seed, 0, split=subset, shuffle=False,
                       drop_last=False)
    stream = BatchStream(actors, specs, max_in_flight=2 * len(actors))
    with tqdm(total=n_samples, desc=f"simulating {subset} set", unit="sample", disable=not progress) as bar:
        for spec, batch in stream:
            pq.write_table(_batch_to_table(batch), temporary / f"shard-{spec.index:05d}.parquet")
            bar.update(len(spec.samples))
    (temporary / "_SUCCESS").write_text(json.dumps({"samples": n_samples, "batches": len(specs)}))
    shutil.rmtree(path, ignore_errors=True)
    temporary.rename(path)
    return path


class FixedSet:
    """Read a materialised fixed set batch by batch (shards in order)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "_SUCCESS").exists():
            raise FileNotFoundError(f"{self.path}: fixed set is not complete (no _SUCCESS marker)")
        self.shards = sorted(self.path.glob("shard-*.parquet"))

    def __len__(self) -> int:
        return json.loads((self.path / "_SUCCESS").read_text())["samples"]

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        for shard in self.shards:
            yield table_to_batch(pq.read_table(shard))

    def first(self, count: int) -> dict[str, np.ndarray]:
        """The first ``count`` samples (for figures on fixed validation samples)."""
        collected: list[dict] = []
        total = 0
        for batch in self.batches():
            collected.append(batch)
            total += len(batch["samples"])
            if total >= count:
                break
        return {name: np.concatenate([b[name] for b in collected])[:count] for name in collected[0]}
