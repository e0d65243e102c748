"""Validation and test sets simulated once and stored as Parquet shards.

A fixed set is a folder of ``shard-NNNNN.parquet`` files, one per batch, each row a sample and
each array field a binary column (C-contiguous bytes; dtype and per-sample shape in the schema
metadata). The folder name holds a hash of exactly what determines the samples (the database's
content, split, evaluation rotations, model targets, simulator, descriptors, augmentation, seed;
not the database's path nor any training-only setting), so every run and tuning trial with the same
settings reads identical samples and no run reads stale ones.

Builds are safe on shared storage: each build writes its own uniquely named temporary folder and
renames it into place, which is atomic; when two jobs build the same set at once the second rename
fails, and that job deletes its copy and uses the winner's. An interrupted build leaves only a
temporary folder, never a half-written set.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from afm_ray.pipeline.settings import SampleSettings
from afm_ray.pipeline.stream import BatchStream
from afm_ray.samples.plan import plan_epoch
from afm_ray.samples.sample_batch import SampleBatch

log = logging.getLogger("afm_ray.pipeline")
FIXED_SET_BATCH_SIZE = 16


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


SAMPLE_DRAWS_VERSION = 2
"""How a sample's random scan parameters are drawn from its seed (2: one SplitMix64 stream per sample):
sets stored by an afm-ray that drew them otherwise are other samples, so they are not reused."""


def fixed_set_key(settings: SampleSettings, subset: str, n_samples: int, seed: int) -> str:
    """Hash of what determines the samples of a fixed set (see the module doc)."""
    database = Path(settings.data.database)
    stat = database.stat() if database.exists() else None
    identity = {"subset": subset, "n_samples": n_samples, "seed": seed, "draws": SAMPLE_DRAWS_VERSION,
                **settings.eval_identity(),
                "database": _file_digest(str(database), stat.st_size, stat.st_mtime_ns) if stat else str(database)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{settings.model}-{settings.data.split}-{subset}-{digest}"


def fixed_set_path(settings: SampleSettings, subset: str, n_samples: int, seed: int) -> Path:
    return Path(settings.data.fixed_set_dir) / fixed_set_key(settings, subset, n_samples, seed)


def _batch_to_table(batch: SampleBatch) -> pa.Table:
    """A shard: a binary column per array (``x``, then the targets by name), a row per sample, and ``samples``;
    the skipped samples and timings are not stored."""
    columns, metadata = {}, {}
    for name, value in batch.float_arrays().items():
        array = np.ascontiguousarray(value)
        columns[name] = pa.array([row.tobytes() for row in array], pa.binary())
        metadata[name] = {"dtype": array.dtype.str, "shape": list(array.shape[1:])}
    columns["samples"] = pa.array(np.ascontiguousarray(batch.samples))
    table = pa.table(columns)
    return table.replace_schema_metadata({b"afm_ray.arrays": json.dumps(metadata).encode()})


def table_to_batch(table: pa.Table) -> SampleBatch:
    """Inverse of the shard encoding: the stored samples, input (``x``; ``df`` where stored) and targets."""
    metadata = json.loads(table.schema.metadata[b"afm_ray.arrays"])
    arrays = {}
    for name, info in metadata.items():
        raw = b"".join(table[name].to_pylist())
        arrays[name] = np.frombuffer(raw, dtype=np.dtype(info["dtype"])).reshape(-1, *info["shape"]).copy()
    inputs = {name: arrays.pop(name) for name in ("x", "df") if name in arrays}
    return SampleBatch(table["samples"].to_numpy(), **inputs, targets=arrays)


def materialize(settings: SampleSettings, subset: str, n_samples: int, seed: int, pool,
                progress: bool = True, batch_timeout_s: float = 300.0, max_attempts: int = 3) -> Path:
    """Simulate ``subset`` once with ``pool`` unless it is stored already; returns the shard folder.

    ``pool``: the simulation pool's dispatcher, or a list of simulation actors (then
    ``batch_timeout_s`` caps a call's time, see :class:`~afm_ray.pipeline.stream.BatchStream`).

    Samples the actors skip are left out (and logged); a batch dropped after ``max_attempts`` fails
    the build, since a fixed set must be complete.
    """
    path = fixed_set_path(settings, subset, n_samples, seed)
    if (path / "_SUCCESS").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.building-{uuid.uuid4().hex[:12]}")
    temporary.mkdir()
    try:
        specs = plan_epoch(n_samples, FIXED_SET_BATCH_SIZE, seed, 0, split=subset, shuffle=False, drop_last=False)
        stream = BatchStream(pool, specs, tenant=f"fixed-{subset}-{uuid.uuid4().hex[:8]}",
                             batch_timeout_s=batch_timeout_s, max_attempts=max_attempts)
        stored = 0
        with tqdm(total=n_samples, desc=f"simulating {subset} set", unit="sample", disable=not progress) as bar:
            for spec, batch in stream:
                if batch is None:
                    raise RuntimeError(f"{subset} set: batch {spec.index} failed on every attempt; see the log")
                if len(batch):
                    pq.write_table(_batch_to_table(batch), temporary / f"shard-{spec.index:05d}.parquet")
                stored += len(batch)
                bar.update(len(spec.samples))
        if stored == 0:
            raise RuntimeError(f"{subset} set: every one of its {n_samples} samples was skipped; see the log")
        stream.close()
        (temporary / "_SUCCESS").write_text(json.dumps({"samples": stored, "batches": len(specs),
                                                        "samples_skipped": stream.stats.samples_skipped}))
        _publish(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return path


def _publish(temporary: Path, path: Path) -> None:
    """Rename ``temporary`` to ``path`` atomically; if another build got there first, keep theirs."""
    try:
        os.rename(temporary, path)
        return
    except OSError:
        if (path / "_SUCCESS").exists():
            log.info("%s was built by another job at the same time; using that one", path)
            return
    # a folder without _SUCCESS is no set: an earlier afm-ray's leftover. Move it aside, then retry.
    stale = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(path, stale)
    except OSError:
        pass
    if (stale / "_SUCCESS").exists():  # another job published between our two looks: put it back
        try:
            os.rename(stale, path)
        except OSError:
            shutil.rmtree(stale, ignore_errors=True)
        return
    shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(temporary, path)
    except OSError:
        if not (path / "_SUCCESS").exists():
            raise


def available_memory_bytes() -> int:
    """Memory this node can give without swapping: Linux' MemAvailable (page cache included), else the free pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cache_budget_mib(available_bytes: int, ranks_on_node: int) -> float:
    """``data.fixed_set_cache_mib: None``: half of ``available_bytes`` (memory available when the training ranks
    start) shared by the ``ranks_on_node`` ranks of a node, in MiB. A rank caches only its 1/W of the set, so
    the whole validation set stays decoded in memory unless that would take more than half the node's free
    memory (DSH: ~6 GiB, ES ~10 GiB at thesis size; the fixed 1 GiB of afm-ray ≤ 0.2 re-read 5 GiB a
    single rank every epoch)."""
    return 0.5 * available_bytes / max(ranks_on_node, 1) / 2**20


