"""The heavy molecule set (`afm-ray molecules build-heavy`): filter, geometry, GFN2-xTB charges, selection,
and a build on Ray that is killed mid-way and resumed without rebuilding its finished shards."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from afm_ray.molecules import read_database, read_molecules

from conftest import QM9_SAMPLE

pytest.importorskip("tblite", reason="tblite (the xtb extra) computes the GFN2-xTB charges")

UNEMBEDDABLE = "S1C#C1"  # a thiirene with a triple bond: parses, passes the filter, ETKDG cannot embed it


@pytest.mark.parametrize("smiles, reason", [
    ("CCO", "light: no Si, P, S, Cl or Br"),
    ("C[Sn](C)(C)Cl", "element outside H C N O F Si P S Cl Br"),
    ("CS(=O)(=O)[O-].[Na+]", "several fragments (salt or mixture)"),
    ("C[S+](C)C", "not neutral"),
    ("C[CH]Cl", "radical (open shell)"),
    ("Cl" + "C" * 16, "outside 2–47 atoms with hydrogens"),  # 17 heavy atoms + 33 H = 50
    ("Cl", None), ("Clc1ccc(Br)cc1", None), ("C[Si](C)(C)OP(=O)(O)S", None),
])
def test_filter_keeps_only_the_thesis_heavy_set(smiles, reason):
    from rdkit import Chem

    from afm_ray.molecules.heavy import filter_reason

    assert filter_reason(Chem.MolFromSmiles(smiles)) == reason


def test_build_molecule_mmff_and_gfn2_give_geometry_and_gfn2_charges():
    from afm_ray.molecules.heavy import SkipMolecule, build_molecule, gfn2_charges

    mmff = build_molecule("C[Si](C)(C)Cl", "demo:1", source="test")
    assert mmff.symbols.count("Si") == 1 and mmff.n_atoms == 14
    assert abs(mmff.charges.sum()) < 1e-6  # a neutral molecule's Mulliken charges
    chlorine = mmff.symbols.index("Cl")
    silicon = mmff.symbols.index("Si")
    assert mmff.charges[chlorine] < -0.1 < 0.1 < mmff.charges[silicon]  # polar Si–Cl bond
    np.testing.assert_allclose(mmff.charges, gfn2_charges(mmff.numbers, mmff.positions))
    gfn2 = build_molecule("C[Si](C)(C)Cl", "demo:1", optimize="gfn2")
    si_cl = [np.linalg.norm(m.positions[silicon] - m.positions[chlorine]) for m in (mmff, gfn2)]
    assert 1.9 < min(si_cl) and max(si_cl) < 2.2 and si_cl[0] != si_cl[1]  # both near the 2.05 Å bond
    with pytest.raises(SkipMolecule, match="3D embedding"):
        build_molecule(UNEMBEDDABLE, "bad:1")
    with pytest.raises(SkipMolecule, match="too large for the 16 × 16 Å scan window"):
        build_molecule("Cl" + "C#C" * 8 + "Cl", "long:1")


def test_selection_approaches_the_target_element_shares():
    from afm_ray.molecules import Molecule, molecules_to_table
    from afm_ray.molecules.heavy import select_like_table1

    def molecule(index, heavy_number):
        return Molecule.create(f"m:{index:02d}", [6, heavy_number], [[0, 0, 0], [1.8, 0, 0]], [0.1, -0.1])

    pool = [molecule(i, 16) for i in range(10)] + [molecule(10 + i, 17) for i in range(10)]
    chosen = select_like_table1(molecules_to_table(pool), 8, target_shares={"C": 1.0, "S": 0.25, "Cl": 0.75})
    symbols = [m.symbols[1] for m in read_table_molecules(chosen)]
    assert symbols.count("S") == 2 and symbols.count("Cl") == 6
    assert select_like_table1(molecules_to_table(pool), 30).num_rows == 20  # fewer than asked: all


def read_table_molecules(table):
    from afm_ray.molecules.database import table_to_molecules

    return table_to_molecules(table)


def test_info_prints_the_heavy_set_beside_thesis_table1(tmp_path, run_cli):
    out = tmp_path / "heavy.parquet"
    assert run_cli("molecules", "from-smiles", "C[Si](C)(C)Cl", "Clc1ccc(Br)cc1", "--out", out)[0] == 0
    code, text, err = run_cli("molecules", "info", out)
    assert code == 0, err
    assert "heavy set beside thesis Table 1: 2 molecules (thesis 4,317)" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.split("heavy set beside")[1].splitlines()[2:]}
    assert rows["Cl"] == ["2", "100.0", "2,122", "49.2"] and rows["Si"] == ["1", "50.0", "127", "2.9"]
    assert rows["P"] == ["0", "0.0", "375", "8.7"]


def shard_states(folder):
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.glob("shard-*.parquet")}


def test_build_heavy_killed_and_resumed_skips_and_records_sources(ray_session, tmp_path, run_cli):
    extra = tmp_path / "extra.smi"
    extra.write_text(f"{UNEMBEDDABLE} unembeddable\nC[Si](C)(C)Cl tmscl\n")
    out = tmp_path / "heavy.parquet"
    folder = tmp_path / "heavy.parquet.shards"
    command = ["molecules", "build-heavy", "--out", str(out), "--limit", "40", "--extra-smiles", str(extra),
               "--shard-size", "1", "--molecules", "0"]
    log = tmp_path / "killed.log"
    # the subprocess joins the session's Ray (RAY_ADDRESS); killing it, its driver, cancels its tasks
    with log.open("w") as handle:
        driver = subprocess.Popen([sys.executable, "-m", "afm_ray", *command], stdout=handle,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while len(shard_states(folder)) < 3:
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no shard within the time limit"
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = shard_states(folder)
    while (after_kill := shard_states(folder)) != before:  # tasks that were writing as the driver died
        before = after_kill
        time.sleep(2)
    assert 3 <= len(before) < 40 and not out.exists(), (len(before), log.read_text()[-2000:])

    # other settings than the shards were built with are refused, not mixed in
    code, _, err = run_cli(*command, "--optimize", "gfn2")
    assert code == 2 and "optimize differ" in err and "--fresh" in err
    # a time-boxed run: one more shard, then stop
    code, text, err = run_cli(*command, "--max-shards", "1")
    assert code == 0, err
    assert f"resuming: {len(before)} of 40 shards" in text and "stopped after 1 shards" in text
    assert not out.exists()
    code, text, err = run_cli(*command)
    assert code == 0, err
    assert f"resuming: {len(before) + 1} of 40 shards" in text
    after = shard_states(folder)
    assert {name: after[name] for name in before} == before  # finished shards were not rebuilt

    table = read_database(out)
    with (tmp_path / "heavy.skipped.csv").open() as handle:
        skipped = list(csv.DictReader(handle))
    assert table.num_rows + len(skipped) == 40 and len(set(table["id"].to_pylist())) == table.num_rows
    from rdkit import Chem

    assert {"id": "unembeddable", "source": "file:extra.smi", "smiles": Chem.CanonSmiles(UNEMBEDDABLE),
            "reason": "3D embedding (ETKDGv3) failed"} in skipped
    assert f"skipped {len(skipped)} " in text and "3D embedding (ETKDGv3) failed" in text
    sources = set(table["source"].to_pylist())
    assert sources == {"rdkit:NCI/first_5K.smi", "rdkit:Pains/test_data/wehi_mols.csv", "file:extra.smi",
                       "rdkit:Contrib/NIBRSubstructureFilters/SubstructureFilter_HitTriaging_wPubChemExamples.csv"}
    licences = dict(zip(table["source"].to_pylist(), table["licence"].to_pylist()))
    assert licences["rdkit:NCI/first_5K.smi"].startswith("BSD-3-Clause") and "extra.smi" in licences["file:extra.smi"]
    molecules = read_molecules(out)
    assert all(2 <= m.n_atoms <= 47 and abs(m.charges.sum()) < 1e-4 for m in molecules)
    assert all({"Si", "P", "S", "Cl", "Br"} & set(m.symbols) for m in molecules)
    assert not list(folder.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))

    # GFN2-xTB geometries, end to end: the extra file alone
    gfn2 = tmp_path / "gfn2.parquet"
    code, text, err = run_cli("molecules", "build-heavy", "--out", gfn2, "--no-rdkit-sources", "--extra-smiles", extra,
                              "--optimize", "gfn2")
    assert code == 0, err
    assert "built 1 molecules, skipped 1" in text
    (by_gfn2,) = read_molecules(gfn2)
    (by_mmff,) = read_molecules(out, ids=["tmscl"])
    assert by_gfn2.symbols == by_mmff.symbols and not np.allclose(by_gfn2.positions, by_mmff.positions, atol=1e-3)

    # merged with the light set and split: heavy rows keep their source and licence
    qm9 = tmp_path / "qm9.parquet"
    assert run_cli("molecules", "build-qm9", "--qm9-csv", QM9_SAMPLE, "--out", qm9)[0] == 0
    merged = tmp_path / "ds.parquet"
    code, text, err = run_cli("molecules", "split", qm9, "--name", "small", "--sizes", "20", "10", "10",
                              "--heavy-sizes", "10", "5", "5", "--merge", out, "--out", merged)
    assert code == 0, err
    assert "train 30 / val 15 / test 15 (light 20/10/10, heavy 10/5/5)" in text
    merged_table = pq.read_table(merged)
    heavy_rows = merged_table.filter(pc.not_equal(merged_table["source"], "qm9"))
    assert heavy_rows.num_rows == table.num_rows and heavy_rows["licence"].null_count == 0


@pytest.mark.parametrize("model", ["dsh", "es", "xyz"])
def test_dataset2_configs_are_the_thesis_configs_on_dataset2(model):
    from afm_ray.recipe import load_train_config

    from conftest import CONFIGS

    dataset1 = load_train_config(CONFIGS / f"{model}.yaml").model_dump()
    dataset2 = load_train_config(CONFIGS / f"{model}_dataset2.yaml").model_dump()
    assert (str(dataset2["data"]["database"]), dataset2["data"]["split"]) == ("data/dataset2.parquet", "dataset2")
    assert dataset2["run"]["name"] == f"{model}-dataset2"
    assert dataset2["mlflow"]["registered_model_name"] == f"afm-{model}-dataset2"
    for config in (dataset1, dataset2):
        del config["data"]["database"], config["data"]["split"], config["run"]["name"]
        del config["mlflow"]["registered_model_name"]
    assert dataset2 == dataset1


@pytest.mark.parametrize("arguments, message", [
    (["--no-rdkit-sources"], "--no-rdkit-sources: needs --extra-smiles"),
    (["--extra-smiles", "missing.smi"], "missing.smi: no such SMILES file"),
    (["--limit", "0"], "--limit: must be positive, got 0"),
])
def test_build_heavy_bad_arguments_give_one_line(tmp_path, run_cli, arguments, message):
    arguments = [str(tmp_path / a) if a.endswith(".smi") else a for a in arguments]
    code, _, err = run_cli("molecules", "build-heavy", "--out", tmp_path / "h.parquet", *arguments)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
