"""3D molecules from SMILES: RDKit ETKDG embedding, MMFF94 optimisation and partial charges.

One molecule at a time, for a few SMILES of your own; the whole heavy set (Si, P, S, Cl, Br) with GFN2-xTB
charges is :mod:`afm_ray.molecules.heavy` (on Ray: ``afm-ray molecules build-heavy``).
"""

from __future__ import annotations

from afm_ray.errors import InputError
from afm_ray.molecules.io import import_rdkit, compute_charges
from afm_ray.molecules.molecule import Molecule


def molecule_from_smiles(smiles: str, molecule_id: str, charges: str = "mmff", seed: int = 0,
                         max_optimisation_steps: int = 2000) -> Molecule:
    """Embed ``smiles`` in 3D (ETKDGv3, seeded), optimise with MMFF94 and attach partial charges (e)."""
    Chem = import_rdkit(molecule_id)
    from rdkit.Chem import AllChem

    where = f"SMILES {smiles!r} ({molecule_id})"
    parsed = Chem.MolFromSmiles(smiles)
    if parsed is None:
        raise InputError(where, "RDKit cannot parse this SMILES")
    molecule = embedded_3d(parsed, seed)
    if molecule is None:
        raise InputError(where, "3D embedding (ETKDG) failed")
    if AllChem.MMFFHasAllMoleculeParams(molecule):
        AllChem.MMFFOptimizeMolecule(molecule, maxIters=max_optimisation_steps)
    elif charges == "mmff":
        raise InputError(where, "MMFF94 has no parameters for this molecule; use --charges gasteiger")
    numbers = [atom.GetAtomicNum() for atom in molecule.GetAtoms()]
    positions = molecule.GetConformer().GetPositions()
    return Molecule.create(molecule_id, numbers, positions, compute_charges(molecule, charges, where),
                           source="smiles", smiles=Chem.MolToSmiles(parsed), where=where)


def embedded_3d(parsed, seed: int = 0):
    """The RDKit molecule ``parsed`` with explicit hydrogens and one 3D conformer (ETKDGv3, ``seed``), or
    ``None`` when the embedding fails."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    molecule = Chem.AddHs(parsed)
    parameters = AllChem.ETKDGv3()
    parameters.randomSeed = seed
    return molecule if AllChem.EmbedMolecule(molecule, parameters) == 0 else None


def read_smiles_file(path: str) -> list[tuple[str, str]]:
    """(smiles, id) pairs from a ``.smi`` file: ``SMILES [name]`` per line, ``#`` comments allowed."""
    from pathlib import Path

    if not Path(path).is_file():
        raise InputError(str(path), "no such SMILES file")
    entries = []
    for line_number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        entries.append((fields[0], fields[1] if len(fields) > 1 else f"{Path(path).stem}:{line_number}"))
    if not entries:
        raise InputError(str(path), "no SMILES found")
    return entries
