"""The in-memory molecule: atomic numbers, positions (Å) and partial charges (e)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError


@dataclass(frozen=True)
class Molecule:
    """One molecule.

    Attributes:
        id: stable identifier, unique within a database (e.g. ``qm9:000042``).
        numbers: (N,) int64 atomic numbers.
        positions: (N, 3) float64 Cartesian positions in Å, axes (x, y, z).
        charges: (N,) float64 partial charges in e.
        source: where it came from (``qm9``, ``file:NAME``, ``smiles``).
        smiles: SMILES string where known, else ``None``.
    """

    id: str
    numbers: np.ndarray
    positions: np.ndarray
    charges: np.ndarray
    source: str = "unknown"
    smiles: str | None = None

    @classmethod
    def create(cls, id: str, numbers, positions, charges, source: str = "unknown",
               smiles: str | None = None, where: str | None = None) -> "Molecule":
        """Build a molecule, converting and validating its arrays.

        Raises :class:`InputError` naming ``where`` (a file or record) and the field for: no
        atoms, mismatched lengths, unknown elements, NaN/inf positions or charges.
        """
        where = where or id
        numbers = ELEMENT_TABLE.check_numbers(np.asarray(numbers), where=f"{where}: numbers")
        positions = np.asarray(positions, dtype=np.float64)
        charges = np.asarray(charges, dtype=np.float64)
        if numbers.ndim != 1 or numbers.size == 0:
            raise InputError(where, "molecule has no atoms")
        if positions.shape != (numbers.size, 3):
            raise InputError(where, f"positions have shape {positions.shape}, expected ({numbers.size}, 3)")
        if charges.shape != (numbers.size,):
            raise InputError(where, f"charges have shape {charges.shape}, expected ({numbers.size},)")
        for field, values in (("positions", positions), ("charges", charges)):
            bad = ~np.isfinite(values)
            if bad.any():
                atom = int(np.argwhere(bad)[0][0])
                raise InputError(where, f"{field} of atom {atom + 1} is not finite: {values[atom].tolist()}")
        if not id:
            raise InputError(where, "molecule id is empty")
        return cls(id=id, numbers=numbers, positions=positions, charges=charges, source=source, smiles=smiles)

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.size)

    @property
    def symbols(self) -> list[str]:
        return [ELEMENT_TABLE.symbols[z] for z in self.numbers]

    def rotated(self, rotation: np.ndarray) -> "Molecule":
        """This molecule rotated by a (3, 3) matrix about its centroid: ``p' = R (p − c) + c``."""
        centre = self.positions.mean(axis=0)
        positions = (self.positions - centre) @ np.asarray(rotation).T + centre
        return Molecule(self.id, self.numbers, positions, self.charges, self.source, self.smiles)
