"""QM9 (the thesis' light set) from the ``qm9pack`` package's CSV files → molecule table.

``qm9pack`` ships QM9 as three CSV parts whose columns hold Python-literal strings:
``Elements`` (``['C','H',…]``), ``XYZ_Ang`` (``[[x,y,z],…]``, Å) and ``Mulliken_pop``
(``[q,…]``, e). They are parsed column-wise with Arrow compute kernels (no per-molecule Python),
which keeps a full build well under a minute on two cores.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from tqdm import tqdm

from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError
from afm_ray.molecules.database import MOLECULE_SCHEMA

QM9_COLUMNS = ["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", "Mulliken_pop"]
QM9_PART_GLOB = "qm9_part*.csv"


def qm9pack_csv_files() -> list[Path]:
    """The CSV parts inside the installed ``qm9pack`` package."""
    # find_spec locates the package without importing it: qm9pack's __init__ imports
    # pkg_resources, which recent setuptools no longer provides.
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("qm9pack", "the qm9pack package is not installed: pip install 'afm-ray[qm9]'")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return sorted(folder.glob(QM9_PART_GLOB))


def _strip_list_literal(column: pa.ChunkedArray, characters: str) -> pa.ChunkedArray:
    return pc.replace_substring_regex(column, f"[{characters}]", "")


def _parse_float_lists(column: pa.ChunkedArray, where: str, field: str) -> pa.ChunkedArray:
    pieces = pc.split_pattern(_strip_list_literal(column, r"\[\]\s"), ",")
    try:
        return pieces.cast(pa.list_(pa.float64()))
    except pa.ArrowInvalid as exc:
        raise InputError(f"{where}: column {field}", f"non-numeric value ({exc})") from None


def parse_qm9_csv(path: str | os.PathLike) -> pa.Table:
    """Parse one qm9pack CSV part into a table with :data:`MOLECULE_SCHEMA`."""
    where = str(path)
    try:
        raw = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(include_columns=QM9_COLUMNS))
    except (pa.ArrowInvalid, KeyError) as exc:
        raise InputError(where, f"not a qm9pack CSV file ({exc})") from None
    n_atoms = raw["N_atoms"].to_numpy()
    symbols = pc.split_pattern(_strip_list_literal(raw["Elements"], r"\[\]'\s"), ",")
    flat_symbols = pc.list_flatten(symbols)
    distinct = pc.unique(flat_symbols).to_pylist()
    numbers_of = {symbol: ELEMENT_TABLE.number(symbol, where=f"{where}: column Elements") for symbol in distinct}
    flat_numbers = pc.index_in(flat_symbols, pa.array(distinct)).to_numpy()
    flat_numbers = np.array([numbers_of[s] for s in distinct], np.uint8)[flat_numbers]

    positions = _parse_float_lists(raw["XYZ_Ang"], where, "XYZ_Ang")
    charges = _parse_float_lists(raw["Mulliken_pop"], where, "Mulliken_pop")
    for name, lists, per_atom in (("Elements", symbols, 1), ("XYZ_Ang", positions, 3), ("Mulliken_pop", charges, 1)):
        lengths = pc.list_value_length(lists).to_numpy()
        bad = np.flatnonzero(lengths != per_atom * n_atoms)
        if bad.size:
            row = int(bad[0])
            raise InputError(f"{where}: row {row + 2}, column {name}",
                             f"has {lengths[row]} values for N_atoms={n_atoms[row]}")
    flat_positions = pc.list_flatten(positions).to_numpy()
    flat_charges = pc.list_flatten(charges).to_numpy()
    for name, values in (("XYZ_Ang", flat_positions), ("Mulliken_pop", flat_charges)):
        if not np.isfinite(values).all():
            raise InputError(f"{where}: column {name}", "contains NaN or infinite values")

    offsets = pa.array(np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int32))
    indices = raw["Index"].to_numpy()
    return pa.table({
        "id": pa.array([f"qm9:{index:06d}" for index in indices], pa.string()),
        "source": pa.array(["qm9"] * len(indices), pa.string()),
        "smiles": raw["SMILES"].combine_chunks().cast(pa.string()),
        "numbers": pa.ListArray.from_arrays(offsets, pa.array(flat_numbers, pa.uint8())),
        "positions": pa.ListArray.from_arrays(
            offsets, pa.FixedSizeListArray.from_arrays(pa.array(flat_positions.astype(np.float32)), 3)),
        "charges": pa.ListArray.from_arrays(offsets, pa.array(flat_charges.astype(np.float32))),
        "n_atoms": pa.array(n_atoms.astype(np.int16)),
    }, schema=MOLECULE_SCHEMA)


def read_qm9(csv_files: list[Path] | None = None, progress: bool = True) -> pa.Table:
    """All QM9 molecules in the given CSV parts (default: those in ``qm9pack``), sorted by index."""
    csv_files = qm9pack_csv_files() if csv_files is None else list(csv_files)
    if not csv_files:
        raise InputError("qm9pack", f"no {QM9_PART_GLOB} files found")
    tables = [parse_qm9_csv(path) for path in tqdm(csv_files, desc="parsing QM9", unit="part", disable=not progress)]
    table = pa.concat_tables(tables)
    return table.take(pc.sort_indices(table, [("id", "ascending")]))
