"""``afm-ray train``: the driver that validates, starts the pipeline, runs Ray Train and registers the model.

Order of work, so that mistakes fail before any cluster work: config → molecule database and
split → MLflow store and registry name → Ray cluster resources → simulation actors → fixed
validation/test sets → :class:`ray.train.torch.TorchTrainer` → test evaluation, figures and the
model registered in MLflow under ``NAME@ALIAS``.

Resuming: running the same config again (same ``run.name`` and ``run.storage_path``) continues
from the latest checkpoint, in the same MLflow run. The run folder keeps the config the run was
started with (``afm_ray_run.json``); a config that differs in anything but
:data:`RESUMABLE_FIELDS` is refused with the list of changed fields, unless ``allow_changed``
(``--allow-changed``): then the checkpoint continues in a new MLflow run tagged
``afm_ray.resumed_from`` (the old run id), ``afm_ray.resumed_at_epoch`` and
``afm_ray.changed_fields``, so every MLflow run's params are the config its epochs were trained with.
"""

from __future__ import annotations

import json
import os
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
from afm_ray.ray_cluster import ensure_ray, require_shared_paths
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


def relative_paths(config: TrainConfig, storage_field: str = "run.storage_path") -> dict[str, str]:
    """The config's data, run and tracking paths that are relative (field name → value as given).

    ``storage_field`` names the field that set ``run.storage_path`` (a sweep sets it from its own
    ``storage_path``).
    """
    paths = {"data.database": config.data.database, "data.fixed_set_dir": config.data.fixed_set_dir,
             storage_field: config.run.storage_path}
    relative = {field: str(path) for field, path in paths.items() if not path.is_absolute()}
    tracking_uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        relative["mlflow.tracking_uri"] = tracking_uri
    return relative


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


# -- the run folder's state: MLflow run id, the config it runs, the runs it continues ----------------
RESUMABLE_FIELDS = (
    # how far to train: a larger count continues from the checkpoint
    "run.epochs",
    # how failures and the end are handled, not what is trained
    "run.max_failures", "run.num_figure_samples", "mlflow.alias",
    # where and how fast batches are made: every sample is seeded by (run seed, epoch, sample) and
    # augmented with the same draws on actor or trainer, so the batches do not depend on these
    "pipeline.num_sim_actors", "pipeline.sim_num_gpus", "pipeline.sim_num_cpus", "pipeline.sim_resources",
    "pipeline.opencl_device", "pipeline.augment_on", "pipeline.max_in_flight_per_worker",
    "pipeline.prefetch_next_epoch", "pipeline.batch_timeout_s", "pipeline.max_attempts_per_batch",
    "pipeline.actor_startup_timeout_s", "data.fixed_set_cache_mib",
)
"""Config fields (or sections) that may differ when a run resumes: none changes what the checkpoint's
epochs mean. Any other difference needs a new ``run.name`` or ``--allow-changed``."""


def read_run_state(run_dir: Path) -> dict:
    """``run_dir/afm_ray_run.json`` (``{}`` when there is none): ``mlflow_run_id``, ``config`` (the resolved
    config the run continues with), ``first_epoch`` (the epoch its MLflow run starts at), ``previous_runs``."""
    state_file = run_dir / RUN_STATE_FILE
    if not state_file.exists():
        return {}
    try:
        return json.loads(state_file.read_text())
    except ValueError as exc:
        raise InputError(str(state_file), f"run state is not valid JSON ({exc}); move the run folder "
                                          "away or choose another run.name") from None


