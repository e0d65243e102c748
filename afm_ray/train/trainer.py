"""``afm-ray train``: the driver that validates, starts the pipeline, runs Ray Train and registers the model.

Order of work, so that mistakes fail before any cluster work: config → molecule database and
split → MLflow store and registry name → Ray cluster resources → simulation actors → fixed
validation/test sets → :class:`ray.train.torch.TorchTrainer` → test evaluation, figures and the
model registered in MLflow under ``NAME@ALIAS``.

Resuming: running the same config again (same ``run.name`` and ``run.storage_path``) continues
from the latest checkpoint, in the same MLflow run.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from afm_ray.errors import InputError
from afm_ray.pipeline.actors import check_cluster_fits, create_simulation_actors, stop_actors
from afm_ray.pipeline.fixed_sets import FixedSet, materialize
from afm_ray.pipeline.sources import load_split_samples
from afm_ray.ray_cluster import ensure_ray
from afm_ray.train.config import TrainConfig
from afm_ray.train.figures import plot_loss_curves, plot_predictions
from afm_ray.train.loop import HISTORY_FILE, evaluate, load_checkpoint_model, train_loop_per_worker
from afm_ray.train.registration import log_and_register
from afm_ray.train.steps import build_loss, objective
from afm_ray.train.tracking import (ARCHITECTURE_TAG, MlflowReportCallback, RunTracker, preflight,
                                    resolve_tracking_uri)

RUN_STATE_FILE = "afm_ray_run.json"


@dataclass
class TrainingOutcome:
    """What a finished training produced."""

    run_id: str
    model_uri: str
    model_version: str
    checkpoint_path: str
    metrics: dict[str, float]
    test_metrics: dict[str, float]


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}`` (MLflow params)."""
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """Paths resolved against the driver's working directory: Ray workers run elsewhere."""
    data = config.data.model_copy(update={"database": config.data.database.resolve(),
                                          "fixed_set_dir": config.data.fixed_set_dir.resolve()})
    run = config.run.model_copy(update={"storage_path": config.run.storage_path.resolve()})
    tracking_uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = "sqlite:///" + str(Path(tracking_uri[len("sqlite:///"):]).resolve())
    mlflow = config.mlflow.model_copy(update={"tracking_uri": tracking_uri})
    return config.model_copy(update={"data": data, "run": run, "mlflow": mlflow})


def recorded_run_id(run_dir: Path) -> str | None:
    """The MLflow run id kept in ``run_dir/afm_ray_run.json`` (:func:`open_mlflow_run`), if any."""
    state_file = run_dir / RUN_STATE_FILE
    return json.loads(state_file.read_text())["mlflow_run_id"] if state_file.exists() else None


