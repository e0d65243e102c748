"""Database statistics in the form of thesis Table 1 (molecules containing each element).

``afm-ray molecules info`` prints the whole database, then the light molecules (only H, C, N, O, F)
and the heavy ones (any other element) each beside the thesis' column of Table 1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_ray.elements import ELEMENT_TABLE
from afm_ray.molecules.database import atom_rows, split_metadata, split_names
from afm_ray.molecules.splits import heavy_mask, split_counts

MAX_SOURCES_SHOWN = 8

# Thesis Table 1: molecules containing each element, per set (the light set is QM9)
THESIS_TABLE1 = {
    "light": ({"H": 133835, "C": 133882, "N": 82859, "O": 113938, "F": 2163}, 133885),
    "heavy": ({"H": 4205, "C": 4246, "N": 2251, "O": 2734, "F": 210, "Si": 127, "P": 375, "S": 1705, "Cl": 2122,
               "Br": 444}, 4317),
}


def element_molecule_counts(table: pa.Table) -> dict[str, int]:
    """For each element present: the number of molecules that contain it (repeats in a molecule count once)."""
    rows, numbers = atom_rows(table)
    pairs = np.unique(rows * 256 + numbers)
    per_element = np.bincount(pairs % 256, minlength=256)
    return {ELEMENT_TABLE.symbols[z]: int(per_element[z]) for z in np.flatnonzero(per_element)}


def summarize(table: pa.Table) -> dict:
    """Counts, sources, size range, Table-1 element statistics and splits of a database table."""
    n_atoms = table["n_atoms"].to_numpy()
    sources = sorted(pc.value_counts(table["source"]).to_pylist(), key=lambda item: -item["counts"])
    heavy = heavy_mask(table) if table.num_rows else np.zeros(0, bool)
    groups = {group: table.filter(pa.array(mask)) for group, mask in (("light", ~heavy), ("heavy", heavy))}
    return {
        "molecules": table.num_rows,
        "atoms": int(n_atoms.sum()),
        "atoms_per_molecule": (int(n_atoms.min()), int(n_atoms.max())) if table.num_rows else (0, 0),
        "sources": {item["values"]: item["counts"] for item in sources},
        "elements": element_molecule_counts(table) if table.num_rows else {},
        "sets": {group: {"molecules": part.num_rows, "elements": element_molecule_counts(part)}
                 for group, part in groups.items() if part.num_rows},
        "splits": {name: {"counts": split_counts(table, name), **split_metadata(table).get(name, {})}
                   for name in split_names(table)},
    }


def format_summary(summary: dict, path: str) -> str:
    total = max(summary["molecules"], 1)
    low, high = summary["atoms_per_molecule"]
    lines = [f"{path}: {summary['molecules']:,} molecules, {summary['atoms']:,} atoms, {low}–{high} atoms per molecule",
             "sources: " + ", ".join(f"{name} {count:,}" for name, count in
                                     list(summary["sources"].items())[:MAX_SOURCES_SHOWN])
             + (" …" if len(summary["sources"]) > MAX_SOURCES_SHOWN else ""),
             "", f"{'element':<8}{'N_mol':>10}{'% of molecules':>16}"]
    order = sorted(summary["elements"], key=ELEMENT_TABLE.number)
    lines += [f"{symbol:<8}{summary['elements'][symbol]:>10,}{100 * summary['elements'][symbol] / total:>16.3f}"
              for symbol in order]
    for group, found in summary.get("sets", {}).items():
        thesis_counts, thesis_total = THESIS_TABLE1[group]
        found_total = found["molecules"]
        lines += ["", f"{group} set beside thesis Table 1: {found_total:,} molecules (thesis {thesis_total:,})",
                  f"{'element':<8}{'N_mol':>10}{'%':>9}{'thesis N_mol':>14}{'thesis %':>10}"]
        for symbol in sorted(set(found["elements"]) | set(thesis_counts), key=ELEMENT_TABLE.number):
            count, thesis = found["elements"].get(symbol, 0), thesis_counts.get(symbol, 0)
            lines.append(f"{symbol:<8}{count:>10,}{100 * count / found_total:>9.1f}{thesis:>14,}"
                         f"{100 * thesis / thesis_total:>10.1f}")
    for name, split in summary["splits"].items():
        counts = split["counts"]
        lines.append(f"split {name} (seed {split.get('seed')}): train {counts['train']:,} / "
                     f"val {counts['val']:,} / test {counts['test']:,}")
    return "\n".join(lines)