def write_run_state(run_dir: Path, state: dict) -> None:
    """Replace ``run_dir/afm_ray_run.json`` atomically: a crash leaves the old state or the new one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    temporary = run_dir / f".{RUN_STATE_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(state, indent=1, default=_json_value))
    os.replace(temporary, run_dir / RUN_STATE_FILE)


def _json_value(value):
    return value.item() if isinstance(value, np.generic) else str(value)


def recorded_run_id(run_dir: Path) -> str | None:
    """The MLflow run id kept in ``run_dir/afm_ray_run.json`` (:func:`open_mlflow_run`), if any."""
    return read_run_state(run_dir).get("mlflow_run_id")


def record_run_id(run_dir: Path, run_id: str, **fields) -> None:
    """Keep ``run_id`` (and ``fields``) in ``run_dir`` so that a restarted command continues the same MLflow run."""
    write_run_state(run_dir, {**read_run_state(run_dir), "mlflow_run_id": run_id, **fields})


def config_changes(old: dict, new: dict, may_change: tuple[str, ...] = ()) -> dict[str, tuple[str, str]]:
    """Fields whose values differ between two config dumps, ``{"a.b": (old, new)}`` (values as MLflow params),
    leaving out the fields and sections named in ``may_change``."""
    old_flat, new_flat = flatten(old), flatten(new)
    changes = {}
    for field in sorted(old_flat.keys() | new_flat.keys()):
        if any(field == allowed or field.startswith(allowed + ".") for allowed in may_change):
            continue
        before, after = old_flat.get(field, "(unset)"), new_flat.get(field, "(unset)")
        if before != after:
            changes[field] = (before, after)
    return changes


def describe_changes(changes: dict[str, tuple[str, str]]) -> str:
    """``field: old → new; …`` (one line)."""
    return "; ".join(f"{field}: {old} → {new}" for field, (old, new) in changes.items())


def latest_history(run_dir: Path) -> list[dict]:
    """The per-epoch metrics of the run folder's latest committed checkpoint (``[]`` before the first one).

    Committed: the one Ray Train resumes from. A checkpoint folder written just before an interruption
    may be newer; Ray Train does not know it, and trains its epochs again.
    """
    from ray.train import Result

    try:
        checkpoint = Result.from_path(str(run_dir)).checkpoint
    except (FileNotFoundError, RuntimeError, ValueError):  # no run here, or none checkpointed yet
        return []
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / HISTORY_FILE).read_text())


def completed_epochs(run_dir: Path) -> int:
    """Epochs the run folder's checkpoints hold (0 before the first checkpoint)."""
    return len(latest_history(run_dir))


def _recorded_config(state: dict, client, run_id: str) -> dict | None:
    """The config the run folder was started with, with today's defaults for fields added since.

    Run folders written before the config was kept there: the MLflow run's params (the first launch's config).
    """
    if "config" in state:
        try:
            return TrainConfig.model_validate(state["config"]).model_dump(mode="json")
        except ValueError:
            return state["config"]  # a field since removed or renamed: compared as it was
    try:
        params = client.get_run(run_id).data.params
    except Exception:  # the run is in another store, or gone: nothing to compare with
        return None
    return {key: value for key, value in params.items()} or None


def open_mlflow_run(config: TrainConfig, tracking_uri: str, run_dir: Path, parent_run_id: str | None = None,
                    allow_changed: bool = False, may_change: tuple[str, ...] = RESUMABLE_FIELDS) -> str:
    """The MLflow run of this training: created with params and config, or re-used when it resumes.

    The run id and the config are kept in ``run_dir/afm_ray_run.json`` so that a restarted command
    continues the same run. A config that differs from the kept one in fields outside ``may_change``
    raises :class:`InputError` listing them; with ``allow_changed`` a new MLflow run linked to the old one
    takes over from the checkpoint (see the module docstring). ``parent_run_id`` makes it a child run (a
    Tune trial of a sweep).
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    current = config.model_dump(mode="json")
    state = read_run_state(run_dir)
    run_id = state.get("mlflow_run_id")
    tags = {ARCHITECTURE_TAG: config.model.name, "afm_ray.split": config.data.split}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if run_id is None:
        run_id = _start_run(client, config, run_dir.name, tags)
        write_run_state(run_dir, {**state, "mlflow_run_id": run_id, "config": current, "first_epoch": 0})
        return run_id

    recorded = _recorded_config(state, client, run_id)
    if recorded is None:
        print(f"note: {run_dir} keeps no config to compare with; continuing MLflow run {run_id}", flush=True)
        changes = {}
    elif "config" in state:
        changes = config_changes(recorded, current)
    else:  # MLflow params (already flat strings): compare the fields both know
        current_flat = flatten(current)
        changes = {field: (value, current_flat[field]) for field, value in recorded.items()
                   if field in current_flat and current_flat[field] != value}
    blocking = {field: change for field, change in changes.items()
                if not any(field == allowed or field.startswith(allowed + ".") for allowed in may_change)}
    if blocking and not allow_changed:
        raise InputError(f"run {run_dir}", f"was started with another config ({describe_changes(blocking)}); "
                                           "use a new run.name, or --allow-changed to continue its checkpoint "
                                           "in a new MLflow run linked to this one")
    if blocking:
        return _continue_in_new_run(client, config, run_dir, state, tags, blocking)
    if changes:  # fields that may change on resume: the run's params keep the first launch's values
        client.set_tag(run_id, "afm_ray.changed_on_resume", describe_changes(changes)[:5000])
    write_run_state(run_dir, {**state, "config": current})
    client.update_run(run_id, status="RUNNING")
    return run_id


def _start_run(client, config: TrainConfig, run_name: str, tags: dict[str, str]) -> str:
    import yaml

    run_id = create_config_run(client, config, run_name, tags)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        client.log_artifact(run_id, str(path))
    return run_id


def _continue_in_new_run(client, config: TrainConfig, run_dir: Path, state: dict, tags: dict[str, str],
                         changes: dict[str, tuple[str, str]]) -> str:
    """A new MLflow run for the run folder's checkpoint under a changed config, linked both ways to the old run."""
    old_run_id = state["mlflow_run_id"]
    first_epoch = completed_epochs(run_dir)
    tags = {**tags, "afm_ray.resumed_from": old_run_id, "afm_ray.resumed_at_epoch": str(first_epoch),
            "afm_ray.changed_fields": describe_changes(changes)[:5000]}
    run_id = _start_run(client, config, run_dir.name, tags)
    try:
        client.set_tag(old_run_id, "afm_ray.continued_in", run_id)
        if client.get_run(old_run_id).info.status == "RUNNING":  # interrupted: it will not continue
            client.set_terminated(old_run_id, status="KILLED")
    except Exception as exc:  # the old run lives in another tracking store
        print(f"note: could not tag the old MLflow run {old_run_id} ({str(exc).splitlines()[0][:200]})", flush=True)
    previous = {"mlflow_run_id": old_run_id, "first_epoch": state.get("first_epoch", 0),
                "changed_after": {field: list(change) for field, change in changes.items()}}
    write_run_state(run_dir, {"mlflow_run_id": run_id, "config": config.model_dump(mode="json"),
                              "first_epoch": first_epoch,
                              "previous_runs": [*state.get("previous_runs", []), previous]})
    print(f"config changed ({describe_changes(changes)}): continuing {run_dir.name} from epoch {first_epoch} "
          f"in MLflow run {run_id}, linked to {old_run_id}", flush=True)
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