def record_run_id(run_dir: Path, run_id: str) -> None:
    """Keep ``run_id`` in ``run_dir`` so that a restarted command continues the same MLflow run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_STATE_FILE).write_text(json.dumps({"mlflow_run_id": run_id}))


def open_mlflow_run(config: TrainConfig, tracking_uri: str, run_dir: Path, parent_run_id: str | None = None) -> str:
    """The MLflow run of this training: created with params and config, or re-used when it resumes.

    The run id is kept in ``run_dir/afm_ray_run.json`` so that a restarted command continues the same
    run. ``parent_run_id`` makes it a child run (a Tune trial of a sweep).
    """
    import yaml
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = recorded_run_id(run_dir)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {ARCHITECTURE_TAG: config.model.name, "afm_ray.split": config.data.split}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_id = create_config_run(client, config, run_dir.name, tags)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        client.log_artifact(run_id, str(path))
    record_run_id(run_dir, run_id)
    return run_id


def create_config_run(client, config: TrainConfig, run_name: str, tags: dict[str, str]) -> str:
    """A new MLflow run in ``config.mlflow.experiment`` (created if missing) with ``tags`` and the config's
    fields as params; returns its id. Training, evaluation and model imports all start their runs here."""
    from mlflow.entities import Param

    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.mlflow.experiment)
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    params = [Param(key, value[:6000]) for key, value in flatten(config.model_dump(mode="json")).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params[start:start + 100])
    return run_id


@dataclass
class Pipeline:
    """A running simulation pipeline: actors and the fixed evaluation sets they simulated."""

    actors: list
    counts: dict[str, int]
    val_path: Path
    test_path: Path

    def stop(self) -> None:
        stop_actors(self.actors)


def prepare(config: TrainConfig, workers_at_once: int = 1,
            driver_cpus: float = 0.0) -> tuple[TrainConfig, str, dict[str, int]]:
    """Validate everything that can be checked before cluster work; returns (config, tracking URI, sample counts).

    ``workers_at_once``: how many training runs will hold workers concurrently (Tune trials), each
    with a driver holding ``driver_cpus``.
    """
    config = with_absolute_paths(config)
    tracking_uri = config.mlflow.tracking_uri
    counts = {subset: len(samples) for subset, samples in load_split_samples(config.sample_settings).items()}
    if counts["train"] < config.run.batch_size * config.scaling.num_workers:
        raise InputError("run.batch_size", f"{counts['train']} training samples cannot fill one batch of "
                                           f"{config.run.batch_size} on each of {config.scaling.num_workers} workers")
    preflight(tracking_uri, config.registered_model_name, config.model.name)
    ensure_ray()
    scaling, pipeline = config.scaling, config.pipeline
    runs = scaling.num_workers * workers_at_once
    check_cluster_fits({"CPU": scaling.cpus_per_worker * runs, "GPU": float(scaling.use_gpu) * runs,
                        **{k: v * runs for k, v in scaling.resources_per_worker.items()}},
                       "scaling: the train workers")
    # Everything holds its resources for the whole run: if the sum does not fit, Ray waits forever.
    demand = {"CPU": pipeline.sim_num_cpus * pipeline.num_sim_actors + scaling.cpus_per_worker * runs
              + driver_cpus * workers_at_once,
              "GPU": pipeline.sim_num_gpus * pipeline.num_sim_actors + float(scaling.use_gpu) * runs}
    check_cluster_fits(demand, f"{pipeline.num_sim_actors} simulation actors × {pipeline.sim_num_cpus:g} CPU "
                               f"+ {runs} train worker(s) × {scaling.cpus_per_worker:g} CPU"
                               + (f" + {workers_at_once} trial driver(s) × {driver_cpus:g} CPU" if driver_cpus else "")
                               + " held at once")
    return config, tracking_uri, counts


def start_pipeline(config: TrainConfig, counts: dict[str, int], progress: bool = True) -> Pipeline:
    """Start the simulation actors and make sure the fixed validation and test sets exist."""
    settings, pipeline = config.sample_settings, config.pipeline
    actors = create_simulation_actors(settings, pipeline)
    for index, place in enumerate(ray.get([actor.describe.remote() for actor in actors])):
        print(f"simulation actor {index}: OpenCL {place['device']} on node {place['node_id'][:12]}, "
              f"pid {place['pid']}, resources {place['resources']}", flush=True)
    try:
        paths = [materialize(settings, subset, counts[subset], config.run.seed, actors, progress,
                             pipeline.batch_timeout_s, pipeline.max_attempts_per_batch) for subset in ("val", "test")]
    except BaseException:
        stop_actors(actors)
        raise
    return Pipeline(actors, counts, *paths)


def build_trainer(config: TrainConfig, pipeline: Pipeline, tracking_uri: str, run_id: str, storage_path: Path,
                  name: str, callbacks: tuple = ()) -> TorchTrainer:
    """The TorchTrainer of one training run (``afm-ray train`` and every Tune trial use this)."""
    metric, mode = objective(config)
    scaling = config.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config_json": config.model_dump_json(), "actors": pipeline.actors,
                           "val_path": str(pipeline.val_path), "n_train_samples": pipeline.counts["train"]},
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker={"CPU": scaling.cpus_per_worker,
                                                           **scaling.resources_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(storage_path),
                             callbacks=[MlflowReportCallback(tracking_uri, run_id), *callbacks],
                             failure_config=FailureConfig(max_failures=config.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric,
                                                                checkpoint_score_order=mode)),
    )


def best_and_latest_checkpoints(result, config: TrainConfig) -> tuple:
    """The checkpoint with the best objective (the model to register) and the latest (the full history)."""
    metric, mode = objective(config)
    if result.checkpoint is None:
        raise RuntimeError(f"training run {config.run_name} produced no checkpoint")
    return result.get_best_checkpoint(metric, mode) or result.checkpoint, result.checkpoint


def backfill_run(tracker: RunTracker, latest_checkpoint) -> list[dict]:
    """Send the epochs of the checkpoint's history that the run's MLflow run lacks; returns the history.

    An epoch is logged only after its checkpoint is committed, so a crash or outage between the two
    leaves it in the checkpoint but not in MLflow (and a resumed run does not train it again).
    """
    with latest_checkpoint.as_directory() as folder:
        history = json.loads((Path(folder) / HISTORY_FILE).read_text())
    backfilled = tracker.backfill(history)
    if backfilled:
        print(f"sent {backfilled} metric values of run {tracker.run_id} that MLflow missed (outage or "
              f"interruption)", flush=True)
    return history


def run_training(config: TrainConfig, progress: bool = True) -> TrainingOutcome:
    """Train ``config`` end to end; see the module docstring for the order of work."""
    config, tracking_uri, counts = prepare(config)
    storage = config.run.storage_path
    run_id = open_mlflow_run(config, tracking_uri, storage / config.run_name)
    print(f"MLflow run {run_id} at {tracking_uri}"
          + (f"  (UI: mlflow ui --backend-store-uri {tracking_uri})" if tracking_uri.startswith("sqlite") else ""),
          flush=True)
    pipeline = start_pipeline(config, counts, progress)
    try:
        result = build_trainer(config, pipeline, tracking_uri, run_id, storage, config.run_name).fit()
    finally:
        pipeline.stop()
    return finish(config, tracking_uri, run_id, *best_and_latest_checkpoints(result, config), pipeline.test_path)


def finish(config: TrainConfig, tracking_uri: str, run_id: str, checkpoint, latest_checkpoint,
           test_path: Path) -> TrainingOutcome:
    """Evaluate the best checkpoint on the test set, log figures, log and register the model.

    Metrics the training could not send during a tracking outage are sent first, from the latest
    checkpoint's history. When MLflow is still unreachable the error says so: the checkpoints are
    kept, and running the same command again only repeats this step.
    """
    try:
        return _finish(config, tracking_uri, run_id, checkpoint, latest_checkpoint, test_path)
    except Exception as exc:
        if "mlflow" not in type(exc).__module__ and "requests" not in type(exc).__module__:
            raise
        raise RuntimeError(f"training finished (checkpoints in {Path(checkpoint.path).parent}) but MLflow at "
                           f"{tracking_uri} failed while registering the model: {str(exc).splitlines()[0][:300]}. "
                           "Run the same command again once it answers: only this last step is repeated.") from exc


def _finish(config: TrainConfig, tracking_uri: str, run_id: str, checkpoint, latest_checkpoint,
            test_path: Path) -> TrainingOutcome:
    from mlflow import MlflowClient

    tracker = RunTracker(tracking_uri, run_id)
    history = backfill_run(tracker, latest_checkpoint)
    with checkpoint.as_directory() as folder:
        model, _, _ = load_checkpoint_model(folder)
        checkpoint_path = checkpoint.path
    test_set = FixedSet(test_path)
    evaluation = evaluate(model, build_loss(config), config, test_set, torch.device("cpu"))
    test_metrics = evaluation.result("test")
    tracker.log_metrics(test_metrics, step=len(history))
    with tempfile.TemporaryDirectory() as folder:
        figures = [plot_loss_curves(history, Path(folder) / "loss_curves.png")]
        samples = test_set.first(max(config.run.num_figure_samples, 1))
        with torch.no_grad():
            outputs = model(torch.from_numpy(samples["x"]))
        figures.append(plot_predictions(config.model.name, samples, outputs, Path(folder) / "predictions.png",
                                        config.sim))
        if evaluation.xyz_metrics() is not None:
            figures += list(evaluation.xyz_metrics().write_plots(folder, prefix="test_xyz").values())
        for figure in figures:
            tracker.log_artifact(figure, "figures")
        tracker.flush()

    version = log_and_register(model, config, samples["x"][:1], tracking_uri, run_id)
    name = config.registered_model_name
    client = MlflowClient(tracking_uri)
    client.set_terminated(run_id, status="FINISHED")
    final = history[-1] if history else {}
    print(f"registered models:/{name}@{config.mlflow.alias} (version {version}); test: "
          + ", ".join(f"{k} {v:.4g}" for k, v in test_metrics.items() if not np.isnan(v)), flush=True)
    return TrainingOutcome(run_id, f"models:/{name}@{config.mlflow.alias}", version, str(checkpoint_path),
                           final, test_metrics)
