"""``afm-ray train``: the driver that validates, starts the pipeline, runs Ray Train and registers the model.

Order of work, so that mistakes fail before any cluster work: config → molecule database and
split → MLflow store and registry name → Ray cluster resources (:mod:`afm_ray.train.resources`) →
simulation actors → fixed validation/test sets → :class:`ray.train.torch.TorchTrainer` → test
evaluation, figures and the model registered in MLflow under ``NAME@ALIAS``
(:mod:`afm_ray.registry.registration`). The run folder and its MLflow run, and how a run resumes:
:mod:`afm_ray.train.run_state`.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import requests
import torch
from mlflow.exceptions import MlflowException
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from afm_ray.console import quiet_mlflow_notices
from afm_ray.errors import TrackingUnavailableError
from afm_ray.figures.metrics import write_xyz_figures
from afm_ray.pipeline.actors import create_simulation_actors, stop_actors
from afm_ray.pipeline.dispatcher import start_dispatcher
from afm_ray.pipeline.fixed_sets import FixedSet, materialize
from afm_ray.pipeline.sources import load_split_samples
from afm_ray.pipeline.cluster import ensure_ray, require_shared_paths
from afm_ray.recipe import TrainConfig, relative_paths, with_absolute_paths
from afm_ray.registry.checkpoints import HISTORY_FILE, load_checkpoint_model
from afm_ray.registry.registration import log_and_register
from afm_ray.registry.tracking import RunTracker, preflight
from afm_ray.figures.training import plot_loss_curves, plot_predictions
from afm_ray.train.loop import train_loop_per_worker
from afm_ray.train.network import check_compile_backend
from afm_ray.train.validation import evaluate
from afm_ray.train.mlflow_callback import MlflowReportCallback
from afm_ray.train.progress import EpochLinePrinter
from afm_ray.train.resources import check_batch_fills_workers, check_cluster_holds_training
from afm_ray.train.run_state import open_mlflow_run, read_run_state
from afm_ray.train.configured_model import Evaluation, build_loss, objective

TRACKING_FAILURES = (MlflowException, requests.RequestException)
"""What MLflow's client raises when its store fails or does not answer (HTTP errors wrapped, or raw)."""


@dataclass
class TrainingOutcome:
    """What a finished training produced."""

    run_id: str
    model_uri: str
    model_version: str
    checkpoint_path: str
    metrics: dict[str, float]
    test_metrics: dict[str, float]


@dataclass
class Pipeline:
    """A running simulation pool (actors and their dispatcher) and the fixed evaluation sets it simulated."""

    actors: list
    dispatcher: object
    counts: dict[str, int]
    val_path: Path
    test_path: Path

    def stop(self) -> None:
        stop_actors([*self.actors, self.dispatcher])


def resolve_paths(config: TrainConfig, storage_field: str = "run.storage_path") -> TrainConfig:
    """``config`` with its paths and tracking URI absolute (against the driver's working directory).

    Relative paths are refused on a Ray cluster of several nodes (``RAY_ADDRESS`` set: connecting tells);
    on one machine nothing starts Ray here. ``storage_field``: the field that set ``run.storage_path``.
    """
    relative = relative_paths(config, storage_field)
    if relative and os.environ.get("RAY_ADDRESS"):  # an existing cluster, perhaps of several nodes
        ensure_ray()
        require_shared_paths(relative)
    return with_absolute_paths(config)


def prepare(config: TrainConfig, workers_at_once: int = 1, driver_cpus: float = 0.0,
            storage_field: str = "run.storage_path") -> tuple[TrainConfig, str, dict[str, int]]:
    """Validate everything that can be checked before cluster work; returns (config, tracking URI, sample counts).

    ``workers_at_once``: how many training runs will hold workers concurrently (Tune trials), each
    with a driver holding ``driver_cpus``. ``storage_field``: the field that set ``run.storage_path``
    (named in errors).

    Relative paths are resolved against the driver's working directory, which on a cluster of several
    nodes is no place the other nodes share: there they are refused before anything is written.
    """
    config = resolve_paths(config, storage_field)
    tracking_uri = config.mlflow.tracking_uri
    counts = {subset: len(samples) for subset, samples in load_split_samples(config.sample_settings).items()}
    check_batch_fills_workers(config, counts["train"])
    check_compile_backend(config)
    preflight(tracking_uri, config.registered_model_name, config.model.name)
    ensure_ray()
    check_cluster_holds_training(config, workers_at_once, driver_cpus)
    return config, tracking_uri, counts


