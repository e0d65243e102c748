"""Bad input as a user (or an attacker who can edit artifacts) would give it: every case is one line on
stderr, exit code 2, nothing imported or run, and existing outputs byte-identical.

No trained model and no Ray: input files are read before a model loads, and the model cases are
small hand-made artifacts (a checkpoint of an untrained DSH, an MLmodel folder around a tiny pt2).
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from afm_ray.config import SHOWN_VALUE_CHARS
from afm_ray.models.packed import PACKED_SPEC_METADATA_KEY
from afm_ray.recipe import TrainConfig
from afm_ray.registry.checkpoints import CHECKPOINT_FILE, HISTORY_FILE
from afm_ray.registry.registration import CONFIG_METADATA_KEY, SERIALIZATION_FORMAT, SERIALIZATION_METADATA_KEY

from conftest import CONFIGS, MOLECULE_FILES
from nanonis_files import write_3ds, write_sxm

HOSTILE_MODULE = "afm_hostile_plugin"  # its import writes a marker file: the visible side effect


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, path → bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_one_line_refusal(result, fragment: str) -> str:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("afm-ray: error: "), err[:2000]
    assert fragment in lines[0], lines[0]
    assert len(lines[0]) < 700, lines[0][:2000]
    return lines[0]


@pytest.fixture
def workspace(tmp_path):
    """(folder, a good 32 × 32 × 12 stack .npz, an output folder holding an earlier result)."""
    good = tmp_path / "good.npz"
    np.savez(good, df=np.ones((32, 32, 12), np.float32) + np.arange(32)[:, None, None])
    out = tmp_path / "out"
    out.mkdir()
    np.savez(out / "earlier.npz", x=np.arange(5))
    (out / "summary.json").write_text('{"earlier": true}')
    return tmp_path, good, out


@pytest.fixture
def hostile_module(tmp_path, monkeypatch):
    """An importable module whose import writes ``imported.marker``: (its name, the marker path)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    marker = tmp_path / "imported.marker"
    (folder / f"{HOSTILE_MODULE}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, HOSTILE_MODULE, raising=False)
    yield HOSTILE_MODULE, marker
    sys.modules.pop(HOSTILE_MODULE, None)


def tiny_pt2(corrupt_weight: bool = False) -> bytes:
    """A pickle-free pt2 archive of a 3 → 2 linear layer; ``corrupt_weight``: its first raw weight cut to 5 bytes."""
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    if not corrupt_weight:
        return buffer.getvalue()
    source, cut = zipfile.ZipFile(io.BytesIO(buffer.getvalue())), io.BytesIO()
    with zipfile.ZipFile(cut, "w") as archive:
        for info in source.infolist():
            data = source.read(info)
            archive.writestr(info, data[:5] if info.filename.endswith("weights/weight_0") else data)
    return cut.getvalue()


def mlflow_model_folder(folder: Path, config: dict, archive: bytes) -> Path:
    """An MLflow pt2 model folder as afm-ray registers it, with ``config`` as its training config."""
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "model.pt2").write_bytes(archive)
    packed = {"model_name": "dsh", "output_names": ["atomic_disks", "vdw_spheres", "height_map"],
              "output_channels": [1, 1, 1]}
    mlmodel = {"artifact_path": "model", "flavors": {"pytorch": {"model_data": "data", "pytorch_version": str(torch.__version__)}},
               "metadata": {CONFIG_METADATA_KEY: config, PACKED_SPEC_METADATA_KEY: packed,
                            SERIALIZATION_METADATA_KEY: SERIALIZATION_FORMAT},
               "utc_time_created": "2026-01-01 00:00:00.000000"}
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return folder


def checkpoint_folder(folder: Path, config: dict | None = None) -> Path:
    """A training checkpoint of an untrained DSH (quickstart settings), its config replaced by ``config``."""
    trained = TrainConfig.model_validate(yaml.safe_load((CONFIGS / "quickstart.yaml").read_text()))
    folder.mkdir()
    torch.save({"model": trained.build_network().state_dict(), "config_json": json.dumps(config) if config else
                trained.model_dump_json(), "epoch": 0}, folder / CHECKPOINT_FILE)
    (folder / HISTORY_FILE).write_text("[]")
    return folder


def predict(run_cli, model, inputs, out, *extra):
    return run_cli("predict", "--model", model, "--input", *inputs, "--out", out, "--local", *extra)


# -- input files ------------------------------------------------------------------------------------
def _grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.3ds"
    write_3ds(path, np.random.default_rng(0).normal(size=(32, 32, 12)).astype(np.float32), (16.0, 16.0),
              np.linspace(1e-10, 2.1e-9, 12))
    return path


