"""``afm-ray bench sweep-concurrency``: sweep throughput with 1 and 2 concurrent trials (trial-epochs per hour),
on this machine.

    afm-ray bench sweep-concurrency --database data/qm9.parquet [--trials 4] [--epochs 2]

Runs the same learning-rate grid (``--trials`` values, no early stopping) through ``afm-ray tune``'s
runner with ``max_concurrent_trials`` 1 and then 2, on the quickstart training config (``--config``) (32 × 32 px,
DSH; two simulation actors of 0.25 CPU shared by all trials, 0.5 CPU per training worker), each
in its own storage and MLflow SQLite store under ``--work-dir``. Prints wall time,
trial-epochs/hour and the mean data-wait fraction of the trials (how much the trials starved each
other of simulation capacity: all trials share one pool of simulation actors).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml


def sweep_file(folder: Path, train_config: Path, database: Path, trials: int, epochs: int, concurrency: int) -> Path:
    train = yaml.safe_load(train_config.read_text())
    train["data"].update(database=str(database.resolve()), fixed_set_dir=str(folder.parent / "fixed"))
    train["run"]["epochs"] = epochs
    train["mlflow"] = {"tracking_uri": f"sqlite:///{folder / 'mlruns.db'}", "registered_model_name": "afm-bench-dsh"}
    (folder / "train.yaml").write_text(yaml.safe_dump(train))
    rates = [1e-3 * (1 + index) for index in range(trials)]
    sweep = {"name": f"concurrency-{concurrency}", "train_config": "train.yaml", "storage_path": str(folder / "tune"),
             "search": {"optimizer.learning_rate": {"grid": rates}}, "searcher": "random",
             "scheduler": {"type": "none"}, "budget": {"num_samples": 1}, "max_concurrent_trials": concurrency,
             # two trials must fit on a 2-core machine: 2 × 0.25 (actors) + 2 × (0.5 worker + 0.25 driver)
             "train_overrides": {"pipeline.sim_num_cpus": 0.25, "scaling.cpus_per_worker": 0.5},
             "trial_driver_cpus": 0.25}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def mean_wait_fraction(tracking_uri: str, parent_run_id: str) -> float:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("afm-ray")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    values = [m.value for child in children for m in client.get_metric_history(child.info.run_id, "data_wait_fraction")]
    return sum(values) / max(len(values), 1)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep-concurrency", help="sweep throughput with 1 and 2 concurrent trials",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/quickstart.yaml"),
                        help="the training config of every trial (default configs/quickstart.yaml)")
    parser.add_argument("--database", type=Path, default=Path("data/qm9.parquet"))
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--concurrency", default="1,2", help="comma-separated max_concurrent_trials values")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from afm_ray.sweep import load_sweep_config, run_sweep

    root = args.work_dir or Path(tempfile.mkdtemp(prefix="afm-ray-sweep-bench-"))
    rows = []
    for concurrency in (int(value) for value in args.concurrency.split(",")):
        folder = root / f"concurrency-{concurrency}"
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        outcome = run_sweep(load_sweep_config(sweep_file(folder, args.config, args.database, args.trials, args.epochs, concurrency)),
                            progress=False)
        seconds = time.perf_counter() - started
        trial_epochs = sum(trial["epochs"] for trial in outcome.trials)
        rows.append((concurrency, seconds, trial_epochs, mean_wait_fraction(f"sqlite:///{folder / 'mlruns.db'}",
                                                                             outcome.parent_run_id)))
    print(f"{'concurrent':>10} {'wall s':>8} {'trial-epochs':>12} {'trial-epochs/h':>14} {'data wait':>9}")
    for concurrency, seconds, trial_epochs, wait in rows:
        print(f"{concurrency:>10d} {seconds:>8.1f} {trial_epochs:>12d} {3600 * trial_epochs / seconds:>14.0f} "
              f"{100 * wait:>8.0f}%")
    return 0
