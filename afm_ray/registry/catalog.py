"""What the MLflow registry holds: ``afm-ray models list|show``.

:func:`list_models` lists every registered model; :func:`describe_model` shows one with every
version's aliases, training-config summary (read from the version's MLmodel metadata: no weights
are loaded, no plugin module imported) and run metrics.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

from afm_ray.config import validate
from afm_ray.errors import InputError
from afm_ray.models.spec import refuse_untrusted_module
from afm_ray.recipe import TrainConfig, resolve_tracking_uri
from afm_ray.registry.loading import all_registered_models, local_path, mlflow_client, registered_model
from afm_ray.registry.registration import CONFIG_METADATA_KEY
from afm_ray.registry.tracking import ARCHITECTURE_TAG


@dataclass(frozen=True)
class VersionSummary:
    """One registered version: where it came from, its aliases, training config and run metrics."""

    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    status: str
    created_ms: int
    config_summary: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredModelSummary:
    """A registered model: name, architecture tag, aliases (alias → version), versions."""

    name: str
    architecture: str | None
    aliases: dict[str, str]
    n_versions: int
    latest_version: str | None
    versions: tuple[VersionSummary, ...] = ()


def list_models(tracking_uri: str | None = None) -> list[RegisteredModelSummary]:
    """Every registered model of the store, sorted by name (versions not expanded)."""
    tracking_uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(tracking_uri)
    out = []
    for model in all_registered_models(client, tracking_uri):
        versions = client.search_model_versions(f"name = '{model.name}'")
        latest = max((int(v.version) for v in versions), default=None)
        out.append(RegisteredModelSummary(model.name, model.tags.get(ARCHITECTURE_TAG),
                                          {a: str(v) for a, v in model.aliases.items()}, len(versions),
                                          None if latest is None else str(latest)))
    return sorted(out, key=lambda m: m.name)


def describe_model(name: str, tracking_uri: str | None = None) -> RegisteredModelSummary:
    """One registered model with every version's aliases, config summary and run metrics."""
    tracking_uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(tracking_uri)
    registered = registered_model(client, name, tracking_uri, where="models show")
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    summaries = []
    for version in versions:
        aliases = tuple(sorted(a for a, v in registered.aliases.items() if str(v) == str(version.version)))
        summaries.append(VersionSummary(str(version.version), aliases, version.run_id, str(version.status),
                                        int(version.creation_timestamp or 0),
                                        _version_config_summary(client, name, version, tracking_uri),
                                        _run_metrics(client, version.run_id)))
    latest = summaries[-1].version if summaries else None
    return RegisteredModelSummary(name, registered.tags.get(ARCHITECTURE_TAG),
                                  {a: str(v) for a, v in registered.aliases.items()}, len(summaries), latest,
                                  tuple(summaries))


def _run_metrics(client, run_id: str | None) -> dict[str, float]:
    if not run_id:
        return {}
    try:
        return dict(sorted(client.get_run(run_id).data.metrics.items()))
    except Exception:  # the run may have been deleted; the version still lists
        return {}


def version_metadata(client, name: str, version: str, tracking_uri: str) -> dict:
    """The MLmodel metadata of a registered version (the MLmodel file only, no weights)."""
    from mlflow.models import Model

    location = client.get_model_version_download_uri(name, version)
    local = local_path(location)
    if local is not None:
        return Model.load(str(local)).metadata or {}
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="afm-ray-mlmodel-") as folder:
        path = download_artifacts(artifact_uri=f"{location.rstrip('/')}/MLmodel", dst_path=folder,
                                  tracking_uri=tracking_uri)
        return Model.load(path).metadata or {}


def _version_config_summary(client, name: str, version, tracking_uri: str) -> dict[str, str]:
    """The training config of a version, read from its MLmodel metadata only (no weights loaded)."""
    try:
        metadata = version_metadata(client, name, version.version, tracking_uri)
    except Exception:  # unreadable artifact store: show the version without its config
        return {}
    if CONFIG_METADATA_KEY not in metadata:
        return {}
    try:
        where = f"{name} v{version.version}"
        refuse_untrusted_module(metadata[CONFIG_METADATA_KEY], where)  # listing never imports a plugin
        return config_summary(validate(TrainConfig, metadata[CONFIG_METADATA_KEY], where))
    except InputError as exc:  # listed anyway, with the reason its config cannot be shown
        return {"config": str(exc)}


def config_summary(config: TrainConfig) -> dict[str, str]:
    """The training settings that matter when using a model, as short strings."""
    sim, scan = config.sim, config.augment.scan_height
    slices = (f"{scan.kept_slices} of a random window of {scan.window_slices} (of {sim.num_slices} simulated)"
              if scan.enabled else f"all {sim.num_slices}")
    summary = {
        "model": config.model.name + (" +skip" if config.model.skip_connections else "")
                 + (f", classes {config.model.element_classes}" if config.model.element_classes else ""),
        "input": f"{'+'.join(config.model.spec.tips)}, {sim.scan_pixels[0]}×{sim.scan_pixels[1]} px over "
                 f"{sim.scan_size_angstrom[0]:g}×{sim.scan_size_angstrom[1]:g} Å, {config.input_slices} slices",
        "slices": f"{slices}, dz {sim.dz_angstrom:g} Å",
        "data": f"{config.data.database.name} split {config.data.split}, {config.rotations_per_molecule} rotations/molecule",
        "training": f"{config.run.epochs} epochs, global batch {config.run.batch_size} on {config.scaling.num_workers} workers, "
                    f"lr {config.optimizer.learning_rate:g}",
    }
    summary["loss"] = config.loss.describe()
    return summary
