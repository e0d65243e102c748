"""The Parquet molecule database: one row per molecule, splits stored as columns.

Schema (one row per molecule):

=================  =====================================  ===========================================
column             type                                   meaning
=================  =====================================  ===========================================
``id``             string                                 stable id, unique in the file
``source``         string                                 ``qm9``, ``file:NAME``, ``smiles``, …
``smiles``         string (nullable)                      SMILES where known
``numbers``        list<uint8>                            atomic numbers
``positions``      list<fixed_size_list<float32, 3>>      Cartesian positions, Å
``charges``        list<float32>                          partial charges, e
``n_atoms``        int16                                  number of atoms
``split_<name>``   dictionary<string> (nullable)          ``train`` / ``val`` / ``test`` / null
``licence``        string (nullable, optional)            licence of the row's source (heavy set)
=================  =====================================  ===========================================

The file's key-value metadata holds ``afm_ray.format`` and ``afm_ray.splits`` (JSON: for each
split its seed and sizes) so that training, tuning and evaluation agree on the split.

Writes are atomic: the table goes to a temporary file in the target directory which then
replaces the target with :func:`os.replace`, so an interrupted build never leaves a half file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from afm_ray.errors import InputError
from afm_ray.files import atomic_file
from afm_ray.molecules.molecule import Molecule

FORMAT_VERSION = "1"
SPLIT_PREFIX = "split_"
SPLIT_NAMES = ("train", "val", "test")

MOLECULE_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("smiles", pa.string()),
    pa.field("numbers", pa.list_(pa.uint8()), nullable=False),
    pa.field("positions", pa.list_(pa.list_(pa.float32(), 3)), nullable=False),
    pa.field("charges", pa.list_(pa.float32()), nullable=False),
    pa.field("n_atoms", pa.int16(), nullable=False),
])


def molecules_to_table(molecules: Iterable[Molecule]) -> pa.Table:
    """Convert molecules to a table with :data:`MOLECULE_SCHEMA` (no split columns)."""
    molecules = list(molecules)
    flat_positions = pa.array(
        np.concatenate([m.positions for m in molecules]).astype(np.float32).ravel() if molecules else
        np.zeros(0, np.float32))
    offsets = np.concatenate([[0], np.cumsum([m.n_atoms for m in molecules])]).astype(np.int32)
    positions = pa.ListArray.from_arrays(pa.array(offsets), pa.FixedSizeListArray.from_arrays(flat_positions, 3))
    return pa.table({
        "id": pa.array([m.id for m in molecules], pa.string()),
        "source": pa.array([m.source for m in molecules], pa.string()),
        "smiles": pa.array([m.smiles for m in molecules], pa.string()),
        "numbers": pa.array([m.numbers.astype(np.uint8) for m in molecules], pa.list_(pa.uint8())),
        "positions": positions,
        "charges": pa.array([m.charges.astype(np.float32) for m in molecules], pa.list_(pa.float32())),
        "n_atoms": pa.array([m.n_atoms for m in molecules], pa.int16()),
    }, schema=MOLECULE_SCHEMA)


def check_unique_ids(table: pa.Table, where: str) -> None:
    counts = pc.value_counts(table["id"])
    duplicated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(duplicated):
        first = duplicated[0].as_py()
        raise InputError(where, f"duplicate molecule id {first['values']!r} ({first['counts']} rows); "
                                f"{len(duplicated)} ids are duplicated in all")


def split_metadata(table: pa.Table) -> dict:
    """The ``afm_ray.splits`` metadata: ``{name: {"seed": int, "sizes": {...}}}``."""
    raw = (table.schema.metadata or {}).get(b"afm_ray.splits")
    return json.loads(raw) if raw else {}


def atom_rows(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """For every atom of ``table``, in order: its row (the molecule's index) and its atomic number, each
    (atoms,) int64."""
    counts = table["n_atoms"].to_numpy().astype(np.int64)
    rows = np.repeat(np.arange(table.num_rows), counts)
    return rows, pc.list_flatten(table["numbers"]).to_numpy().astype(np.int64)


def split_names(table: pa.Table) -> list[str]:
    return [name[len(SPLIT_PREFIX):] for name in table.column_names if name.startswith(SPLIT_PREFIX)]


def _check_output_path(path: Path) -> None:
    if path.is_dir():
        raise InputError(str(path), "database path is a directory; give a file path such as data/molecules.parquet")


def write_table_atomic(table: pa.Table, path: str | os.PathLike, splits: dict | None = None,
                       extra_metadata: dict[bytes, bytes] | None = None) -> Path:
    """Write ``table`` to ``path`` atomically (:func:`afm_ray.files.atomic_file`).

    Ids must be unique. ``splits`` (split metadata, see :func:`split_metadata`) defaults to the
    table's own; ``extra_metadata`` adds key-value pairs (a heavy-set shard's skipped molecules).
    An existing file at ``path`` is replaced only once the new one is complete.
    """
    path = Path(path)
    _check_output_path(path)
    check_unique_ids(table, str(path))
    metadata = {b"afm_ray.format": FORMAT_VERSION.encode(),
                b"afm_ray.splits": json.dumps(split_metadata(table) if splits is None else splits).encode(),
                **(extra_metadata or {})}
    table = table.replace_schema_metadata(metadata)
    with atomic_file(path) as stream:
        pq.write_table(table, stream, compression="zstd")
    return path


def read_database(path: str | os.PathLike) -> pa.Table:
    """Read a whole molecule database; clear errors for a missing, directory or non-database file."""
    path = Path(path)
    if not path.exists():
        raise InputError(str(path), "molecule database not found (build one with `afm-ray molecules build-qm9` "
                                    "or `afm-ray molecules import`)")
    _check_output_path(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(str(path), f"not a Parquet molecule database ({exc})") from None
    missing = [field.name for field in MOLECULE_SCHEMA if field.name not in table.column_names]
    if missing:
        raise InputError(str(path), f"not an afm-ray molecule database: missing columns {missing}")
    return table


def select(table: pa.Table, ids: Sequence[str] | None = None, split: str | None = None,
           subset: str | None = None, where: str = "database") -> pa.Table:
    """Rows of ``table`` with the given ids (in that order) or in one subset (train/val/test) of a split."""
    if ids is not None:
        index = {molecule_id: row for row, molecule_id in enumerate(table["id"].to_pylist())}
        missing = [molecule_id for molecule_id in ids if molecule_id not in index]
        if missing:
            raise InputError(where, f"molecule id {missing[0]!r} not in the database ({len(missing)} missing)")
        table = table.take(pa.array([index[molecule_id] for molecule_id in ids], pa.int64()))
    if split is not None:
        column = SPLIT_PREFIX + split
        if column not in table.column_names:
            raise InputError(where, f"no split named {split!r} (available: {split_names(table) or 'none'}); "
                                    f"create it with `afm-ray molecules split`")
        if subset not in SPLIT_NAMES:
            raise InputError(where, f"split subset must be one of {SPLIT_NAMES}, got {subset!r}")
        table = table.filter(pc.equal(table[column].cast(pa.string()), subset))
    return table


def table_to_molecules(table: pa.Table) -> list[Molecule]:
    """Convert rows to :class:`Molecule` objects (positions and charges as float64)."""
    counts = table["n_atoms"].to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    numbers = pc.list_flatten(table["numbers"]).to_numpy().astype(np.int64)
    positions = pc.list_flatten(pc.list_flatten(table["positions"])).to_numpy().astype(np.float64).reshape(-1, 3)
    charges = pc.list_flatten(table["charges"]).to_numpy().astype(np.float64)
    ids, sources, smiles = (table[name].to_pylist() for name in ("id", "source", "smiles"))
    return [Molecule(ids[row], numbers[start:stop], positions[start:stop], charges[start:stop],
                     sources[row], smiles[row])
            for row, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:]))]


def read_molecules(path: str | os.PathLike, ids: Sequence[str] | None = None, split: str | None = None,
                   subset: str | None = None) -> list[Molecule]:
    """Molecules from a database file: all, by ids, or one subset of a split.

    Example: ``read_molecules("qm9.parquet", split="dataset1", subset="val")``.
    """
    return table_to_molecules(select(read_database(path), ids, split, subset, where=str(path)))
