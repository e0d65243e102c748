"""Shared fixtures: test data paths and an in-process CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
QM9_SAMPLE = DATA / "qm9_sample.csv"
MOLECULE_FILES = DATA / "molecules"
CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture
def run_cli(capsys):
    """Run ``afm-ray ARGS…`` in-process; returns (exit code, stdout, stderr)."""
    from afm_ray.cli import main

    def run(*args):
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def qm9_sample_db(tmp_path, run_cli):
    """A database built from the committed 49-molecule QM9 sample."""
    path = tmp_path / "qm9.parquet"
    code, out, err = run_cli("molecules", "build-qm9", "--qm9-csv", QM9_SAMPLE, "--out", path)
    assert code == 0, err
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole test session (ray.init costs seconds)."""
    import ray

    # the dashboard stays on: without it Tune hangs on placement-group cleanup (RAY-NOTES)
    ray.init(num_cpus=4, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_database(tmp_path_factory):
    """The 49-molecule QM9 sample with a small split 'tiny' (train 12 / val 6 / test 6)."""
    from afm_ray.cli import main

    folder = tmp_path_factory.mktemp("db")
    path = folder / "qm9.parquet"
    assert main(["molecules", "build-qm9", "--qm9-csv", str(QM9_SAMPLE), "--out", str(path)]) == 0
    assert main(["molecules", "split", str(path), "--name", "tiny", "--sizes", "12", "6", "6"]) == 0
    return path


@pytest.fixture
def tiny_config(tiny_database, tmp_path):
    """A training config small enough for a 2-core CI machine: 32×32 px scans, 12 → 8 → 6 slices."""
    from afm_ray.train.config import load_train_config

    return load_train_config(CONFIGS / "quickstart.yaml", [
        f"data.database={tiny_database}", "data.split=tiny", "data.max_train_molecules=12",
        "data.rotations_per_molecule=2", f"data.fixed_set_dir={tmp_path / 'fixed'}",
        f"run.storage_path={tmp_path / 'runs'}", "run.epochs=2", "run.batch_size=6", "run.name=tiny",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}", "mlflow.registered_model_name=afm-test-dsh",
    ])