def start_pipeline(config: TrainConfig, counts: dict[str, int], progress: bool = True) -> Pipeline:
    """Start the simulation actors and make sure the fixed validation and test sets exist."""
    settings, pipeline = config.sample_settings, config.pipeline
    prefix = f"afm-ray-sim-{uuid.uuid4().hex[:12]}"
    actors = create_simulation_actors(settings, pipeline, name_prefix=prefix)
    for index, place in enumerate(ray.get([actor.describe.remote() for actor in actors])):
        print(f"simulation actor {index}: OpenCL {place['device']} on node {place['node_id'][:12]}, "
              f"pid {place['pid']}, resources {place['resources']}", flush=True)
    dispatcher = start_dispatcher([f"{prefix}-{index}" for index in range(len(actors))], pipeline.dispatch_limits(),
                                  config.run.seed)
    try:
        paths = [materialize(settings, subset, counts[subset], config.run.seed, dispatcher, progress,
                             max_attempts=pipeline.max_attempts_per_batch) for subset in ("val", "test")]
    except BaseException:
        stop_actors([*actors, dispatcher])
        raise
    return Pipeline(actors, dispatcher, counts, *paths)


def build_trainer(config: TrainConfig, pipeline: Pipeline, tracking_uri: str, run_id: str, storage_path: Path,
                  name: str, callbacks: tuple = ()) -> TorchTrainer:
    """The TorchTrainer of one training run (``afm-ray train`` and every Tune trial use this)."""
    metric, mode = objective(config)
    scaling = config.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config_json": config.model_dump_json(), "pool": pipeline.dispatcher, "tenant": name,
                           "val_path": str(pipeline.val_path), "n_train_samples": pipeline.counts["train"]},
        torch_config=TorchConfig(timeout_s=int(scaling.collective_timeout_s)),
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


def backfill_run(tracker: RunTracker, latest_checkpoint, first_epoch: int = 0) -> list[dict]:
    """Send the epochs (from ``first_epoch`` on) of the checkpoint's history that the run's MLflow run lacks;
    returns the whole history.

    An epoch is logged only after its checkpoint is committed, so a crash or outage between the two
    leaves it in the checkpoint but not in MLflow (and a resumed run does not train it again). Epochs
    before ``first_epoch`` belong to the MLflow run this one continues (``--allow-changed``).
    """
    with latest_checkpoint.as_directory() as folder:
        history = json.loads((Path(folder) / HISTORY_FILE).read_text())
    backfilled = tracker.backfill([entry for entry in history if int(entry["epoch"]) >= first_epoch])
    if backfilled:
        print(f"sent {backfilled} metric values of run {tracker.run_id} that MLflow missed (outage or "
              f"interruption)", flush=True)
    return history


def run_training(config: TrainConfig, progress: bool = True, allow_changed: bool = False) -> TrainingOutcome:
    """Train ``config`` end to end; see the module docstring for the order of work.

    ``allow_changed``: a run folder started with another config continues in a new, linked MLflow run
    instead of being refused (:func:`open_mlflow_run`).
    """
    config, tracking_uri, counts = prepare(config)
    storage = config.run.storage_path
    run_dir = storage / config.run_name
    run_id = open_mlflow_run(config, tracking_uri, run_dir, allow_changed=allow_changed)
    first_epoch = int(read_run_state(run_dir).get("first_epoch", 0))
    print(f"MLflow run {run_id} at {tracking_uri}"
          + (f"  (UI: mlflow ui --backend-store-uri {tracking_uri})" if tracking_uri.startswith("sqlite") else ""),
          flush=True)
    pipeline = start_pipeline(config, counts, progress)
    try:
        with EpochLinePrinter(config.run.epochs, objective(config)[0]) as epoch_lines:
            result = build_trainer(config, pipeline, tracking_uri, run_id, storage, config.run_name,
                                   callbacks=(epoch_lines.callback,)).fit()
    finally:
        pipeline.stop()
    return finish(config, tracking_uri, run_id, *best_and_latest_checkpoints(result, config), pipeline.test_path,
                  first_epoch=first_epoch)


