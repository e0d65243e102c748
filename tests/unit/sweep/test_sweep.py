"""Ray Tune sweeps: real trials through the training loop, ASHA, MLflow parent/child runs, champion model."""

import csv

import mlflow
import pytest
import torch
import yaml
from mlflow import MlflowClient

from afm_ray.errors import InputError
from afm_ray.sweep import load_sweep_config, run_sweep
from afm_ray.sweep.summary import write_summary

from conftest import CONFIGS

SWEEPS = CONFIGS.parent / "tune"  # the sweep definitions (tune/README.md)


@pytest.fixture
def sweep_file(tiny_database, tmp_path, mlflow_sqlite_uri):
    """A 2-trial learning-rate grid where the second trial (lr 1e-9) cannot learn: ASHA must stop it.

    (The Optuna searcher, and interrupting and resuming a sweep: tests/integration/test_resume.py, through the
    RayJob's entrypoint and tune/xyz.yaml.)"""
    train = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    train["data"].update(database=str(tiny_database), split="tiny", max_train_molecules=12,
                         fixed_set_dir=str(tmp_path / "fixed"))
    train["mlflow"] = {"tracking_uri": mlflow_sqlite_uri, "registered_model_name": "afm-sweep-dsh"}
    train["run"].update(epochs=2, batch_size=6, num_figure_samples=1)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    sweep = {
        "name": "test-sweep", "train_config": "train.yaml", "storage_path": str(tmp_path / "tune"),
        "search": {"optimizer.learning_rate": {"grid": [3e-3, 1e-9]}},
        "searcher": "random", "scheduler": {"type": "asha", "grace_period_epochs": 1, "reduction_factor": 2},
        "budget": {"num_samples": 1}, "max_concurrent_trials": 1,
        "mlflow": {"alias": "champion"},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_sweep_stops_bad_trials_and_registers_the_champion(ray_session, sweep_file, tmp_path, mlflow_sqlite_uri):
    outcome = run_sweep(load_sweep_config(sweep_file), progress=False)
    assert len(outcome.trials) == 2
    by_rate = {t["optimizer.learning_rate"]: t for t in outcome.trials}
    assert by_rate[1e-9]["epochs"] == 1  # ASHA stopped the trial that cannot learn at its rung
    assert by_rate[3e-3]["epochs"] == 2
    assert outcome.best_params["optimizer.learning_rate"] == 3e-3

    uri = mlflow_sqlite_uri
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("afm-ray")
    runs = client.search_runs([experiment.experiment_id])
    parent = client.get_run(outcome.parent_run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    assert len(children) == 2
    assert {float(c.data.params["optimizer.learning_rate"]) for c in children} == {3e-3, 1e-9}
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
    ({"search": {"sim.num_slices": {"choice": [10, 12]}}}, "search: sim.num_slices: value 10 changes the simulated data"),
    ({"search": {"model.name": {"choice": ["dsh", "es"]}}}, "search: model.name: value 'es' changes the simulated"),
    ({"search": {"pipeline.num_sim_actors": {"randint": [1, 3]}}}, "search: pipeline.num_sim_actors"),
])
def test_bad_sweeps_fail_before_any_trial(sweep_file, change, message):
    data = yaml.safe_load(sweep_file.read_text())
    data.update(change)
    sweep_file.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=message):
        run_sweep(load_sweep_config(sweep_file), progress=False)
    assert not (sweep_file.parent / "tune").exists()


def test_summary_plots_numeric_and_categorical_hyperparameters(tmp_path):
    trials = [{"trial_id": "a", "loss.dsh_weights": [20.0, 0.3, 0.2], "optimizer.learning_rate": 1e-3,
               "val_loss": 0.5, "epochs": 3, "error": ""},
              {"trial_id": "b", "loss.dsh_weights": [10.0, 0.3, 0.2], "optimizer.learning_rate": 2e-3,
               "val_loss": 0.4, "epochs": 2, "error": ""},
              {"trial_id": "c", "loss.dsh_weights": [10.0, 0.3, 0.2], "optimizer.learning_rate": 3e-3,
               "val_loss": None, "epochs": 0, "error": "RayTaskError"}]
    table, plot = write_summary(trials, ["loss.dsh_weights", "optimizer.learning_rate"], "val_loss", "min", tmp_path)
    rows = list(csv.DictReader(table.open()))
    assert [row["trial_id"] for row in rows] == ["b", "a", "c"]  # best first, unfinished last
    assert rows[0]["loss.dsh_weights"] == "[10.0, 0.3, 0.2]"
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_settings_each_trial_applies_itself_may_be_searched(sweep_file):
    from afm_ray.config import read_yaml
    from afm_ray.sweep.config import Dimension
    from afm_ray.sweep.space import check_space

    sweep = load_sweep_config(sweep_file)
    check_space(read_yaml(sweep.train_config), sweep.train_overrides, {
        "pipeline.max_attempts_per_batch": Dimension(choice=[2, 3]),
        "pipeline.max_in_flight_per_worker": Dimension(randint=(2, 8)),
        "pipeline.object_store_budget_mib_per_worker": Dimension(choice=[512.0, 4096.0]),
        "data.fixed_set_cache_mib": Dimension(choice=[0.0, 512.0])})


def test_the_pools_own_limits_may_not_be_searched(sweep_file):
    from afm_ray.config import read_yaml
    from afm_ray.sweep.config import Dimension
    from afm_ray.sweep.space import check_space

    sweep = load_sweep_config(sweep_file)
    with pytest.raises(InputError, match="pipeline.batch_timeout_s"):  # one dispatcher serves every trial
        check_space(read_yaml(sweep.train_config), sweep.train_overrides,
                    {"pipeline.batch_timeout_s": Dimension(choice=[60.0, 120.0])})


def test_thesis_sweeps_load_and_name_their_training_config():
    # train_config is relative to the sweep file: tune/xyz.yaml names ../configs/xyz.yaml
    for sweep_name, train_name in [("xyz", "xyz"), ("xyz_gamma_grid", "xyz"), ("dsh", "dsh"), ("es", "es")]:
        assert load_sweep_config(SWEEPS / f"{sweep_name}.yaml").train_config == (CONFIGS / f"{train_name}.yaml").resolve()
    grid = load_sweep_config(SWEEPS / "xyz_gamma_grid.yaml")
    assert grid.search["loss.gamma"].grid == [1.0, 1.25, 1.5, 1.75, 2.0]
