"""The heavy molecule set (thesis 3.1, Table 1): Si, P, S, Cl and Br molecules built offline from SMILES.

The thesis' heavy set (~4,300 DFT-optimised molecules with Si, P, S, Cl, Br, 2–47 atoms) was never
published. This module builds a set in its image from SMILES lists that ship inside PyPI wheels, so
it needs no network:

=============================================  =======  ===============================================
source (``source`` column)                     SMILES   licence (``licence`` column)
=============================================  =======  ===============================================
``rdkit:NCI/first_5K.smi``                     4,999    BSD-3-Clause, as shipped in the RDKit wheel
``rdkit:Pains/test_data/wehi_mols.csv``        10,000   BSD-3-Clause, as shipped in the RDKit wheel
``rdkit:Contrib/NIBRSubstructureFilters/…``    2,183    BSD-3-Clause, as shipped in the RDKit wheel
``file:NAME`` (``extra_smiles``)               yours    what you say it is
=============================================  =======  ===============================================

(MOSES' ZINC lists, ``molsets`` on PyPI, would add S, Cl and Br molecules, but ``molsets`` 0.3.1 does
not install on Python ≥ 3.11: its pinned ``pomegranate==0.12.0`` fails to build.)

Pipeline per SMILES: **filter** (:func:`filter_reason`: parses, one fragment, elements within
:data:`HEAVY_SET_ELEMENTS` with at least one of Si, P, S, Cl, Br, 2–47 atoms with hydrogens, neutral
and closed-shell), **geometry** (RDKit ETKDGv3, seeded, then MMFF94 or GFN2-xTB optimisation),
**window check** (no atom farther than 8 Å from the centroid, so the molecule fits the thesis'
16 × 16 Å scan window in every rotation) and **partial charges** from a GFN2-xTB single point
(tblite; Mulliken charges in e, as QM9's). A molecule failing any step after the filter is
*skipped* with its reason (:class:`SkippedMolecule`), never ending the build.

How this set differs from the thesis' DFT set:

* geometries are MMFF94 force-field minima (or GFN2-xTB with ``optimize="gfn2"``), not DFT minima:
  bond lengths differ by a few hundredths of an Å, torsions can sit in another local minimum;
* charges are GFN2-xTB Mulliken charges of that geometry, not DFT Mulliken/Hirshfeld charges;
* the molecules are drug-like screening compounds (NCI, WEHI, PubChem), richer in N and S and poorer in
  Si and P than the thesis' set; :func:`select_like_table1` picks the subset whose element
  shares come closest to Table 1's heavy column, but Si (22 candidates) and P (99) stay far below
  the thesis' 127 and 375 molecules.

Plain Python, no Ray (the Ray fan-out is :mod:`afm_ray.pipeline.heavy_build`)::

    from afm_ray.molecules.heavy import build_molecule, filter_reason
    molecule = build_molecule("Clc1ccc(Br)cc1", "demo:1", source="smiles")   # MMFF94 + GFN2-xTB charges
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError
from afm_ray.files import atomic_file
from afm_ray.molecules.database import atom_rows, molecules_to_table, write_table_atomic
from afm_ray.molecules.molecule import Molecule
from afm_ray.molecules.smiles import embedded_3d, read_smiles_file
from afm_ray.molecules.summary import THESIS_TABLE1

HEAVY_SET_ELEMENTS = ("H", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br")
HEAVY_MARKER_ELEMENTS = ("Si", "P", "S", "Cl", "Br")
MIN_ATOMS, MAX_ATOMS = 2, 47  # with hydrogens (thesis 3.1)
MAX_RADIUS_ANGSTROM = 8.0  # half the thesis' 16 Å scan window: every atom stays inside in any rotation
OPTIMIZERS = ("mmff", "gfn2")
MMFF_MAX_STEPS = 2000
GFN2_FMAX_EV_PER_ANGSTROM = 0.05
GFN2_MAX_STEPS = 500

THESIS_TABLE1_HEAVY, THESIS_HEAVY_MOLECULES = THESIS_TABLE1["heavy"]  # molecules containing each element; total

RDKIT_LICENCE = "BSD-3-Clause (shipped in the RDKit wheel)"
NIBR_FILE = "SubstructureFilter_HitTriaging_wPubChemExamples.csv"
SHARD_SKIPPED_KEY = b"afm_ray.skipped"


@dataclass(frozen=True)
class Candidate:
    """One SMILES to build: ``id`` unique in the set, ``source`` and ``licence`` recorded per row."""

    id: str
    smiles: str
    source: str
    licence: str


@dataclass(frozen=True)
class SkippedMolecule:
    """A candidate that passed the filter but could not be built, and why."""

    id: str
    source: str
    smiles: str
    reason: str


class SkipMolecule(Exception):
    """Raised by :func:`build_molecule` for a molecule to leave out (the message is the reason)."""


# -- sources -------------------------------------------------------------------------------------
def rdkit_sources() -> dict[str, list[tuple[str, str]]]:
    """``{source: [(smiles, id), …]}`` for the SMILES lists in the installed RDKit wheel (ids ``nci:…``,
    ``wehi:…``, ``nibr:PUBCHEM_CID``)."""
    from rdkit import RDConfig

    data = Path(RDConfig.RDDataDir)
    nci = data / "NCI" / "first_5K.smi"
    wehi = data / "Pains" / "test_data" / "wehi_mols.csv"
    nibr = Path(RDConfig.RDContribDir) / "NIBRSubstructureFilters" / NIBR_FILE
    for path in (nci, wehi, nibr):
        if not path.is_file():
            raise InputError(str(path), "SMILES list missing from the installed RDKit (pip install 'rdkit>=2024.3')")
    nci_entries = [(fields[0], f"nci:{fields[1] if len(fields) > 1 else number}")
                   for number, fields in enumerate((line.split() for line in nci.read_text().splitlines()), 1)
                   if fields]
    with wehi.open(newline="") as handle:
        wehi_entries = [(row[0], f"wehi:{row[1]}") for row in csv.reader(handle) if len(row) >= 2]
    with nibr.open(newline="") as handle:  # up to five PubChem examples (SMILES, CID) per substructure filter
        nibr_entries = [(row[f"EX{k}"], f"nibr:{row[f'CID_Ex{k}']}") for row in csv.DictReader(handle)
                        for k in range(1, 6) if row.get(f"EX{k}")]
    return {"rdkit:NCI/first_5K.smi": nci_entries, "rdkit:Pains/test_data/wehi_mols.csv": wehi_entries,
            f"rdkit:Contrib/NIBRSubstructureFilters/{NIBR_FILE}": nibr_entries}


def candidates(extra_smiles: Sequence[Path] = (), limit: int | None = None,
               include_rdkit: bool = True) -> tuple[list[Candidate], dict[str, int]]:
    """The candidates that pass :func:`filter_reason`, and the count of SMILES filtered out per reason.

    Sources are read in turn, one SMILES from each, so that ``limit`` takes a few from every source
    (and reads no further); a SMILES whose canonical form came before (in any source) is dropped as
    a duplicate. The order, hence the shards of a build, is deterministic.
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    sources = rdkit_sources() if include_rdkit else {}
    licences = dict.fromkeys(sources, RDKIT_LICENCE)
    for path in extra_smiles:  # ids as `afm-ray molecules from-smiles --file` gives them
        name = f"file:{Path(path).name}"
        sources[name] = read_smiles_file(path)
        licences[name] = f"as supplied ({path})"
    filtered: dict[str, int] = {}
    kept: list[Candidate] = []
    seen: set[str] = set()
    seen_ids: set[str] = set()
    for source, smiles, molecule_id in _round_robin(sources):
        if limit is not None and len(kept) >= limit:
            break
        parsed = Chem.MolFromSmiles(smiles)
        reason = filter_reason(parsed)
        canonical = Chem.MolToSmiles(parsed) if reason is None else smiles
        if reason is None and canonical in seen:
            reason = "duplicate of an earlier SMILES"
        if reason is None and molecule_id in seen_ids:
            reason = "duplicate of an earlier id"
        if reason is not None:
            filtered[reason] = filtered.get(reason, 0) + 1
            continue
        seen.add(canonical)
        seen_ids.add(molecule_id)
        kept.append(Candidate(molecule_id, canonical, source, licences[source]))
    return kept, filtered


