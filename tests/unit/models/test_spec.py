"""The model registry: each model is one ModelSpec, and a model registered from outside afm_ray
trains, registers and loads through the normal path."""

from __future__ import annotations


import pytest
import torch
from mlflow import MlflowClient

from afm_ray.errors import InputError
from afm_ray.models import get_model_spec, list_model_specs
from afm_ray.train.config import LossSettings, TrainConfig

from conftest import REPO


def test_the_thesis_models_are_registered_with_their_tips_outputs_and_objectives():
    specs = {spec.name: spec for spec in list_model_specs()}
    assert {"dsh", "es", "xyz"} <= set(specs)
    assert specs["es"].tips == ("CO", "Xe") and specs["dsh"].tips == specs["xyz"].tips == ("CO",)
    assert specs["dsh"].output_names == ("atomic_disks", "vdw_spheres", "height_map")
    assert (specs["dsh"].objective.metric, specs["xyz"].objective.mode) == ("val_mse_mean", "max")
    assert specs["xyz"].rotations_per_molecule == 30 and specs["dsh"].rotations_per_molecule == 20


def test_loss_settings_take_their_defaults_from_the_specs():
    settings = LossSettings()
    for spec in list_model_specs():
        for name, value in spec.loss_defaults.items():
            assert getattr(settings, name) == value, (spec.name, name)


def test_an_unknown_model_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; registered: .*dsh, es, .*xyz"):
        TrainConfig.model_validate({"model": {"name": "nope"}})
    with pytest.raises(InputError, match="model.name"):
        get_model_spec("nope")


def test_a_model_module_that_cannot_be_imported_is_named():
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        TrainConfig.model_validate({"model": {"name": "nope", "module": "no_such_module"}})


def test_a_toy_model_registered_outside_afm_ray_trains_registers_and_loads(ray_session, tiny_config, monkeypatch):
    # Ray workers import the module by name: Ray puts the driver's working directory (the repository
    # root, where tests/ lies) on their path; the driver gets it here whatever pytest's import mode.
    monkeypatch.syspath_prepend(str(REPO))
    from afm_ray.predict import load_model
    from afm_ray.train.loop import load_checkpoint_model
    from afm_ray.train.trainer import run_training

    config = TrainConfig.model_validate(tiny_config.model_dump(mode="json") | {
        "model": {"name": "toy", "module": "tests.toy_model"},
        "run": {**tiny_config.run.model_dump(mode="json"), "epochs": 1, "name": "toy"},
        "mlflow": {**tiny_config.mlflow.model_dump(mode="json"), "registered_model_name": "afm-test-toy"}})
    outcome = run_training(config, progress=False)

    client = MlflowClient(config.mlflow.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "toy"
    assert [m.step for m in client.get_metric_history(outcome.run_id, "val_loss")] == [0]
    assert "val_mse_vdw_spheres" in run.data.metrics
    assert client.get_registered_model("afm-test-toy").tags["afm_ray.architecture"] == "toy"

    with pytest.raises(InputError, match=r"refused: model.module 'tests.toy_model' would be imported.*"
                                         r"--allow-module tests.toy_model"):
        load_model(outcome.model_uri, config.mlflow.tracking_uri)  # an artifact never chooses code on its own
    loaded = load_model(outcome.model_uri, config.mlflow.tracking_uri, allowed_modules=["tests.toy_model"])
    assert loaded.model_name == "toy" and loaded.tips == ("CO",) and loaded.output_names == ("vdw_spheres",)
    trained, _, _ = load_checkpoint_model(outcome.checkpoint_path)
    x = torch.randn(2, 1, 32, 32, config.input_slices)
    with torch.no_grad():
        torch.testing.assert_close(loaded.packed.unpack(loaded.packed(x))["vdw_spheres"], trained(x)[0],
                                   rtol=0, atol=0)
