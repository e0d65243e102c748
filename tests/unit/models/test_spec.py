"""The model registry: each model is one ModelSpec with its own loss settings, and a model registered from
outside afm_ray, with its own loss weight and a new descriptor, trains, registers, loads and is swept through
the normal path."""

from __future__ import annotations


import pytest
import torch
import yaml
from mlflow import MlflowClient

from afm_ray.config import load_config
from afm_ray.errors import InputError
from afm_ray.models import DshLossSettings, XyzLossSettings, get_model_spec, list_model_specs
from afm_ray.recipe import TrainConfig

from conftest import REPO


def test_the_thesis_models_are_registered_with_their_tips_outputs_and_objectives():
    specs = {spec.name: spec for spec in list_model_specs()}
    assert {"dsh", "es", "xyz"} <= set(specs)
    assert specs["es"].tips == ("CO", "Xe") and specs["dsh"].tips == specs["xyz"].tips == ("CO",)
    assert specs["dsh"].output_names == ("atomic_disks", "vdw_spheres", "height_map")
    assert (specs["dsh"].objective.metric, specs["xyz"].objective.mode) == ("val_mse_mean", "max")
    assert specs["xyz"].rotations_per_molecule == 30 and specs["dsh"].rotations_per_molecule == 20


def test_the_loss_section_is_the_chosen_models_own_type_with_thesis_defaults():
    assert TrainConfig().loss == DshLossSettings() and TrainConfig().loss.dsh_weights == (20.0, 0.3, 0.2)
    xyz = TrainConfig.model_validate({"model": {"name": "xyz"}, "loss": {"gamma": 1.5}})
    assert xyz.loss == XyzLossSettings(gamma=1.5) and (xyz.loss.alpha_n, xyz.loss.beta_pl) == (0.30, 0.15)
    assert TrainConfig.model_validate(xyz.model_dump(mode="json")) == xyz  # a stored config reads back
    for spec in list_model_specs():  # every field says its unit or that it has none
        for name, info in spec.loss_settings.model_fields.items():
            assert info.description and ("Å" in info.description or "dimensionless" in info.description), name


def test_a_loss_field_of_another_model_is_a_one_line_error_naming_file_and_field(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "dsh"}, "loss": {"gamma": 1.5}}))
    with pytest.raises(InputError, match=rf"^{path}: loss.gamma: Extra inputs are not permitted \(got 1.5\)$"):
        load_config(TrainConfig, path)
    with pytest.raises(InputError, match=r"^config: loss.dsh_weights.1: Input should be a valid number"):
        load_config(TrainConfig, None, ["loss.dsh_weights=[1, fast, 2]"])


def test_a_stored_config_of_the_shared_loss_section_keeps_its_models_fields():
    shared = {"dsh_weights": [10, 0.3, 0.2], "es_weights": [1, 0.1], "gamma": 2.0, "alpha_n": 0.3, "beta_pl": 0.15,
              "z_min_angstrom": -0.7}  # what afm-ray 0.1 wrote into every registered model and checkpoint
    assert TrainConfig.model_validate({"loss": shared}).loss == DshLossSettings(dsh_weights=(10, 0.3, 0.2))
    xyz = TrainConfig.model_validate({"model": {"name": "xyz"}, "loss": shared}).loss
    assert xyz == XyzLossSettings(gamma=2.0)


def test_an_unknown_model_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; registered: .*dsh, es, .*xyz"):
        TrainConfig.model_validate({"model": {"name": "nope"}})
    with pytest.raises(InputError, match="model.name"):
        get_model_spec("nope")


def test_a_model_module_that_cannot_be_imported_is_named():
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        TrainConfig.model_validate({"model": {"name": "nope", "module": "no_such_module"}})


