"""Building the heavy molecule set on Ray: one task per shard, a progress bar, atomic shards, resume.

The candidates (:func:`afm_ray.molecules.heavy.candidates`, a deterministic order) are cut into
shards of ``shard_size`` molecules; each shard is one Ray task (1 CPU, so OpenMP in tblite runs one
thread per task) that writes ``<out>.shards/shard-NNNNN.parquet`` atomically. A shard file that
exists is finished, so a build that is interrupted (killed, out of time, ``max_shards``) continues
where it stopped when run again with the same settings: finished shards are read, not rebuilt.
``<out>.shards/manifest.json`` records the settings and the candidates' digest; a run with other
settings is refused until the folder is removed (``fresh=True``).

When every shard is done the molecules are merged, :func:`~afm_ray.molecules.heavy.select_like_table1`
picks the set, and the database and ``<out stem>.skipped.csv`` (every skipped molecule with its
reason) are written atomically. Runs on a local Ray or the cluster in ``RAY_ADDRESS``; on a
cluster of several nodes ``out`` must be an absolute path on storage every node mounts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from afm_ray.errors import InputError
from afm_ray.files import atomic_file
from afm_ray.molecules.database import write_table_atomic
from afm_ray.molecules.heavy import (Candidate, SkippedMolecule, build_shard, read_shards, select_like_table1,
                                     write_skipped_csv)

MANIFEST_NAME = "manifest.json"


@dataclass
class HeavyBuildReport:
    """What a build did. ``complete`` is False when it stopped at ``max_shards`` (run again to resume)."""

    shards_total: int
    shards_resumed: int
    shards_built: int
    complete: bool
    molecules_built: int = 0
    molecules_in_database: int = 0
    skipped: list[SkippedMolecule] = field(default_factory=list)
    skipped_csv: Path | None = None


def shards_dir(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.parquet"


def build_heavy_set(out: Path, entries: list[Candidate], optimize: str = "mmff", seed: int = 0,
                    shard_size: int = 32, n_molecules: int | None = None, max_shards: int | None = None,
                    num_cpus: int | None = None, fresh: bool = False, progress: bool = True) -> HeavyBuildReport:
    """Build ``entries`` into the database ``out``; resumes from ``<out>.shards`` (see the module docstring).

    ``n_molecules``: keep the subset closest to Table 1's heavy column (None: keep all built).
    """
    if shard_size < 1:
        raise InputError("--shard-size", f"must be ≥ 1, got {shard_size}")
    if not entries:
        raise InputError("build-heavy", "no candidate molecules")
    folder = shards_dir(out)
    if fresh and folder.exists():
        shutil.rmtree(folder)
    _check_manifest(folder, entries, optimize, seed, shard_size)
    chunks = [entries[start:start + shard_size] for start in range(0, len(entries), shard_size)]
    finished = [shard_path(folder, index).exists() for index in range(len(chunks))]
    done = [index for index, exists in enumerate(finished) if exists]
    todo = [index for index, exists in enumerate(finished) if not exists][:max_shards]
    for stale in folder.glob(".shard-*.tmp"):  # a task killed while writing: its shard is built again
        stale.unlink()
    if done:
        print(f"resuming: {len(done)} of {len(chunks)} shards already built in {folder}", flush=True)
    if todo:
        _run_tasks(folder, chunks, todo, optimize, seed, num_cpus,
                   initial=sum(len(chunks[index]) for index in done), progress=progress)
    report = HeavyBuildReport(len(chunks), len(done), len(todo), complete=len(done) + len(todo) == len(chunks))
    if not report.complete:
        return report
    table, report.skipped = read_shards([shard_path(folder, index) for index in range(len(chunks))])
    report.molecules_built = table.num_rows
    if n_molecules is not None:
        table = select_like_table1(table, n_molecules)
    write_table_atomic(table, out)
    report.molecules_in_database = table.num_rows
    report.skipped_csv = write_skipped_csv(report.skipped, out.with_name(out.stem + ".skipped.csv"))
    return report


def _check_manifest(folder: Path, entries: list[Candidate], optimize: str, seed: int, shard_size: int) -> None:
    digest = hashlib.sha256("\n".join(f"{entry.id} {entry.smiles}" for entry in entries).encode()).hexdigest()
    manifest = {"optimize": optimize, "seed": seed, "shard_size": shard_size, "candidates": len(entries),
                "candidates_sha256": digest}
    path = folder / MANIFEST_NAME
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != manifest:
            changed = sorted(key for key in manifest if recorded.get(key) != manifest[key])
            raise InputError(str(folder), f"shards were built with other settings ({', '.join(changed)} differ); "
                                          f"pass --fresh to discard them, or repeat the first command")
        return
    with atomic_file(path, text=True) as stream:
        stream.write(json.dumps(manifest, indent=1))


def _run_tasks(folder: Path, chunks: list[list[Candidate]], todo: list[int], optimize: str, seed: int,
               num_cpus: int | None, initial: int, progress: bool) -> None:
    import ray
    from tqdm import tqdm

    from afm_ray.pipeline.cluster import ensure_ray, require_shared_paths

    ensure_ray(num_cpus=num_cpus, quiet=True)
    if not folder.is_absolute():
        require_shared_paths({"--out": str(folder.parent)})
    folder = folder.resolve()  # the tasks' working directory need not be the driver's
    build = ray.remote(num_cpus=1, max_retries=2)(_build_shard_task)
    in_flight_limit = 2 * max(int(ray.cluster_resources().get("CPU", 1)), 1)
    pending: dict = {}
    queue = list(todo)
    total = sum(len(chunk) for chunk in chunks)
    skipped_this_run = 0
    with tqdm(total=total, initial=initial, unit="mol", desc="heavy set", disable=not progress) as bar:
        while queue or pending:
            while queue and len(pending) < in_flight_limit:
                index = queue.pop(0)
                entries = [asdict(entry) for entry in chunks[index]]
                pending[build.remote(entries, str(shard_path(folder, index)), optimize, seed)] = index
            finished, _ = ray.wait(list(pending), num_returns=1)
            for reference in finished:
                built, skipped = ray.get(reference)
                del pending[reference]
                skipped_this_run += skipped
                bar.update(built + skipped)
                bar.set_postfix(skipped=skipped_this_run)


def _build_shard_task(entries: list[dict], path: str, optimize: str, seed: int) -> tuple[int, int]:
    return build_shard([Candidate(**entry) for entry in entries], Path(path), optimize, seed)