@pytest.mark.parametrize("case, fragment", [
    ("3ds cut by 4 KB", "grid.3ds: truncated: the header's 32×32 px × 17 values (parameters + points × channels) "
                        "need 69632 bytes of data (4-byte values), the file holds 65536"),
    ("3ds with extra bytes", "grid.3ds: longer than its header says"),
    ("sxm cut", "image.sxm: cannot read Nanonis scan: cannot reshape array"),
    ("npz cut in half", "cut.npz: not a readable .npz archive, truncated or corrupt?"),
    ("npz cut to 100 bytes", "cut.npz: not a readable .npz archive, truncated or corrupt?"),
    ("npz member corrupt", "cut.npz: not a readable .npz archive, truncated or corrupt?"),
    ("npy cut", "cut.npy: not a readable .npy array"),
    ("out is a file", "summary.json exists and is not a folder"),
])
def test_a_bad_input_file_gives_one_line_and_leaves_outputs_intact(workspace, run_cli, case, fragment):
    folder, good, out = workspace
    inputs, target = [good], out
    if case.startswith("3ds"):
        grid = _grid(folder)
        data = grid.read_bytes()
        grid.write_bytes(data[:-4096] if "cut" in case else data + b"\0" * 64)
        inputs = [grid]
    elif case == "sxm cut":
        image = folder / "image.sxm"
        write_sxm(image, np.ones((32, 32), np.float32), (16.0, 16.0))
        image.write_bytes(image.read_bytes()[:-4096])
        inputs = [image]
    elif case.startswith("npz"):
        cut = folder / "cut.npz"
        np.savez_compressed(cut, df=np.random.default_rng(0).normal(size=(32, 32, 12)).astype(np.float32))
        data = cut.read_bytes()
        if case == "npz member corrupt":  # flip bytes inside the compressed member, keep the zip's directory
            data = data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:]
        cut.write_bytes(data[:len(data) // 2] if "half" in case else data[:100] if "100" in case else data)
        inputs = [cut]
    elif case == "npy cut":
        cut = folder / "cut.npy"
        np.save(cut, np.ones((32, 32, 12), np.float32))
        cut.write_bytes(cut.read_bytes()[:-4096])
        inputs = [cut]
    elif case == "out is a file":
        target = out / "summary.json"
    before = snapshot(folder)
    assert_one_line_refusal(predict(run_cli, folder / "no-model-needed", inputs, target), fragment)
    assert snapshot(folder) == before


def test_a_truncated_3ds_was_zero_padded_by_the_reader(tmp_path):
    """Why the length check exists: nanonispy2 reads the cut grid without complaint, its last rows zeros."""
    import nanonispy2

    grid = _grid(tmp_path)
    grid.write_bytes(grid.read_bytes()[:-4096])
    signal = nanonispy2.read.Grid(str(grid)).signals["OC M1 Freq. Shift (Hz)"]
    assert signal.shape == (32, 32, 12) and not signal[-1].any() and signal[0].any()


# -- model artifacts -----------------------------------------------------------------------------------
def test_a_model_naming_a_module_is_refused_before_anything_is_imported(workspace, run_cli, hostile_module):
    folder, good, out = workspace
    name, marker = hostile_module
    model = mlflow_model_folder(folder / "hostile", {"model": {"name": "hostile", "module": name}}, tiny_pt2())
    before = snapshot(folder)
    line = assert_one_line_refusal(predict(run_cli, model, [good], out),
                                   f"refused: model.module '{name}' would be imported, and an artifact never "
                                   f"chooses code; if you trust it, pass --allow-module {name}")
    assert line.startswith(f"afm-ray: error: {model}: {CONFIG_METADATA_KEY}: refused")
    assert not marker.exists() and name not in sys.modules
    assert snapshot(folder) == before

    # the user's opt-in is what imports it (and then the name it registers is looked up)
    result = predict(run_cli, model, [good], out, "--allow-module", name)
    assert_one_line_refusal(result, f"model: Value error, unknown model 'hostile' ({name} registers no such model)")
    assert marker.exists()


def test_a_checkpoint_naming_a_module_is_refused_before_anything_is_imported(workspace, run_cli, hostile_module):
    folder, good, out = workspace
    name, marker = hostile_module
    config = TrainConfig().model_dump(mode="json")
    config["model"] = {"name": "hostile", "module": name}
    checkpoint = checkpoint_folder(folder / "checkpoint_000000", config)
    before = snapshot(folder)
    assert_one_line_refusal(predict(run_cli, checkpoint, [good], out), f"state.pt: refused: model.module '{name}'")
    assert not marker.exists() and name not in sys.modules
    assert snapshot(folder) == before


def test_a_module_listed_in_the_trusted_setting_may_be_imported(hostile_module, tmp_path, monkeypatch):
    from afm_ray.errors import InputError
    from afm_ray.registry.loading import load_model

    name, marker = hostile_module
    model = mlflow_model_folder(tmp_path / "plugin", {"model": {"name": "hostile", "module": name}}, tiny_pt2())
    monkeypatch.setenv("AFM_RAY_TRUSTED_MODULES", f"other, {name}")
    with pytest.raises(InputError, match="unknown model 'hostile'"):
        load_model(model)
    assert marker.exists()


@pytest.mark.parametrize("case, fragment", [
    ("state.pt cut", "state.pt: not a readable checkpoint (truncated or corrupt?)"),
    ("pt2 weight cut", "corrupt pt2 archive (Record data/weights/weight_0: size 5 is not a multiple of element size 4"),
])
def test_a_damaged_model_gives_one_line_and_leaves_outputs_intact(workspace, run_cli, case, fragment):
    folder, good, out = workspace
    if case == "state.pt cut":
        model = checkpoint_folder(folder / "checkpoint_000000")
        state = model / CHECKPOINT_FILE
        state.write_bytes(state.read_bytes()[:-4096])
    else:
        config = TrainConfig.model_validate(yaml.safe_load((CONFIGS / "quickstart.yaml").read_text()))
        model = mlflow_model_folder(folder / "model", config.model_dump(mode="json"), tiny_pt2(corrupt_weight=True))
    before = snapshot(folder)
    assert_one_line_refusal(predict(run_cli, model, [good], out), fragment)
    assert snapshot(folder) == before


# -- configs -----------------------------------------------------------------------------------------
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{level}: &{level} [{','.join([f'*{previous}'] * 9)}]\n" for previous, level in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("case, fragment", [
    ("billion laughs", "laughs.yaml: not valid YAML (its aliases expand to more than 100000 nodes)"),
    ("aliased bad value", "aliased.yaml: run.epochs: Input should be a valid integer (got [[[["),
    ("long bad value", "long.yaml: run.name: Input should be a valid string (got ["),
])
def test_a_bad_config_gives_one_short_line(tmp_path, run_cli, case, fragment):
    path = tmp_path / fragment.split(":")[0]
    if case == "billion laughs":
        path.write_text(BILLION_LAUGHS)
    elif case == "aliased bad value":  # 9⁴ list items: a full repr would be ~40 kB, validation still quick
        path.write_text(BILLION_LAUGHS.split("\ne:")[0] + "\nrun: {epochs: *d}\n")
    else:
        path.write_text(yaml.safe_dump({"run": {"name": ["x" * 10_000] * 20}}))
    line = assert_one_line_refusal(run_cli("train", "--config", path), fragment)
    assert len(line) < 300 + 3 * SHOWN_VALUE_CHARS


