"""Running a sweep: one shared simulation pipeline, Tune trials that each run the training loop, MLflow parent/child runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray import tune

from afm_ray.config import read_yaml
from afm_ray.errors import InputError
from afm_ray.train.config import TrainConfig
from afm_ray.train.steps import objective, reported_metrics
from afm_ray.train.tracking import RunTracker
from afm_ray.train.trainer import (Pipeline, backfill_run, best_and_latest_checkpoints, build_trainer,
                                   finish, open_mlflow_run, prepare, record_run_id, recorded_run_id,
                                   start_pipeline)
from tune.config import SweepConfig
from tune.space import check_space, param_path, param_space, trial_config
from tune.summary import write_summary

TRIALS_FOLDER = "trials"


@dataclass
class SweepOutcome:
    parent_run_id: str
    best_trial_id: str
    best_params: dict
    best_metric: float
    model_uri: str
    trials: list[dict]


def run_trial(params: dict, *, base: dict, train_overrides: dict, pipeline: Pipeline, tracking_uri: str,
              parent_run_id: str, trials_dir: str) -> None:
    """One Tune trial: the ``afm-ray train`` loop with this trial's hyperparameters, reporting every epoch to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    config = trial_config(base, train_overrides, params)
    run_dir = Path(trials_dir) / trial_id
    run_id = open_mlflow_run(config, tracking_uri, run_dir, parent_run_id=parent_run_id)
    trainer = build_trainer(config, pipeline, tracking_uri, run_id, Path(trials_dir), trial_id,
                            callbacks=(TuneReportCallback(),))
    trainer.fit()


def _validated(sweep: SweepConfig) -> tuple[dict, TrainConfig, str, str]:
    base = read_yaml(sweep.train_config)
    check_space(base, sweep.train_overrides, sweep.search)
    first = trial_config(base, sweep.train_overrides, {}, where=str(sweep.train_config))
    metric, mode = objective(first)
    metric = sweep.objective.metric or metric
    mode = sweep.objective.mode or mode
    available = reported_metrics(first)
    if metric not in available:
        raise InputError("objective.metric", f"the {first.model.name} model does not report {metric!r}; "
                                             f"choose one of {sorted(available)}")
    return base, first, metric, mode


def _parent_run(sweep: SweepConfig, config: TrainConfig, tracking_uri: str, sweep_dir: Path) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = recorded_run_id(sweep_dir)
    if run_id is not None:
        return run_id
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.mlflow.experiment)
    run = client.create_run(experiment_id, run_name=sweep.name, tags={"afm_ray.sweep": sweep.name})
    client.log_param(run.info.run_id, "sweep_config", sweep.model_dump_json()[:6000])
    record_run_id(sweep_dir, run.info.run_id)
    return run.info.run_id


def _searcher(sweep: SweepConfig):
    if sweep.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=0)  # TuneConfig.max_concurrent_trials wraps it in a ConcurrencyLimiter
    return None  # random sampling and grids: Tune's basic variant generator


def _scheduler(sweep: SweepConfig, config: TrainConfig):
    if sweep.scheduler.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # epochs, not training_iteration: Tune restarts that count at 1 when a trial resumes
    return ASHAScheduler(time_attr="epochs_completed", max_t=config.run.epochs,
                         grace_period=min(sweep.scheduler.grace_period_epochs, config.run.epochs),
                         reduction_factor=sweep.scheduler.reduction_factor)


def run_sweep(sweep: SweepConfig, resume: bool = False, progress: bool = True) -> SweepOutcome:
    """Run (or with ``resume`` continue) a sweep; registers the best trial's model as NAME@ALIAS."""
    base, first, metric, mode = _validated(sweep)
    config, tracking_uri, counts = prepare(first, workers_at_once=sweep.max_concurrent_trials,
                                       driver_cpus=sweep.trial_driver_cpus)
    sweep_dir = (sweep.storage_path / sweep.name).resolve()
    if (sweep_dir / "tuner.pkl").exists() and not resume:
        raise InputError(f"{sweep_dir}", "a sweep of this name exists; pass --resume to continue it "
                                         "or choose another name")
    if resume and not tune.Tuner.can_restore(str(sweep_dir)):
        raise InputError(f"{sweep_dir}", "no interrupted sweep to resume here")
    # Trials start from the driver's resolved config: the same absolute paths and tracking store.
    resolved = config.model_dump(mode="json")
    resolved["run"]["storage_path"] = str(sweep_dir / TRIALS_FOLDER)
    parent_run_id = _parent_run(sweep, config, tracking_uri, sweep_dir)
    pipeline = start_pipeline(config, counts, progress)
    if sweep.max_concurrent_trials > 1:
        print(f"note: {sweep.max_concurrent_trials} concurrent trials share {len(pipeline.actors)} simulation "
              f"actor(s); each trial gets about 1/{sweep.max_concurrent_trials} of their throughput "
              f"(see data_wait_fraction per trial)", flush=True)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=resolved, train_overrides={}, pipeline=pipeline,
                             tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                             trials_dir=str(sweep_dir / TRIALS_FOLDER)),
        {"CPU": sweep.trial_driver_cpus})
    try:
        if resume:
            tuner = tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable, param_space=param_space(sweep.search),
                tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=_searcher(sweep),
                                            scheduler=_scheduler(sweep, config),
                                            num_samples=sweep.budget.num_samples,
                                            time_budget_s=sweep.budget.time_budget_s,
                                            max_concurrent_trials=sweep.max_concurrent_trials),
                run_config=tune.RunConfig(name=sweep.name, storage_path=str(sweep_dir.parent), verbose=1 if progress else 0))
        results = tuner.fit()
    finally:
        pipeline.stop()
    return _conclude(sweep, resolved, results, metric, mode, tracking_uri, parent_run_id, pipeline, sweep_dir)