def test_a_toy_model_with_its_own_loss_weight_and_descriptor_trains_registers_loads_and_is_swept(
        ray_session, tiny_config, run_cli, monkeypatch, tmp_path):
    # Ray workers import the module by name: Ray puts the driver's working directory (the repository
    # root, where tests/ lies) on their path; the driver gets it here whatever pytest's import mode.
    monkeypatch.syspath_prepend(str(REPO))
    from afm_ray.predict import load_model
    from afm_ray.sweep import load_sweep_config, run_sweep
    from afm_ray.registry.checkpoints import load_checkpoint_model

    train = tiny_config.model_dump(mode="json") | {"model": {"name": "toy", "module": "tests.toy_model"},
                                                   "loss": {"footprint_weight": 0.25}}
    train["run"] |= {"epochs": 1, "name": "toy", "num_figure_samples": 0}
    train["pipeline"]["num_sim_actors"] = 1
    train["mlflow"]["registered_model_name"] = "afm-test-toy"
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(train))
    code, out, err = run_cli("train", "--config", tmp_path / "toy.yaml")
    assert code == 0, err
    config = TrainConfig.model_validate(train)
    client = MlflowClient(config.mlflow.tracking_uri)
    version = client.get_model_version_by_alias("afm-test-toy", "current")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "toy"
    assert run.data.params["loss.footprint_weight"] == "0.25"
    assert {"val_mse_vdw_spheres", "val_mse_toy_footprint"} <= set(run.data.metrics)  # the new descriptor's target
    assert client.get_registered_model("afm-test-toy").tags["afm_ray.architecture"] == "toy"

    uri = "models:/afm-test-toy@current"
    with pytest.raises(InputError, match=r"refused: model.module 'tests.toy_model' would be imported.*"
                                         r"--allow-module tests.toy_model"):
        load_model(uri, config.mlflow.tracking_uri)  # an artifact never chooses code on its own
    loaded = load_model(uri, config.mlflow.tracking_uri, allowed_modules=["tests.toy_model"])
    assert loaded.model_name == "toy" and loaded.output_names == ("vdw_spheres", "toy_footprint")
    checkpoint = out.split("checkpoint ")[-1].strip()
    trained, _, _ = load_checkpoint_model(checkpoint)
    x = torch.randn(2, 1, 32, 32, config.input_slices)
    with torch.no_grad():
        torch.testing.assert_close(loaded.packed.unpack(loaded.packed(x))["toy_footprint"], trained(x)[1],
                                   rtol=0, atol=0)

    sweep = {"name": "toy-sweep", "train_config": "toy.yaml", "storage_path": str(tmp_path / "tune"),
             "search": {"loss.footprint_weight": {"grid": [0.0, 2.0]}}, "searcher": "grid",
             "scheduler": {"type": "none"}, "budget": {"num_samples": 1}, "max_concurrent_trials": 1,
             "mlflow": {"registered_model_name": "afm-test-toy-sweep", "alias": "champion"}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    outcome = run_sweep(load_sweep_config(tmp_path / "sweep.yaml"), progress=False)
    assert sorted(trial["loss.footprint_weight"] for trial in outcome.trials) == [0.0, 2.0]
    assert all(trial["epochs"] == 1 for trial in outcome.trials)


def test_targets_are_registered_descriptors_and_a_name_has_one_owner():
    from afm_ray.samples.batches import Task
    from afm_ray.descriptors.registry import descriptor_names, register_descriptor

    assert {"atomic_disks", "vdw_spheres", "height_map", "es_map", "xyz_classes", "xyz_offsets"} <= set(
        descriptor_names())
    for spec in list_model_specs():
        assert set(spec.targets) <= set(descriptor_names()), spec.name
    with pytest.raises(InputError, match=r"targets: unknown descriptor 'vdw_sphere'; registered: .*vdw_spheres"):
        Task(("CO",), ("vdw_sphere",))
    with pytest.raises(ValueError, match="descriptor 'vdw_spheres' is already registered by afm_ray.descriptors"):
        register_descriptor("vdw_spheres")(lambda batch: None)