@ray.remote(max_retries=2)
def _evaluate_shard(config_json: str, checkpoint, test_path: str, shard: int, shards: int) -> Evaluation:
    """One shard ``shard::shards`` of a fixed set, evaluated by the best checkpoint on this task's device."""
    config = TrainConfig.model_validate_json(config_json)
    device = torch.device("cuda" if config.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    with checkpoint.as_directory() as folder:
        model, _, _ = load_checkpoint_model(folder)
    return evaluate(model.to(device), build_loss(config), config, FixedSet(test_path), device, shard, shards)


def evaluate_on_workers(config: TrainConfig, checkpoint, test_path: Path) -> Evaluation:
    """The test-set evaluation, split over ``scaling.num_workers`` Ray tasks that each hold one train
    worker's resources (its GPU where ``scaling.use_gpu``): the driver, often a CPU-only head, only
    adds the shards up. Equal to one process evaluating every shard, up to float summation order."""
    scaling = config.scaling
    options = {"num_cpus": scaling.cpus_per_worker, "num_gpus": 1 if scaling.use_gpu else 0,
               "resources": dict(scaling.resources_per_worker)}
    shards = scaling.num_workers
    refs = [_evaluate_shard.options(**options).remote(config.model_dump_json(), checkpoint, str(test_path),
                                                     shard, shards) for shard in range(shards)]
    return Evaluation.combined(ray.get(refs))


def finish(config: TrainConfig, tracking_uri: str, run_id: str, checkpoint, latest_checkpoint,
           test_path: Path, first_epoch: int = 0) -> TrainingOutcome:
    """Evaluate the best checkpoint on the test set, log figures, log and register the model.

    Metrics the training could not send during a tracking outage are sent first, from the latest
    checkpoint's history. When MLflow is still unreachable the error says so: the checkpoints are
    kept, and running the same command again only repeats this step.
    """
    try:
        return _finish(config, tracking_uri, run_id, checkpoint, latest_checkpoint, test_path, first_epoch)
    except TRACKING_FAILURES as exc:
        raise TrackingUnavailableError(
            f"training finished (checkpoints in {Path(checkpoint.path).parent}) but MLflow at {tracking_uri} failed "
            f"while registering the model: {str(exc).splitlines()[0][:300]}. Run the same command again once it "
            "answers: only this last step is repeated.") from exc


def _finish(config: TrainConfig, tracking_uri: str, run_id: str, checkpoint, latest_checkpoint,
            test_path: Path, first_epoch: int) -> TrainingOutcome:
    from mlflow import MlflowClient

    tracker = RunTracker(tracking_uri, run_id)
    history = backfill_run(tracker, latest_checkpoint, first_epoch)
    with checkpoint.as_directory() as folder:
        model, _, _ = load_checkpoint_model(folder)
        checkpoint_path = checkpoint.path
    test_set = FixedSet(test_path)
    evaluation = evaluate_on_workers(config, checkpoint, test_path)
    test_metrics = evaluation.result("test")
    tracker.log_metrics(test_metrics, step=len(history))
    with tempfile.TemporaryDirectory() as folder:
        figures = [plot_loss_curves(history, Path(folder) / "loss_curves.png")]
        samples = test_set.first(max(config.run.num_figure_samples, 1))
        with torch.no_grad():
            outputs = model(torch.from_numpy(samples.x))
        figures.append(plot_predictions(config.model.name, samples, outputs, Path(folder) / "predictions.png",
                                        config.sim))
        if evaluation.xyz_metrics() is not None:
            figures += list(write_xyz_figures(evaluation.xyz_metrics(), folder, prefix="test_xyz").values())
        for figure in figures:
            tracker.log_artifact(figure, "figures")
        tracker.flush()

    with quiet_mlflow_notices():
        version = log_and_register(model, config, samples.x[:1], tracking_uri, run_id)
    name = config.registered_model_name
    client = MlflowClient(tracking_uri)
    client.set_terminated(run_id, status="FINISHED")
    final = history[-1] if history else {}
    print(f"registered models:/{name}@{config.mlflow.alias} (version {version}); test: "
          + ", ".join(f"{k} {v:.4g}" for k, v in test_metrics.items() if not np.isnan(v)), flush=True)
    return TrainingOutcome(run_id, f"models:/{name}@{config.mlflow.alias}", version, str(checkpoint_path),
                           final, test_metrics)
