"""Ray Tune sweeps: real trials through the training loop, ASHA, MLflow parent/child runs, champion model."""

import mlflow
import pytest
import torch
import yaml
from mlflow import MlflowClient

from afm_ray.errors import InputError
from tune import load_sweep_config, run_sweep

from conftest import CONFIGS


@pytest.fixture
def sweep_file(tiny_database, tmp_path):
    """A 3-trial learning-rate grid where one trial (lr 1e-9) cannot learn: ASHA must stop it."""
    train = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    train["data"].update(database=str(tiny_database), split="tiny", max_train_molecules=12,
                         fixed_set_dir=str(tmp_path / "fixed"))
    train["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlruns.db'}", "registered_model_name": "afm-sweep-dsh"}
    train["run"].update(epochs=3, batch_size=6)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    sweep = {
        "name": "test-sweep", "train_config": "train.yaml", "storage_path": str(tmp_path / "tune"),
        "search": {"optimizer.learning_rate": {"grid": [3e-3, 1e-9, 2e-3]}},
        "searcher": "random", "scheduler": {"type": "asha", "grace_period_epochs": 1, "reduction_factor": 2},
        "budget": {"num_samples": 1}, "max_concurrent_trials": 1,
        "mlflow": {"alias": "champion"},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_sweep_stops_bad_trials_and_registers_the_champion(ray_session, sweep_file, tmp_path):
    outcome = run_sweep(load_sweep_config(sweep_file), progress=False)
    assert len(outcome.trials) == 3
    by_rate = {t["optimizer.learning_rate"]: t for t in outcome.trials}
    assert by_rate[1e-9]["epochs"] < 3  # ASHA stopped the trial that cannot learn
    assert by_rate[3e-3]["epochs"] == 3
    assert outcome.best_params["optimizer.learning_rate"] != 1e-9

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("afm-ray")
    runs = client.search_runs([experiment.experiment_id])
    parent = client.get_run(outcome.parent_run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    assert len(children) == 3
    assert {float(c.data.params["optimizer.learning_rate"]) for c in children} == {3e-3, 1e-9, 2e-3}
    assert all(client.get_metric_history(c.info.run_id, "val_mse_mean") for c in children)
    assert "best_val_mse_mean" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"trials.csv", "objective_vs_hyperparameters.png"} <= artifacts

    mlflow.set_tracking_uri(uri)
    assert outcome.model_uri == "models:/afm-sweep-dsh@champion"
    model = mlflow.pytorch.load_model(outcome.model_uri)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32, 6)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("change, message", [
    ({"search": {"loss.gamma": {"uniform": [2.0, 1.0]}}}, "empty or inverted"),
    ({"search": {"loss.gamma": {"choice": []}}}, "at least one value"),
    ({"search": {"loss.gammma": {"uniform": [1.0, 2.0]}}}, "unknown hyperparameter name"),
    ({"search": {"loss.alpha_n": {"uniform": [0.5, 1.5]}}}, "search: loss.alpha_n"),
    ({"objective": {"metric": "val_atom_f1"}}, "does not report 'val_atom_f1'"),
    ({"budget": {"num_samples": 0}}, "num_samples must be ≥ 1"),
    ({"search": {}}, "at least one hyperparameter"),
])
def test_bad_sweeps_fail_before_any_trial(sweep_file, change, message):
    data = yaml.safe_load(sweep_file.read_text())
    data.update(change)
    sweep_file.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=message):
        run_sweep(load_sweep_config(sweep_file), progress=False)
    assert not (sweep_file.parent / "tune").exists()


def test_thesis_sweep_configs_load():
    for name in ("sweep_xyz.yaml", "sweep_xyz_gamma_grid.yaml", "sweep_dsh.yaml", "sweep_es.yaml"):
        config = load_sweep_config(CONFIGS / name)
        assert config.train_config.exists()
    grid = load_sweep_config(CONFIGS / "sweep_xyz_gamma_grid.yaml")
    assert grid.search["loss.gamma"].grid == [1.0, 1.25, 1.5, 1.75, 2.0]
