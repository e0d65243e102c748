"""A training run's state: its run folder's ``afm_ray_run.json`` and its MLflow run.

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
import tempfile
from pathlib import Path

import numpy as np

from afm_ray.errors import InputError
from afm_ray.files import atomic_file
from afm_ray.recipe import TrainConfig
from afm_ray.registry.checkpoints import HISTORY_FILE
from afm_ray.registry.tracking import ARCHITECTURE_TAG, create_config_run, flatten

RUN_STATE_FILE = "afm_ray_run.json"


# -- the run folder's state: MLflow run id, the config it runs, the runs it continues ----------------
RESUMABLE_FIELDS = (
    # how far to train: a larger count continues from the checkpoint
    "run.epochs",
    # how failures and the end are handled, not what is trained
    "run.max_failures", "run.num_figure_samples", "mlflow.alias",
    # where and how fast batches are made: every sample is seeded by (run seed, epoch, sample) and
    # augmented with the same draws on actor or trainer, so the batches do not depend on these
    "pipeline.num_sim_actors", "pipeline.sim_num_gpus", "pipeline.sim_num_cpus", "pipeline.sim_resources",
    "pipeline.opencl_device", "pipeline.augment_on", "pipeline.raw_df_slices", "pipeline.max_in_flight_per_worker",
    "pipeline.object_store_budget_mib_per_worker", "pipeline.actor_queue_depth", "pipeline.prefetch_next_epoch",
    "pipeline.batch_timeout_s", "pipeline.batch_timeout_floor_s", "pipeline.timeout_p95_factor",
    "pipeline.hedge_p95_factor", "pipeline.max_attempts_per_batch", "pipeline.consumer_lease_s",
    "pipeline.actor_startup_timeout_s", "data.fixed_set_cache_mib",
    # how many ranks share the global batch, and in how many micro batches: the same samples per step at the
    # same learning rate per sample seen (only the per-piece draws of noise, tilts and shifts differ)
    "scaling", "run.micro_batch_size",
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
    with atomic_file(run_dir / RUN_STATE_FILE, text=True) as stream:
        stream.write(json.dumps(state, indent=1, default=_json_value))


def _json_value(value):
    return value.item() if isinstance(value, np.generic) else str(value)


def recorded_run_id(run_dir: Path) -> str | None:
    """The MLflow run id kept in ``run_dir/afm_ray_run.json`` (:func:`open_mlflow_run`), if any."""
    return read_run_state(run_dir).get("mlflow_run_id")


def record_run_id(run_dir: Path, run_id: str, **fields) -> None:
    """Keep ``run_id`` (and ``fields``) in ``run_dir`` so that a restarted command continues the same MLflow run."""
    write_run_state(run_dir, {**read_run_state(run_dir), "mlflow_run_id": run_id, **fields})


def _within(field: str, sections: tuple[str, ...]) -> bool:
    """Whether the dotted ``field`` is one of ``sections`` or lies inside one."""
    return any(field == section or field.startswith(section + ".") for section in sections)


def config_changes(old: dict, new: dict, may_change: tuple[str, ...] = ()) -> dict[str, tuple[str, str]]:
    """Fields whose values differ between two config dumps, ``{"a.b": (old, new)}`` (values as MLflow params),
    leaving out the fields and sections named in ``may_change``."""
    old_flat, new_flat = flatten(old), flatten(new)
    changes = {}
    for field in sorted(old_flat.keys() | new_flat.keys()):
        if _within(field, may_change):
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
                if not _within(field, may_change)}
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
