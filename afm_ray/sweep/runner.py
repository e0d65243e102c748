"""Running a sweep: one shared simulation pipeline, Tune trials that each run the training loop, MLflow parent/child runs.

Resuming (``--resume``, or ``--resume-if-exists`` which starts afresh when there is nothing to resume,
so that a re-created RayJob needs no edit): Tune restores the searcher, scheduler and trials it saved,
and ignores a changed search space or budget. The sweep folder therefore keeps the config the sweep
was started with (``afm_ray_run.json``), and a config that differs in anything but
:data:`SWEEP_RESUMABLE_FIELDS` is refused with the list of changed fields. Finished trials are never
run again; a sweep that finished and registered its champion only reports that outcome again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from afm_ray.config import read_yaml
from afm_ray.console import is_verbose
from afm_ray.errors import InputError
from afm_ray.sweep.config import SweepConfig
from afm_ray.sweep.space import check_space, param_path, param_space, trial_config
from afm_ray.sweep.summary import write_summary
from afm_ray.recipe import TrainConfig
from afm_ray.registry.tracking import RunTracker
from afm_ray.train.run_state import (RESUMABLE_FIELDS, config_changes, describe_changes, latest_history,
                                     open_mlflow_run, read_run_state, record_run_id, recorded_run_id)
from afm_ray.train.progress import TuneEpochLines
from afm_ray.train.configured_model import objective, reported_metrics
from afm_ray.train.trainer import (Pipeline, backfill_run, best_and_latest_checkpoints, build_trainer, finish,
                                   prepare, resolve_paths, start_pipeline)

TRIALS_FOLDER = "trials"
REPORTED_FROM_CHECKPOINT = "reported_from_checkpoint"
"""Tune result key: a finished trial's last epoch reported again from its checkpoint after an interruption."""
SWEEP_RESUMABLE_FIELDS = (
    # where the champion is registered: applied when the sweep concludes
    "mlflow.alias", "mlflow.registered_model_name",
    # the trials' training config ("train.…"): what a resumed training may change, except run.epochs
    # (the ASHA scheduler that Tune restores keeps the old epoch count as its max_t)
    *(f"train.{field}" for field in RESUMABLE_FIELDS if field != "run.epochs"),
)
"""Fields of a sweep (and, prefixed ``train.``, of its trials' training config) that may differ on resume."""


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
    history = latest_history(run_dir)
    if len(history) >= config.run.epochs:
        # Trained to the end, but the sweep was interrupted before Tune recorded the trial as finished: Tune
        # needs its final result again (no training, no MLflow logging), marked as coming from the checkpoint.
        tune.report({**history[-1], REPORTED_FROM_CHECKPOINT: 1.0})
        return
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


def sweep_identity(sweep: SweepConfig, resolved: dict) -> dict:
    """What a sweep folder must keep on resume: the sweep's settings and (``train``) its trials' resolved
    training config, which covers ``train_config`` and ``train_overrides``; not the folder's own name and place."""
    return {**sweep.model_dump(mode="json", exclude={"name", "storage_path", "train_config", "train_overrides"}),
            "train": resolved}


def _refuse_changed_sweep(sweep_dir: Path, state: dict, identity: dict) -> None:
    if "sweep" not in state:  # a sweep folder written before sweeps kept their config
        return
    changes = config_changes(state["sweep"], identity, SWEEP_RESUMABLE_FIELDS)
    if changes:
        raise InputError(f"sweep {sweep_dir}", f"was started with another config ({describe_changes(changes)}); "
                                               "Tune would resume it with the old one: choose another sweep name")


def _parent_run(sweep: SweepConfig, config: TrainConfig, tracking_uri: str, sweep_dir: Path, identity: dict) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = recorded_run_id(sweep_dir)
    if run_id is not None:
        return run_id
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.mlflow.experiment)
    run = client.create_run(experiment_id, run_name=sweep.name, tags={"afm_ray.sweep": sweep.name})
    client.log_param(run.info.run_id, "sweep_config", sweep.model_dump_json()[:6000])
    record_run_id(sweep_dir, run.info.run_id, sweep=identity)
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


def run_sweep(sweep: SweepConfig, resume: bool = False, progress: bool = True,
              resume_if_exists: bool = False) -> SweepOutcome:
    """Run a sweep, or continue it: ``resume`` requires an interrupted sweep of this name, ``resume_if_exists``
    continues one when there is one and starts afresh otherwise. Registers the best trial's model as NAME@ALIAS."""
    base, first, metric, mode = _validated(sweep)
    sweep_dir = (sweep.storage_path / sweep.name).resolve()
    restoring = tune.Tuner.can_restore(str(sweep_dir))
    if restoring and not (resume or resume_if_exists):
        raise InputError(f"{sweep_dir}", "a sweep of this name exists; pass --resume (or --resume-if-exists) to "
                                         "continue it or choose another name")
    if resume and not restoring:
        raise InputError(f"{sweep_dir}", "no interrupted sweep to resume here")
    # The trials' runs live in the sweep folder; relative paths are refused there on a multi-node cluster.
    first = first.model_copy(update={"run": first.run.model_copy(
        update={"storage_path": sweep.storage_path / sweep.name / TRIALS_FOLDER})})
    # Trials start from the driver's resolved config: the same absolute paths and tracking store.
    # A changed or finished sweep is answered from it before any cluster work (no local Ray starts).
    first = resolve_paths(first, storage_field="storage_path")
    resolved = first.model_dump(mode="json")
    state = read_run_state(sweep_dir)
    identity = sweep_identity(sweep, resolved)
    _refuse_changed_sweep(sweep_dir, state, identity)
    if restoring and "outcome" in state:
        outcome = SweepOutcome(**state["outcome"])
        print(f"sweep {sweep.name} finished already ({len(outcome.trials)} trials): best trial "
              f"{outcome.best_trial_id}, {metric} {outcome.best_metric:.4g} with {outcome.best_params}; "
              f"registered {outcome.model_uri}. Nothing to run; choose another name for a new sweep", flush=True)
        return outcome
    config, tracking_uri, counts = prepare(first, workers_at_once=sweep.max_concurrent_trials,
                                           driver_cpus=sweep.trial_driver_cpus, storage_field="storage_path")
    parent_run_id = _parent_run(sweep, config, tracking_uri, sweep_dir, identity)
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
        if restoring:
            tuner = tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable, param_space=param_space(sweep.search),
                tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=_searcher(sweep),
                                            scheduler=_scheduler(sweep, config),
                                            num_samples=sweep.budget.num_samples,
                                            time_budget_s=sweep.budget.time_budget_s,
                                            max_concurrent_trials=sweep.max_concurrent_trials),
                run_config=tune.RunConfig(name=sweep.name, storage_path=str(sweep_dir.parent),
                                          verbose=1 if progress and is_verbose() else 0,
                                          callbacks=[TuneEpochLines(config.run.epochs, objective(config)[0])]))
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
    concluded = SweepOutcome(parent_run_id, best_id, best_params, float(best.metrics[metric]), outcome.model_uri, trials)
    # a re-run (a re-created RayJob) reports this instead of registering the champion again
    record_run_id(sweep_dir, parent_run_id, outcome=dataclasses.asdict(concluded))
    return concluded