def prepare(config: TrainConfig, workers_at_once: int = 1, driver_cpus: float = 0.0,
            storage_field: str = "run.storage_path") -> tuple[TrainConfig, str, dict[str, int]]:
    """Validate everything that can be checked before cluster work; returns (config, tracking URI, sample counts).

    ``workers_at_once``: how many training runs will hold workers concurrently (Tune trials), each
    with a driver holding ``driver_cpus``. ``storage_field``: the field that set ``run.storage_path``
    (named in errors).

    Relative paths are resolved against the driver's working directory, which on a cluster of several
    nodes is no place the other nodes share: there they are refused before anything is written.
    """
    relative = relative_paths(config, storage_field)
    if relative and os.environ.get("RAY_ADDRESS"):  # an existing cluster, perhaps of several nodes
        ensure_ray()
        require_shared_paths(relative)
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
        result = build_trainer(config, pipeline, tracking_uri, run_id, storage, config.run_name).fit()
    finally:
        pipeline.stop()
    return finish(config, tracking_uri, run_id, *best_and_latest_checkpoints(result, config), pipeline.test_path,
                  first_epoch=first_epoch)


def finish(config: TrainConfig, tracking_uri: str, run_id: str, checkpoint, latest_checkpoint,
           test_path: Path, first_epoch: int = 0) -> TrainingOutcome:
    """Evaluate the best checkpoint on the test set, log figures, log and register the model.

    Metrics the training could not send during a tracking outage are sent first, from the latest
    checkpoint's history. When MLflow is still unreachable the error says so: the checkpoints are
    kept, and running the same command again only repeats this step.
    """
    try:
        return _finish(config, tracking_uri, run_id, checkpoint, latest_checkpoint, test_path, first_epoch)
    except Exception as exc:
        if "mlflow" not in type(exc).__module__ and "requests" not in type(exc).__module__:
            raise
        raise RuntimeError(f"training finished (checkpoints in {Path(checkpoint.path).parent}) but MLflow at "
                           f"{tracking_uri} failed while registering the model: {str(exc).splitlines()[0][:300]}. "
                           "Run the same command again once it answers: only this last step is repeated.") from exc


def _finish(config: TrainConfig, tracking_uri: str, run_id: str, checkpoint, latest_checkpoint,
            test_path: Path, first_epoch: int) -> TrainingOutcome:
    from mlflow import MlflowClient

    tracker = RunTracker(tracking_uri, run_id)
    history = backfill_run(tracker, latest_checkpoint, first_epoch)
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