def _round_robin(sources: dict[str, list[tuple[str, str]]]) -> Iterable[tuple[str, str, str]]:
    """(source, smiles, id): the first entry of every source, then the second of every source, …"""
    for index in range(max((len(entries) for entries in sources.values()), default=0)):
        for source, entries in sources.items():
            if index < len(entries):
                yield source, *entries[index]


def filter_reason(parsed) -> str | None:
    """Why an RDKit molecule (from SMILES, or ``None`` if unparsable) is not a heavy-set candidate; ``None`` if it is.

    Reasons are short fixed phrases, so that they can be counted.
    """
    from rdkit import Chem

    if parsed is None:
        return "unparsable SMILES"
    if len(Chem.GetMolFrags(parsed)) > 1:
        return "several fragments (salt or mixture)"
    symbols = {atom.GetSymbol() for atom in parsed.GetAtoms()}
    if not symbols <= set(HEAVY_SET_ELEMENTS):
        return "element outside H C N O F Si P S Cl Br"
    if not symbols & set(HEAVY_MARKER_ELEMENTS):
        return "light: no Si, P, S, Cl or Br"
    n_atoms = parsed.GetNumAtoms() + sum(atom.GetTotalNumHs() for atom in parsed.GetAtoms())
    if not MIN_ATOMS <= n_atoms <= MAX_ATOMS:
        return f"outside {MIN_ATOMS}–{MAX_ATOMS} atoms with hydrogens"
    if Chem.GetFormalCharge(parsed) != 0:
        return "not neutral"
    if any(atom.GetNumRadicalElectrons() for atom in parsed.GetAtoms()):
        return "radical (open shell)"
    return None