# -- molecules ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, atoms, fragment", [
    ("same position", "C 0 0 0 0.1\nO 1.2 0 0 -0.2\nH 0 0 0 0.1\n",
     "bad.xyz:1: atom 1 (C) and atom 3 (H) are 0 Å apart, closer than 0.5 Å (1 such pair(s))"),
    ("too close", "C 0 0 0 0.1\nO 1.2 0 0 -0.2\nH 0.3 0.2 0 0.1\n",
     "bad.xyz:1: atom 1 (C) and atom 3 (H) are 0.361 Å apart"),
    ("far away", "C 0 0 0 0.1\nO 1e30 0 0 -0.2\nH 0 1 0 0.1\n", "bad.xyz:1: atom 2 (O) lies at [1e+30, 0.0, 0.0] Å, beyond ±1000 Å"),
    ("computed charges", "C 0 0 0\nO 1.2 0 0\nO 1.2 0 0.1\n", "bad.xyz:1: atom 2 (O) and atom 3 (O) are 0.1 Å apart"),
])
def test_a_meaningless_molecule_is_refused_and_the_database_kept(tmp_path, run_cli, case, atoms, fragment):
    database = tmp_path / "molecules.parquet"
    code, _, err = run_cli("molecules", "import", MOLECULE_FILES / "qm9_with_charges.xyz", "--out", database)
    assert code == 0, err
    bad = tmp_path / "bad.xyz"
    bad.write_text(f"{atoms.count(chr(10))}\nbad geometry\n{atoms}")
    charges = ["--charges", "gasteiger"] if case == "computed charges" else []
    before = snapshot(tmp_path)
    assert_one_line_refusal(run_cli("molecules", "import", bad, *charges, "--out", database, "--append"), fragment)
    assert snapshot(tmp_path) == before
