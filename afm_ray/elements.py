"""The element table: vdW and covalent radii (Å) and Lennard-Jones parameters (Å, eV).

The table is package data (``afm_ray/data/elements.csv``, sources cited in its header). Look-ups
are vectorised over arrays of atomic numbers::

    from afm_ray.elements import ELEMENT_TABLE
    r_half, eps = ELEMENT_TABLE.lj_params([6, 1, 1])   # Å, eV
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

import numpy as np

from afm_ray.errors import InputError

_MAX_Z = 119


@dataclass(frozen=True)
class ElementTable:
    """Per-element constants indexed by atomic number Z (arrays of length 119; NaN where unknown)."""

    symbols: tuple[str, ...]
    vdw_radius_angstrom: np.ndarray
    covalent_radius_angstrom: np.ndarray
    lj_rmin_half_angstrom: np.ndarray
    lj_epsilon_ev: np.ndarray
    ppafm_disk_radius_angstrom: np.ndarray

    @classmethod
    def from_csv(cls, text: str, where: str = "elements.csv") -> "ElementTable":
        symbols = [""] * _MAX_Z
        columns = {name: np.full(_MAX_Z, np.nan) for name in
                   ("vdw_radius_angstrom", "covalent_radius_angstrom", "lj_rmin_half_angstrom", "lj_epsilon_ev",
                    "ppafm_disk_radius_angstrom")}
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        for row_number, row in enumerate(csv.DictReader(lines), start=2):
            try:
                z = int(row["atomic_number"])
                symbols[z] = row["symbol"].strip()
                for name, values in columns.items():
                    values[z] = float(row[name])
            except (KeyError, ValueError, IndexError) as exc:
                raise InputError(f"{where}: row {row_number}", f"cannot read element row {row!r} ({exc})") from None
        return cls(tuple(symbols), *(columns[name] for name in columns))

    @classmethod
    def default(cls) -> "ElementTable":
        text = resources.files("afm_ray").joinpath("data/elements.csv").read_text(encoding="utf-8")
        return cls.from_csv(text)

    # -- look-ups --------------------------------------------------------------------------
    def check_numbers(self, numbers, where: str | None = None) -> np.ndarray:
        """Return ``numbers`` as an int array, raising :class:`InputError` for an element not in the table."""
        z = np.asarray(numbers)
        if z.size and (not np.issubdtype(z.dtype, np.integer)):
            raise InputError(where, f"atomic numbers must be integers, got dtype {z.dtype}")
        z = z.astype(np.int64, copy=False)
        bad = (z < 1) | (z >= _MAX_Z)
        bad[~bad] = np.isnan(self.lj_epsilon_ev[z[~bad]])
        if bad.any():
            raise InputError(where, f"unknown element Z={int(z[bad][0])}: not in afm-ray's element table "
                                    f"(known: {', '.join(s for s in self.symbols if s)})")
        return z

    def number(self, symbol: str, where: str | None = None) -> int:
        """Atomic number of an element symbol (case-insensitive), e.g. ``'Cl'`` → 17."""
        wanted = symbol.strip().capitalize()
        try:
            return self.symbols.index(wanted) if wanted else self._unknown(symbol, where)
        except ValueError:
            return self._unknown(symbol, where)

    def numbers(self, symbols, where: str | None = None) -> np.ndarray:
        return np.array([self.number(s, where) for s in symbols], dtype=np.int64)

    def _unknown(self, symbol: str, where: str | None):
        raise InputError(where, f"unknown element symbol {symbol!r}")

    def symbol(self, z: int) -> str:
        return self.symbols[int(self.check_numbers(np.array([z]))[0])]

    def lj_params(self, numbers) -> tuple[np.ndarray, np.ndarray]:
        """(R_min/2 in Å, ε in eV) for each atomic number; shape of ``numbers``."""
        z = self.check_numbers(numbers)
        return self.lj_rmin_half_angstrom[z], self.lj_epsilon_ev[z]

    def vdw_radius(self, numbers) -> np.ndarray:
        """van der Waals radius in Å for each atomic number."""
        return self.vdw_radius_angstrom[self.check_numbers(numbers)]

    def covalent_radius(self, numbers) -> np.ndarray:
        """Covalent radius in Å for each atomic number."""
        return self.covalent_radius_angstrom[self.check_numbers(numbers)]

    def ppafm_disk_radius(self, numbers) -> np.ndarray:
        """Atomic Disks radius in Å of ppafm's element table (its "radius cov." column) for each atomic number."""
        return self.ppafm_disk_radius_angstrom[self.check_numbers(numbers)]

    @property
    def known_numbers(self) -> np.ndarray:
        return np.flatnonzero(~np.isnan(self.lj_epsilon_ev))


ELEMENT_TABLE = ElementTable.default()
