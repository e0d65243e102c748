"""Reproducible train/val/test splits (thesis Table 5), stored as columns of the database.

A split scheme names how many *light* molecules (only H, C, N, O, F: the QM9-like set) and how
many *heavy* molecules (any other element, e.g. Si, P, S, Cl, Br) go to train / val / test:

=========  ======================  ======================
scheme     light train/val/test    heavy train/val/test
=========  ======================  ======================
dataset1   5000 / 1500 / 2500      0 / 0 / 0
dataset2   3500 / 900 / 1200       2500 / 600 / 1200
=========  ======================  ======================

Assignment is a seeded permutation of the ids sorted lexicographically, so the same database and
seed always give the same split whatever the row order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_ray.errors import InputError
from afm_ray.molecules.database import SPLIT_NAMES, SPLIT_PREFIX, atom_rows, split_metadata

LIGHT_ELEMENTS = (1, 6, 7, 8, 9)


@dataclass(frozen=True)
class SplitSizes:
    """Molecule counts of one split, per element class and subset."""

    light: tuple[int, int, int]
    heavy: tuple[int, int, int] = (0, 0, 0)

    def as_dict(self) -> dict:
        return {"light": dict(zip(SPLIT_NAMES, self.light)), "heavy": dict(zip(SPLIT_NAMES, self.heavy))}


THESIS_SPLITS = {
    "dataset1": SplitSizes(light=(5000, 1500, 2500)),
    "dataset2": SplitSizes(light=(3500, 900, 1200), heavy=(2500, 600, 1200)),
}


def heavy_mask(table: pa.Table) -> np.ndarray:
    """(rows,) bool: the molecule contains an element other than H, C, N, O, F."""
    row_of_atom, numbers = atom_rows(table)
    is_heavy_atom = ~np.isin(numbers, LIGHT_ELEMENTS)
    return np.bincount(row_of_atom, weights=is_heavy_atom, minlength=table.num_rows) > 0


def assign_split(table: pa.Table, name: str, sizes: SplitSizes, seed: int = 0) -> pa.Table:
    """Return ``table`` with column ``split_<name>`` (train/val/test/null) and the split's metadata."""
    if not name.isidentifier():
        raise InputError("--name", f"split name must be an identifier (letters, digits, _), got {name!r}")
    for group, counts in (("light", sizes.light), ("heavy", sizes.heavy)):
        if any(count < 0 for count in counts):
            raise InputError(f"split {name}", f"{group} sizes must be ≥ 0, got {counts}")
    labels = np.full(table.num_rows, None, dtype=object)
    heavy = heavy_mask(table)
    ids = np.array(table["id"].to_pylist(), dtype=object)
    rng = np.random.default_rng(seed)
    for group, mask, counts in (("light", ~heavy, sizes.light), ("heavy", heavy, sizes.heavy)):
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(ids[rows], kind="stable")]
        needed = sum(counts)
        if needed > rows.size:
            raise InputError(f"split {name}", f"needs {needed} {group} molecules ({'/'.join(map(str, counts))}) "
                                              f"but the database has {rows.size}")
        chosen = rows[rng.permutation(rows.size)[:needed]]
        for subset, start, stop in zip(SPLIT_NAMES, np.cumsum([0, *counts[:-1]]), np.cumsum(counts)):
            labels[chosen[start:stop]] = subset
    column = pa.array(labels.tolist(), pa.string()).dictionary_encode()
    column_name = SPLIT_PREFIX + name
    if column_name in table.column_names:
        table = table.drop_columns([column_name])
    metadata = split_metadata(table)
    metadata[name] = {"seed": seed, "sizes": sizes.as_dict()}
    table = table.append_column(column_name, column)
    return table.replace_schema_metadata({b"afm_ray.splits": json.dumps(metadata).encode()})


def split_counts(table: pa.Table, name: str, rows: np.ndarray | None = None) -> dict[str, int]:
    """Molecules per subset of split ``name``, among ``rows`` ((rows,) bool, e.g. :func:`heavy_mask`) or all."""
    values = table[SPLIT_PREFIX + name].cast(pa.string())
    if rows is not None:
        values = values.filter(pa.array(rows))
    return {subset: int(pc.sum(pc.equal(values, subset)).as_py() or 0) for subset in SPLIT_NAMES}
