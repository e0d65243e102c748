"""The Parquet molecule database: QM9 build, importers, atomic writes, bad input."""

import hashlib
import importlib.util

import numpy as np
import pyarrow.parquet as pq
import pytest

from afm_ray.errors import InputError
from afm_ray.molecules import read_database, read_molecules

from conftest import MOLECULE_FILES, QM9_SAMPLE


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_qm9_sample_round_trips_geometry_and_charges(qm9_sample_db):
    table = read_database(qm9_sample_db)
    assert table.num_rows == 49
    methane = read_molecules(qm9_sample_db, ids=["qm9:000001"])[0]
    assert methane.symbols == ["C", "H", "H", "H", "H"]
    assert methane.smiles == "C"
    np.testing.assert_allclose(methane.positions[0], [-0.0126981359, 1.0858041578, 0.0080009958], atol=1e-6)
    np.testing.assert_allclose(methane.charges, [-0.535689, 0.133921, 0.133922, 0.133923, 0.133923], atol=1e-6)
    assert abs(methane.charges.sum()) < 1e-3


def test_info_prints_table1_statistics(qm9_sample_db, run_cli):
    code, out, _ = run_cli("molecules", "info", qm9_sample_db)
    assert code == 0
    assert "49 molecules" in out and "3–" in out
    assert any(line.split()[0] == "F" for line in out.splitlines() if line.strip())


@pytest.mark.skipif(importlib.util.find_spec("qm9pack") is None, reason="qm9pack not installed")
def test_full_qm9_build_matches_thesis_table1_and_dataset1(tmp_path, run_cli):
    import json

    path = tmp_path / "qm9.parquet"
    code, out, err = run_cli("molecules", "build-qm9", "--out", path)
    assert code == 0, err
    summary = json.loads(run_cli("molecules", "info", path, "--json")[1])
    # qm9pack ships QM9 without the 3,054 molecules that failed QM9's own consistency check.
    assert summary["molecules"] == 130_831
    assert summary["atoms_per_molecule"] == [3, 29]
    thesis_table1_percent = {"H": 99.96, "N": 61.9, "C": 99.998, "O": 85.1, "F": 1.6}
    assert set(summary["elements"]) == set(thesis_table1_percent)
    for symbol, percent in thesis_table1_percent.items():
        assert abs(100 * summary["elements"][symbol] / summary["molecules"] - percent) < 1.0, symbol
    assert summary["splits"]["dataset1"]["counts"] == {"train": 5000, "val": 1500, "test": 2500}
    train = read_molecules(path, split="dataset1", subset="train")
    assert len(train) == 5000 and len({m.id for m in train}) == 5000


def test_import_real_files(tmp_path, run_cli):
    out = tmp_path / "user.parquet"
    code, _, err = run_cli("molecules", "import", MOLECULE_FILES / "qm9_with_charges.xyz",
                           MOLECULE_FILES / "chlorobromobenzene.extxyz", MOLECULE_FILES / "pubchem_style.sdf",
                           "--out", out)
    assert code == 0, err
    molecules = {m.id: m for m in read_molecules(out)}
    assert set(molecules) == {"qm9_with_charges", "chlorobromobenzene", "pubchem_style:0", "pubchem_style:1",
                              "pubchem_style:2"}
    propane = molecules["qm9_with_charges"]
    assert propane.symbols.count("C") == 3 and propane.charges[0] == pytest.approx(-0.357354, abs=1e-6)
    heavy = molecules["chlorobromobenzene"]
    assert {"Cl", "Br"} <= set(heavy.symbols) and abs(heavy.charges.sum()) < 1e-3
    thiophene = molecules["pubchem_style:0"]
    assert "S" in thiophene.symbols and np.count_nonzero(thiophene.charges) > 0
    assert "Si" in molecules["pubchem_style:1"].symbols and "P" in molecules["pubchem_style:2"].symbols


@pytest.mark.parametrize("name", ["no_charges.xyz", "no_charges.sdf"])
def test_missing_charges_refused_unless_computed(tmp_path, run_cli, name):
    out = tmp_path / "db.parquet"
    code, _, err = run_cli("molecules", "import", MOLECULE_FILES / name, "--out", out)
    assert code == 2 and "no partial charges" in err and name in err
    assert not out.exists()
    code, _, err = run_cli("molecules", "import", MOLECULE_FILES / name, "--charges", "gasteiger", "--out", out)
    assert code == 0, err
    (molecule,) = read_molecules(out)
    assert np.isfinite(molecule.charges).all() and np.abs(molecule.charges).max() > 0.01


