"""The in-memory molecule: atomic numbers, positions (Å) and partial charges (e).

:meth:`Molecule.create` (every molecule read from a file or SMILES) refuses physically meaningless
geometry: two atoms closer than :data:`MIN_ATOM_DISTANCE_ANGSTROM` (the shortest bond, H–H, is
0.74 Å) and a coordinate beyond ±:data:`MAX_COORDINATE_ANGSTROM` (a simulated scan is tens of Å).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError

MIN_ATOM_DISTANCE_ANGSTROM = 0.5  # closer atoms are a duplicated or broken geometry
MAX_COORDINATE_ANGSTROM = 1000.0  # largest |x|, |y|, |z| accepted


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
        atoms, mismatched lengths, unknown elements, NaN/inf positions or charges, a coordinate beyond
        ±MAX_COORDINATE_ANGSTROM, two atoms closer than MIN_ATOM_DISTANCE_ANGSTROM.
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
        check_geometry(numbers, positions, where)
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


def check_geometry(numbers: np.ndarray, positions: np.ndarray, where: str) -> None:
    """Refuse (:class:`InputError` naming ``where``: the file and molecule) a coordinate beyond ±MAX_COORDINATE_ANGSTROM and atoms closer than MIN_ATOM_DISTANCE_ANGSTROM
    (positions (N, 3) Å), naming the atoms (1-based, as in the file)."""
    from scipy.spatial import cKDTree

    def atom(index: int) -> str:
        return f"atom {index + 1} ({ELEMENT_TABLE.symbol(int(numbers[index]))})"

    far = np.abs(positions) > MAX_COORDINATE_ANGSTROM
    if far.any():
        index = int(np.argwhere(far)[0][0])
        raise InputError(where, f"{atom(index)} lies at {positions[index].tolist()} Å, beyond "
                                f"±{MAX_COORDINATE_ANGSTROM:g} Å")
    pairs = cKDTree(positions).query_pairs(MIN_ATOM_DISTANCE_ANGSTROM, output_type="ndarray")
    if len(pairs):
        first, second = (int(v) for v in pairs[np.lexsort(pairs.T[::-1])][0])
        distance = float(np.linalg.norm(positions[first] - positions[second]))
        raise InputError(where, f"{atom(first)} and {atom(second)} are {distance:.3g} Å apart, closer than "
                                f"{MIN_ATOM_DISTANCE_ANGSTROM:g} Å ({len(pairs)} such pair(s))")