class FixedSet:
    """Read a materialised fixed set batch by batch (shards in order), optionally one rank's share.

    ``cache_mib``: decoded shards are kept in memory after their first read while they fit in this
    bound (a validation set is read every epoch); 0 keeps nothing.
    """

    def __init__(self, path: str | Path, cache_mib: float = 0.0):
        self.path = Path(path)
        if not (self.path / "_SUCCESS").exists():
            raise FileNotFoundError(f"{self.path}: fixed set is not complete (no _SUCCESS marker)")
        self.shards = sorted(self.path.glob("shard-*.parquet"))
        self.cache_bytes = int(cache_mib * 2**20)
        self._cache: dict[Path, SampleBatch] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return json.loads((self.path / "_SUCCESS").read_text())["samples"]

    def batches(self, rank: int = 0, world_size: int = 1) -> Iterator[SampleBatch]:
        """Shards ``rank, rank + world_size, …`` decoded, one :class:`SampleBatch` each (``x`` and the targets)."""
        for shard in self.shards[rank::world_size]:
            batch = self._cache.get(shard)
            if batch is None:
                batch = table_to_batch(pq.read_table(shard))
                size = batch.nbytes
                if self._cached_bytes + size <= self.cache_bytes:
                    self._cache[shard] = batch
                    self._cached_bytes += size
            yield batch

    def first(self, count: int) -> SampleBatch:
        """The first ``count`` samples (for figures on fixed validation samples)."""
        collected: list[SampleBatch] = []
        total = 0
        for batch in self.batches():
            collected.append(batch)
            total += len(batch)
            if total >= count:
                break
        return SampleBatch.concatenate(collected).head(count)
