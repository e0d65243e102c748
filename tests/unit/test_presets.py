"""The shipped configs (afm_ray.presets): found by name or by their documented path from any directory,
listed and printed by ``afm-ray configs``; a wrong name is one clear line."""

from __future__ import annotations

import pytest

from afm_ray.errors import InputError
from afm_ray.presets import PRESETS_DIR, find_config, get_preset, list_presets
from afm_ray.recipe import load_train_config
from afm_ray.sim import SimConfig
from afm_ray.sweep import load_sweep_config
from conftest import CONFIGS

TUNE = CONFIGS.parent / "tune"


def test_every_config_of_the_repository_is_a_preset_of_one_kind():
    presets = list_presets()
    assert sorted((p.path.parent.name, p.path.name) for p in presets) == sorted(
        [("configs", path.name) for path in CONFIGS.glob("*.yaml")] + [("tune", path.name) for path in TUNE.glob("*.yaml")])
    assert {p.name: p.kind for p in list_presets("sim")} == {"sim": "sim"}
    assert {p.name for p in list_presets("train")} >= {"quickstart", "dsh", "es", "xyz", "published_asdafm"}
    assert all(p.summary for p in presets)  # every shipped config says what it is in its first line
    assert (PRESETS_DIR / "configs" / "quickstart.yaml").read_bytes() == (CONFIGS / "quickstart.yaml").read_bytes()


def test_a_config_is_found_by_name_or_documented_path_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("quickstart", "train").samefile(CONFIGS / "quickstart.yaml")
    assert find_config("quickstart.yaml", "train").samefile(CONFIGS / "quickstart.yaml")
    assert find_config("configs/dsh.yaml", "train").samefile(CONFIGS / "dsh.yaml")
    assert find_config("xyz", "tune").samefile(TUNE / "xyz.yaml")
    assert load_train_config("quickstart").sim.scan_pixels == (32, 32)
    assert SimConfig.from_yaml("sim") == SimConfig.from_yaml(CONFIGS / "sim.yaml")
    sweep = load_sweep_config("tune/xyz.yaml")  # its train_config ../configs/xyz.yaml: the shipped one
    assert sweep.train_config.samefile(CONFIGS / "xyz.yaml")


def test_a_file_of_the_working_directory_wins_over_the_preset_of_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.yaml").write_text("run:\n  epochs: 7\n")
    assert find_config("quickstart.yaml", "train") == tmp_path.joinpath("quickstart.yaml").relative_to(tmp_path)
    assert load_train_config("quickstart.yaml").run.epochs == 7
    assert load_train_config("quickstart").run.epochs == 3  # the bare name is the preset


def test_a_copied_sweep_preset_finds_its_training_config(tmp_path):
    copy = tmp_path / "my_sweep.yaml"
    copy.write_text((TUNE / "xyz.yaml").read_text())
    assert load_sweep_config(copy).train_config.samefile(CONFIGS / "xyz.yaml")


def test_unknown_or_ambiguous_preset_names_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"^--config: no train preset 'quickstrat' \(presets: dsh, .*quickstart"):
        load_train_config("quickstrat")
    with pytest.raises(InputError, match=r"'xyz' is a train and a tune preset: choose one with --kind train or --kind tune"):
        get_preset("xyz")
    with pytest.raises(InputError, match="cannot read config"):  # a path that is no preset: the loader's error
        load_train_config("elsewhere/quickstart.yaml")


def test_configs_list_and_show_print_the_shipped_configs(run_cli):
    code, out, _ = run_cli("configs", "list")
    rows = [line.split(maxsplit=2) for line in out.splitlines()]
    assert code == 0 and len(rows) == len(list_presets())
    assert ["train", "quickstart"] == rows[[row[1] for row in rows].index("quickstart")][:2]
    assert [row[0] for row in rows] == sorted((row[0] for row in rows), key=["train", "sim", "tune"].index)
    code, out, _ = run_cli("configs", "show", "xyz", "--kind", "tune")
    assert code == 0 and out == (TUNE / "xyz.yaml").read_text(encoding="utf-8")
    code, _, err = run_cli("configs", "show", "nonesuch")
    assert code == 2 and "no preset 'nonesuch'" in err