# -- one molecule --------------------------------------------------------------------------------
def build_molecule(smiles: str, molecule_id: str, source: str = "smiles", optimize: str = "mmff",
                   seed: int = 0) -> Molecule:
    """ETKDGv3 embedding (seeded), MMFF94 or GFN2-xTB optimisation, GFN2-xTB Mulliken charges (e).

    Raises :class:`SkipMolecule` naming the step that failed: embedding, optimisation (no MMFF94
    parameters, not converged), the GFN2-xTB calculation, or a molecule too large for the 16 Å window.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    if optimize not in OPTIMIZERS:
        raise InputError("--optimize", f"unknown optimiser {optimize!r}; choose one of {OPTIMIZERS}")
    parsed = Chem.MolFromSmiles(smiles)
    if parsed is None:
        raise SkipMolecule("unparsable SMILES")
    molecule = embedded_3d(parsed, seed)
    if molecule is None:
        raise SkipMolecule("3D embedding (ETKDGv3) failed")
    numbers = np.array([atom.GetAtomicNum() for atom in molecule.GetAtoms()])
    if not AllChem.MMFFHasAllMoleculeParams(molecule):
        raise SkipMolecule("MMFF94 has no parameters for this molecule")
    if AllChem.MMFFOptimizeMolecule(molecule, maxIters=MMFF_MAX_STEPS) != 0:
        raise SkipMolecule(f"MMFF94 optimisation did not converge in {MMFF_MAX_STEPS} steps")
    positions = molecule.GetConformer().GetPositions()
    if optimize == "gfn2":  # from the MMFF94 minimum: fewer GFN2 steps than from the raw embedding
        positions = gfn2_optimize(numbers, positions)
    check_fits_window(positions)
    charges = gfn2_charges(numbers, positions)
    try:
        return Molecule.create(molecule_id, numbers, positions, charges, source=source, smiles=smiles)
    except InputError as error:
        raise SkipMolecule(f"bad geometry after optimisation: {error.what}") from None


def check_fits_window(positions: np.ndarray) -> None:
    """Skip a molecule (positions (N, 3) Å) with an atom beyond :data:`MAX_RADIUS_ANGSTROM` of its centroid."""
    radius = float(np.linalg.norm(positions - positions.mean(axis=0), axis=1).max())
    if radius > MAX_RADIUS_ANGSTROM:
        raise SkipMolecule(f"too large for the 16 × 16 Å scan window: an atom lies {radius:.1f} Å from the "
                           f"centroid (> {MAX_RADIUS_ANGSTROM:g} Å)")


def _tblite_calculator(numbers: np.ndarray, positions: np.ndarray):
    from ase.units import Bohr
    from tblite.interface import Calculator

    calculator = Calculator("GFN2-xTB", numbers, positions / Bohr, charge=0.0, uhf=0)
    calculator.set("verbosity", 0)
    return calculator


def gfn2_charges(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(N,) GFN2-xTB Mulliken partial charges (e) of a neutral closed-shell molecule, positions (N, 3) Å."""
    calculator = _tblite_calculator(numbers, positions)
    try:
        return np.asarray(calculator.singlepoint().get("charges"), dtype=np.float64)
    except Exception as error:  # tblite raises its own runtime errors for an SCF that does not converge
        raise SkipMolecule(f"GFN2-xTB single point failed: {first_line(error)}") from None


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def gfn2_optimize(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(N, 3) Å: GFN2-xTB minimum (ASE BFGS to fmax :data:`GFN2_FMAX_EV_PER_ANGSTROM` eV/Å)."""
    from ase import Atoms
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = TBLite(method="GFN2-xTB", charge=0, multiplicity=1, verbosity=0)
    try:
        converged = BFGS(atoms, logfile=None).run(fmax=GFN2_FMAX_EV_PER_ANGSTROM, steps=GFN2_MAX_STEPS)
    except Exception as error:
        raise SkipMolecule(f"GFN2-xTB optimisation failed: {first_line(error)}") from None
    if not converged:
        raise SkipMolecule(f"GFN2-xTB optimisation did not converge in {GFN2_MAX_STEPS} steps")
    return atoms.get_positions()


# -- shards --------------------------------------------------------------------------------------
def build_shard(entries: Sequence[Candidate], path: Path, optimize: str = "mmff", seed: int = 0) -> tuple[int, int]:
    """Build ``entries`` into one shard file (atomic): the molecules as rows, the skipped ones in its metadata.

    Returns (molecules built, molecules skipped). A shard file exists only once all its entries are done.
    """
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")  # a failed molecule is recorded with its reason; RDKit's own lines are noise
    built, skipped, licences = [], [], []
    for entry in entries:
        try:
            built.append(build_molecule(entry.smiles, entry.id, entry.source, optimize, seed))
            licences.append(entry.licence)
        except SkipMolecule as reason:
            skipped.append(SkippedMolecule(entry.id, entry.source, entry.smiles, str(reason)))
        except (RuntimeError, ValueError) as error:  # RDKit's and tblite's own failures: one molecule, not the build
            skipped.append(SkippedMolecule(entry.id, entry.source, entry.smiles,
                                           f"{type(error).__name__}: {first_line(error)}"))
    table = molecules_to_table(built).append_column("licence", pa.array(licences, pa.string()))
    write_table_atomic(table, path, extra_metadata={
        SHARD_SKIPPED_KEY: json.dumps([asdict(entry) for entry in skipped]).encode()})
    return len(built), len(skipped)


def read_shards(paths: Sequence[Path]) -> tuple[pa.Table, list[SkippedMolecule]]:
    """All molecules (one table) and skipped molecules of finished shard files."""
    tables, skipped = [], []
    for path in paths:
        table = pq.read_table(path)
        skipped += [SkippedMolecule(**entry) for entry in json.loads(table.schema.metadata[SHARD_SKIPPED_KEY])]
        tables.append(table.replace_schema_metadata(None))
    if not tables:
        return molecules_to_table([]).append_column("licence", pa.array([], pa.string())), skipped
    return pa.concat_tables(tables), skipped


def write_skipped_csv(skipped: Sequence[SkippedMolecule], path: Path) -> Path:
    """``id,source,smiles,reason`` per skipped molecule, written atomically."""
    with atomic_file(path, text=True) as stream:
        writer = csv.writer(stream)
        writer.writerow(("id", "source", "smiles", "reason"))
        writer.writerows((entry.id, entry.source, entry.smiles, entry.reason) for entry in skipped)
    return path


# -- choosing the set ----------------------------------------------------------------------------
def select_like_table1(table: pa.Table, n_molecules: int,
                       target_shares: dict[str, float] | None = None) -> pa.Table:
    """The ``n_molecules`` rows whose element shares come closest to Table 1's heavy column (greedy, deterministic).

    ``target_shares``: fraction of molecules that should contain each element (default: Table 1's
    heavy column). Each step adds the molecule that brings the fractions nearest (squared error
    summed over elements) to the target. Fewer rows than ``n_molecules``:
    all are kept. Rows come back in id order.
    """
    import pyarrow.compute as pc

    table = table.take(pc.sort_indices(table, [("id", "ascending")]))
    if table.num_rows <= n_molecules:
        return table
    if target_shares is None:
        target_shares = {symbol: count / THESIS_HEAVY_MOLECULES for symbol, count in THESIS_TABLE1_HEAVY.items()}
    symbols = list(target_shares)
    target = np.array([target_shares[symbol] for symbol in symbols], np.float64)
    presence = element_presence(table, symbols)
    counts = np.zeros(len(symbols))
    available = np.ones(table.num_rows, bool)
    chosen = []
    for size in range(1, n_molecules + 1):
        error = (((counts + presence) / size - target) ** 2).sum(axis=1)
        error[~available] = np.inf
        best = int(np.argmin(error))
        chosen.append(best)
        available[best] = False
        counts += presence[best]
    return table.take(pa.array(sorted(chosen), pa.int64()))


def element_presence(table: pa.Table, symbols: Sequence[str]) -> np.ndarray:
    """(rows, len(symbols)) float: 1 where the molecule contains the element."""
    rows, numbers = atom_rows(table)
    presence = np.zeros((table.num_rows, len(symbols)))
    for column, symbol in enumerate(symbols):
        presence[np.unique(rows[numbers == ELEMENT_TABLE.number(symbol)]), column] = 1.0
    return presence