def test_from_smiles_builds_heavy_molecules(tmp_path, run_cli):
    out = tmp_path / "heavy.parquet"
    code, _, err = run_cli("molecules", "from-smiles", "C[Si](C)(C)Cl", "BrC(Br)P(=O)(O)O", "--out", out)
    assert code == 0, err
    first, second = read_molecules(out)
    assert first.source == "smiles" and {"Si", "Cl"} <= set(first.symbols)
    distances = np.linalg.norm(first.positions[:, None] - first.positions[None], axis=-1)
    assert distances[np.triu_indices(first.n_atoms, 1)].min() > 0.9  # a real 3D geometry
    assert {"Br", "P"} <= set(second.symbols)


BAD_XYZ = {
    "wrong_count.xyz": ("3\ncomment\nC 0 0 0 0.1\nH 1 0 0 -0.1\n", "wrong_count.xyz:1: header says 3 atoms"),
    "non_numeric.xyz": ("2\n\nC 0 0 0 0.1\nH 1 zero 0 -0.1\n", "non_numeric.xyz:4: field y is not a number: 'zero'"),
    "unknown_element.xyz": ("2\n\nC 0 0 0 0.1\nXx 1 0 0 -0.1\n", "unknown_element.xyz:4: unknown element symbol 'Xx'"),
    "nan.xyz": ("2\n\nC 0 0 nan 0.1\nH 1 0 0 -0.1\n", "nan.xyz:3: field z is not finite: 'nan'"),
    "inf_charge.xyz": ("2\n\nC 0 0 0 inf\nH 1 0 0 -0.1\n", "inf_charge.xyz:3: field charge is not finite"),
    "empty.xyz": ("", "empty.xyz: file is empty"),
    "bad_header.xyz": ("two\n\nC 0 0 0 0\n", "bad_header.xyz:1: expected the atom count, found 'two'"),
}


@pytest.mark.parametrize("name", sorted(BAD_XYZ))
def test_bad_xyz_gives_one_line_error_and_leaves_database_untouched(tmp_path, run_cli, qm9_sample_db, name):
    text, message = BAD_XYZ[name]
    bad = tmp_path / name
    bad.write_text(text)
    before = digest(qm9_sample_db)
    code, out, err = run_cli("molecules", "import", MOLECULE_FILES / "qm9_with_charges.xyz", bad,
                             "--out", qm9_sample_db, "--append")
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert digest(qm9_sample_db) == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_duplicate_ids_rejected(tmp_path, run_cli, qm9_sample_db):
    before = digest(qm9_sample_db)
    xyz = MOLECULE_FILES / "qm9_with_charges.xyz"
    code, _, err = run_cli("molecules", "import", xyz, "--out", qm9_sample_db, "--append")
    assert code == 0, err
    middle = digest(qm9_sample_db)
    assert middle != before
    code, _, err = run_cli("molecules", "import", xyz, "--out", qm9_sample_db, "--append")
    assert code == 2 and "duplicate molecule id 'qm9_with_charges'" in err
    assert digest(qm9_sample_db) == middle


def test_existing_database_needs_append_or_overwrite(run_cli, qm9_sample_db):
    before = digest(qm9_sample_db)
    code, _, err = run_cli("molecules", "import", MOLECULE_FILES / "qm9_with_charges.xyz", "--out", qm9_sample_db)
    assert code == 2 and "--append" in err
    assert digest(qm9_sample_db) == before


def test_database_path_that_is_a_directory(tmp_path, run_cli):
    code, _, err = run_cli("molecules", "build-qm9", "--qm9-csv", QM9_SAMPLE, "--out", tmp_path)
    assert code == 2 and "is a directory" in err and str(tmp_path) in err
    code, _, err = run_cli("molecules", "info", tmp_path / "missing.parquet")
    assert code == 2 and "not found" in err


def test_interrupted_write_keeps_the_old_database(qm9_sample_db, monkeypatch):
    from afm_ray.molecules.database import write_table_atomic

    before = digest(qm9_sample_db)
    table = read_database(qm9_sample_db)

    def write_half_then_die(table, stream, **kwargs):
        stream.write(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_table_atomic(table, qm9_sample_db)
    assert digest(qm9_sample_db) == before
    assert [p.name for p in qm9_sample_db.parent.iterdir()] == [qm9_sample_db.name]


def test_qm9_csv_with_inconsistent_row_is_refused(tmp_path, run_cli):
    lines = QM9_SAMPLE.read_text().splitlines()
    lines[3] = lines[3].replace('"[-0.', '"[-0.1,-0.', 1)  # one extra Mulliken charge in row 3
    bad = tmp_path / "bad_qm9.csv"
    bad.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli("molecules", "build-qm9", "--qm9-csv", bad, "--out", tmp_path / "x.parquet")
    assert code == 2 and "bad_qm9.csv: row 4, column Mulliken_pop" in err
    assert not (tmp_path / "x.parquet").exists()


def test_read_database_rejects_non_database(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(InputError, match="junk.parquet: not a Parquet molecule database"):
        read_database(junk)