def _backfill_trial_runs(results, tracking_uri: str, sweep_dir: Path) -> None:
    """Every trial's MLflow run gets the epochs its checkpoints hold (see :func:`backfill_run`)."""
    from ray.train import Result

    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        trial_dir = sweep_dir / TRIALS_FOLDER / str(trial_id)
        run_id = recorded_run_id(trial_dir) if trial_id else None
        if run_id is None:
            continue
        try:
            checkpoint = Result.from_path(str(trial_dir)).checkpoint
        except (FileNotFoundError, RuntimeError, ValueError) as exc:  # a trial stopped before its first report
            print(f"trial {trial_id}: no checkpoint to repair its MLflow run from ({exc})", flush=True)
            continue
        if checkpoint is not None:
            backfill_run(RunTracker(tracking_uri, run_id), checkpoint)


def _conclude(sweep, resolved, results, metric, mode, tracking_uri, parent_run_id, pipeline, sweep_dir) -> SweepOutcome:
    from mlflow import MlflowClient
    from ray.train import Result

    trials = []
    for result in results:
        params = {param_path(key): value for key, value in (result.config or {}).items()}
        last = result.metrics or {}
        # the epoch index, not the count of Tune results: a resumed trial reports only its remaining epochs
        trials.append({"trial_id": last.get("trial_id"), **params, metric: last.get(metric),
                       "epochs": int(last["epoch"]) + 1 if "epoch" in last else 0,
                       "error": str(result.error).splitlines()[0][:200] if result.error else ""})
    _backfill_trial_runs(results, tracking_uri, sweep_dir)
    finished = [t for t in trials if t[metric] is not None and not t["error"]]
    if not finished:
        raise RuntimeError(f"sweep {sweep.name}: no trial finished (errors: {[t['error'] for t in trials][:3]})")
    best = results.get_best_result(metric, mode, scope="all")
    best_id = best.metrics["trial_id"]
    best_params = {param_path(key): value for key, value in best.config.items()}
    best_config = trial_config(resolved, {}, best.config)
    if sweep.mlflow.registered_model_name:
        best_config = best_config.model_copy(update={"mlflow": best_config.mlflow.model_copy(
            update={"registered_model_name": sweep.mlflow.registered_model_name})})
    best_config = best_config.model_copy(update={"mlflow": best_config.mlflow.model_copy(update={"alias": sweep.mlflow.alias})})
    trial_dir = sweep_dir / TRIALS_FOLDER / best_id
    trial_run_id = recorded_run_id(trial_dir)
    checkpoints = best_and_latest_checkpoints(Result.from_path(str(trial_dir)), best_config)
    outcome = finish(best_config, tracking_uri, trial_run_id, *checkpoints, pipeline.test_path)

    client = MlflowClient(tracking_uri)
    client.log_metric(parent_run_id, f"best_{metric}", float(best.metrics[metric]))
    for key, value in best_params.items():
        client.log_param(parent_run_id, f"best.{key}", value)
    client.set_tag(parent_run_id, "afm_ray.best_trial_run_id", trial_run_id)
    for path in write_summary(trials, list(sweep.search), metric, mode, sweep_dir):
        client.log_artifact(parent_run_id, str(path))
    client.set_terminated(parent_run_id, "FINISHED")
    print(f"best trial {best_id}: {metric} {best.metrics[metric]:.4g} with {best_params}; "
          f"registered {outcome.model_uri}", flush=True)
    return SweepOutcome(parent_run_id, best_id, best_params, float(best.metrics[metric]), outcome.model_uri, trials)
