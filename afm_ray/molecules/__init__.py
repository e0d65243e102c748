"""Molecules: the Parquet molecule database, QM9 and user-file importers, splits and scan rotations.

Plain Python, no Ray::

    from afm_ray.molecules import read_molecules, select_rotations
    mols = read_molecules("data/qm9.parquet", split="dataset1", subset="train")
    rotations = select_rotations(mols[0].positions, n_keep=20)   # (20, 3, 3)
"""

from afm_ray.molecules.database import read_database, read_molecules, write_table_atomic, molecules_to_table
from afm_ray.molecules.io import read_molecule_file, read_xyz, write_xyz
from afm_ray.molecules.molecule import Molecule
from afm_ray.molecules.rotations import select_rotations
from afm_ray.molecules.splits import THESIS_SPLITS, SplitSizes, assign_split

__all__ = [
    "Molecule", "read_database", "read_molecules", "write_table_atomic", "molecules_to_table",
    "read_molecule_file", "read_xyz", "write_xyz", "select_rotations", "THESIS_SPLITS", "SplitSizes",
    "assign_split",
]
