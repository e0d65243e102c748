"""Reading user molecule files: xyz with a charge column, extended xyz, SDF/MOL.

* **xyz with charges** (the format ppafm uses): ``N``, a comment line, then ``N`` lines
  ``symbol x y z q`` (Å, e). Several frames may follow each other. Plain xyz has no charge
  column, so no library reads that fifth column; this module parses it with line-exact errors.
* **extended xyz** (comment line with ``Properties=``): read with ASE; charges from the
  ``charges``/``initial_charges`` per-atom arrays.
* **SDF/MOL**: read with RDKit (hydrogens kept); charges from a PubChem
  ``PUBCHEM_MMFF94_PARTIAL_CHARGES`` or an ``atom.dprop.PartialCharge`` property.

Molecules without charges are refused unless ``charges="gasteiger"`` or ``"mmff"`` asks RDKit to
compute them (bonds are perceived from the 3D geometry for xyz input).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError
from afm_ray.molecules.molecule import Molecule, check_geometry

CHARGE_METHODS = ("gasteiger", "mmff")
XYZ_SUFFIXES = (".xyz", ".extxyz")
SDF_SUFFIXES = (".sdf", ".mol", ".sd")


def read_molecule_file(path: str | Path, charges: str | None = None, id_prefix: str | None = None) -> list[Molecule]:
    """All molecules in one file. ``charges``: ``None`` (use the file's) or one of :data:`CHARGE_METHODS`."""
    path = Path(path)
    if charges is not None and charges not in CHARGE_METHODS:
        raise InputError("--charges", f"unknown charge method {charges!r}; choose one of {CHARGE_METHODS}")
    if not path.is_file():
        raise InputError(str(path), "no such file" if not path.exists() else "not a regular file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise InputError(str(path), "file is empty")
    suffix = path.suffix.lower()
    if suffix in XYZ_SUFFIXES:
        molecules = _read_xyz_text(text, path, charges)
    elif suffix in SDF_SUFFIXES:
        molecules = _read_sdf(path, charges)
    else:
        raise InputError(str(path), f"unsupported file type {suffix!r}; use {XYZ_SUFFIXES + SDF_SUFFIXES}")
    prefix = id_prefix if id_prefix is not None else path.stem
    if len(molecules) == 1:
        return [_with_id(molecules[0], prefix)]
    return [_with_id(molecule, f"{prefix}:{index}") for index, molecule in enumerate(molecules)]


def read_xyz(path: str | Path) -> Molecule:
    """The single molecule of an xyz file with a charge column."""
    molecules = read_molecule_file(path)
    if len(molecules) != 1:
        raise InputError(str(path), f"expected one molecule, found {len(molecules)}")
    return molecules[0]


def write_xyz(path: str | Path, molecule: Molecule, comment: str = "") -> None:
    """Write ``symbol x y z q`` lines (Å, e): readable by :func:`read_xyz`, ppafm and ASE."""
    lines = [str(molecule.n_atoms), comment.replace("\n", " ")]
    lines += [f"{s:<2} {x:14.8f} {y:14.8f} {z:14.8f} {q:11.6f}"
              for s, (x, y, z), q in zip(molecule.symbols, molecule.positions, molecule.charges)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _with_id(molecule: Molecule, molecule_id: str) -> Molecule:
    return Molecule(molecule_id, molecule.numbers, molecule.positions, molecule.charges, molecule.source,
                    molecule.smiles)


# -- xyz -----------------------------------------------------------------------------------------
def _read_xyz_text(text: str, path: Path, charges: str | None) -> list[Molecule]:
    lines = text.splitlines()
    molecules = []
    line_index = 0
    while line_index < len(lines):
        if not lines[line_index].strip():
            line_index += 1
            continue
        header_line = line_index + 1
        where = f"{path}:{header_line}"
        try:
            n_atoms = int(lines[line_index].split()[0])
        except ValueError:
            raise InputError(where, f"expected the atom count, found {lines[line_index].strip()!r}") from None
        if n_atoms <= 0:
            raise InputError(where, f"atom count must be positive, found {n_atoms}")
        comment = lines[line_index + 1] if line_index + 1 < len(lines) else ""
        atom_lines = lines[line_index + 2: line_index + 2 + n_atoms]
        if len(atom_lines) < n_atoms or any(not line.strip() for line in atom_lines):
            found = sum(1 for line in atom_lines if line.strip())
            raise InputError(where, f"header says {n_atoms} atoms but only {found} atom lines follow")
        if "properties=" in comment.lower():
            molecules.append(_read_extxyz_frame(lines[line_index: line_index + 2 + n_atoms], path, header_line,
                                                charges))
        else:
            molecules.append(_parse_xyz_atoms(atom_lines, path, header_line + 2, charges))
        line_index += 2 + n_atoms
    return molecules


def _parse_xyz_atoms(atom_lines: list[str], path: Path, first_line: int, charges: str | None) -> Molecule:
    symbols, values = [], []
    has_charges = None
    for offset, line in enumerate(atom_lines):
        line_number = first_line + offset
        fields = line.split()
        if len(fields) < 4:
            raise InputError(f"{path}:{line_number}", f"expected 'symbol x y z [q]', found {line.strip()!r}")
        row_has_charge = len(fields) >= 5
        if has_charges is None:
            has_charges = row_has_charge
        elif has_charges != row_has_charge:
            raise InputError(f"{path}:{line_number}", "some atom lines have a charge column and others do not")
        names = ("x", "y", "z", "charge")[: 4 if row_has_charge else 3]
        row = []
        for name, field in zip(names, fields[1:]):
            try:
                value = float(field)
            except ValueError:
                raise InputError(f"{path}:{line_number}", f"field {name} is not a number: {field!r}") from None
            if not math.isfinite(value):
                raise InputError(f"{path}:{line_number}", f"field {name} is not finite: {field!r}")
            row.append(value)
        symbol = fields[0]
        symbols.append(int(symbol) if symbol.isdigit() else ELEMENT_TABLE.number(symbol, f"{path}:{line_number}"))
        values.append(row)
    numbers = ELEMENT_TABLE.check_numbers(np.array(symbols), where=f"{path}:{first_line}")
    array = np.array(values, dtype=np.float64)
    where = f"{path}:{first_line - 2}"
    if has_charges and charges is None:
        return Molecule.create("xyz", numbers, array[:, :3], array[:, 3], source=f"file:{path.name}", where=where)
    return _with_computed_charges(numbers, array[:, :3], charges, where, f"file:{path.name}")


def _read_extxyz_frame(frame_lines: list[str], path: Path, header_line: int, charges: str | None) -> Molecule:
    import io

    import ase.io

    where = f"{path}:{header_line}"
    try:
        atoms = ase.io.read(io.StringIO("\n".join(frame_lines) + "\n"), format="extxyz")
    except Exception as exc:  # ASE raises many types for malformed frames
        raise InputError(where, f"cannot read extended xyz frame: {exc}") from None
    numbers = atoms.get_atomic_numbers()
    file_charges = next((atoms.arrays[key] for key in ("charges", "initial_charges", "charge", "q")
                         if key in atoms.arrays), None)
    if file_charges is not None and charges is None:
        return Molecule.create("xyz", numbers, atoms.positions, file_charges, source=f"file:{path.name}",
                               where=where)
    return _with_computed_charges(numbers, atoms.positions, charges, where, f"file:{path.name}")


def _with_computed_charges(numbers, positions, charges: str | None, where: str, source: str) -> Molecule:
    if charges is None:
        raise InputError(where, "molecule has no partial charges; add a charge column or pass "
                                "--charges gasteiger|mmff to compute them with RDKit")
    check_geometry(np.asarray(numbers), np.asarray(positions, dtype=np.float64), where)  # before RDKit reads it
    rdkit_molecule = _rdkit_from_geometry(numbers, positions, where)
    return Molecule.create("xyz", numbers, positions, compute_charges(rdkit_molecule, charges, where),
                           source=source, where=where)


# -- RDKit (SDF, computed charges) ---------------------------------------------------------------
def import_rdkit(where: str):
    try:
        from rdkit import Chem
    except ImportError:
        raise InputError(where, "RDKit is needed for SDF files, SMILES and computed charges: "
                                "pip install 'afm-ray[rdkit]'") from None
    return Chem


def _rdkit_from_geometry(numbers, positions, where: str):
    Chem = import_rdkit(where)
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    editable = Chem.RWMol()
    for z in numbers:
        editable.AddAtom(Chem.Atom(int(z)))
    conformer = Chem.Conformer(len(numbers))
    for index, (x, y, z) in enumerate(positions):
        conformer.SetAtomPosition(index, Point3D(float(x), float(y), float(z)))
    molecule = editable.GetMol()
    molecule.AddConformer(conformer, assignId=True)
    try:
        rdDetermineBonds.DetermineBonds(molecule, charge=0)
    except Exception as exc:  # RDKit raises ValueError/RuntimeError for unsolvable valences
        raise InputError(where, f"cannot perceive bonds from the geometry to compute charges ({exc})") from None
    return molecule


def compute_charges(molecule, method: str, where: str) -> np.ndarray:
    """Partial charges (e) of an RDKit molecule with explicit hydrogens: Gasteiger or MMFF94."""
    from rdkit.Chem import AllChem

    if method == "gasteiger":
        AllChem.ComputeGasteigerCharges(molecule)
        values = np.array([atom.GetDoubleProp("_GasteigerCharge") for atom in molecule.GetAtoms()])
    elif method == "mmff":
        properties = AllChem.MMFFGetMoleculeProperties(molecule)
        if properties is None:
            raise InputError(where, "MMFF94 has no parameters for this molecule; try --charges gasteiger")
        values = np.array([properties.GetMMFFPartialCharge(i) for i in range(molecule.GetNumAtoms())])
    else:
        raise InputError("--charges", f"unknown charge method {method!r}; choose one of {CHARGE_METHODS}")
    if not np.isfinite(values).all():
        raise InputError(where, f"{method} charges are not finite for this molecule")
    return values


def _read_sdf(path: Path, charges: str | None) -> list[Molecule]:
    Chem = import_rdkit(str(path))
    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=True)
    molecules = []
    for index, rdkit_molecule in enumerate(supplier):
        where = f"{path}: record {index + 1}"
        if rdkit_molecule is None:
            raise InputError(where, "RDKit could not parse this record (see RDKit's message above)")
        if rdkit_molecule.GetNumConformers() == 0:
            raise InputError(where, "record has no 3D coordinates")
        numbers = np.array([atom.GetAtomicNum() for atom in rdkit_molecule.GetAtoms()])
        positions = rdkit_molecule.GetConformer().GetPositions()
        if charges is not None:
            values = compute_charges(rdkit_molecule, charges, where)
        else:
            values = _sdf_charges(rdkit_molecule, where)
        smiles = Chem.MolToSmiles(Chem.RemoveHs(rdkit_molecule))
        molecule = Molecule.create("sdf", numbers, positions, values, source=f"file:{path.name}",
                                   smiles=smiles, where=where)
        molecules.append(molecule)
    if not molecules:
        raise InputError(str(path), "no molecules in file")
    return molecules


def _sdf_charges(rdkit_molecule, where: str) -> np.ndarray:
    n_atoms = rdkit_molecule.GetNumAtoms()
    if rdkit_molecule.HasProp("PUBCHEM_MMFF94_PARTIAL_CHARGES"):
        # PubChem lists only the non-zero charges: a count, then "atom_index(1-based) charge" lines.
        values = np.zeros(n_atoms)
        lines = rdkit_molecule.GetProp("PUBCHEM_MMFF94_PARTIAL_CHARGES").split("\n")[1:]
        for line in lines:
            fields = line.split()
            try:
                values[int(fields[0]) - 1] = float(fields[1])
            except (ValueError, IndexError):
                raise InputError(f"{where}: PUBCHEM_MMFF94_PARTIAL_CHARGES",
                                 f"cannot read charge line {line!r}") from None
        return values
    atoms = list(rdkit_molecule.GetAtoms())
    if atoms and all(atom.HasProp("PartialCharge") for atom in atoms):
        return np.array([atom.GetDoubleProp("PartialCharge") for atom in atoms])
    raise InputError(where, "record has no partial charges (PUBCHEM_MMFF94_PARTIAL_CHARGES or atom PartialCharge); "
                            "pass --charges gasteiger|mmff to compute them with RDKit")
