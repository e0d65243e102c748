"""Finding and loading trained models: the MLflow registry, run models, local folders.

A *model reference* is one of

* ``models:/NAME@ALIAS`` — the registered version an alias points to (``afm-ray train`` sets
  ``mlflow.alias``, default ``current``);
* ``models:/NAME/VERSION`` or ``models:/NAME/latest`` — a version number, or the newest version;
* ``runs:/RUN_ID/model`` — the model a training run logged (``model`` is the name
  :func:`afm_ray.train.trainer.finish` logs it under);
* a local folder: an MLflow model folder (it holds an ``MLmodel`` file, e.g. a downloaded model)
  or a training checkpoint folder (it holds ``state.pt``; ``runs/NAME/checkpoint_…``).

:func:`load_model` returns a :class:`LoadedModel`: the :class:`~afm_ray.models.packed.PackedOutputs`
network in eval mode on the CPU and its :class:`~afm_ray.train.config.TrainConfig`, read from the
model's ``afm_ray_config`` metadata (or the checkpoint), which says what input the model expects
(scan window, pixels, slices, tips). Nothing global is changed: the tracking URI is passed to an
:class:`mlflow.MlflowClient` and to the artifact download, never set process-wide.

:func:`list_models` and :func:`describe_model` serve ``afm-ray models list|show``.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from afm_ray.batches import MODEL_TARGETS, MODEL_TIPS
from afm_ray.config import validate
from afm_ray.errors import InputError
from afm_ray.models.packed import PackedOutputs
from afm_ray.train.config import TrainConfig
from afm_ray.train.registration import CONFIG_METADATA_KEY
from afm_ray.train.tracking import ARCHITECTURE_TAG, resolve_tracking_uri

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class LoadedModel:
    """A trained model ready to predict, and what it expects as input.

    Attributes:
        packed: the network wrapped in :class:`PackedOutputs` (eval mode, CPU): ``forward(x)`` with
            x ``(B, C, nx, ny, K)`` float32 returns the outputs concatenated on axis 1;
            ``packed.unpack`` splits them by name.
        config: the training configuration (``config.sim`` = scan window and pixels,
            ``config.input_slices`` = K, ``config.augment`` = how slices were picked).
        reference: what was asked for (URI or folder).
        registered_name, version, run_id: where it came from, when known.
    """

    packed: PackedOutputs
    config: TrainConfig
    reference: str
    registered_name: str | None = None
    version: str | None = None
    run_id: str | None = None

    @property
    def model_name(self) -> str:
        """``dsh``, ``es`` or ``xyz``."""
        return self.config.model.name

    @property
    def tips(self) -> tuple[str, ...]:
        """Probe of each input channel, in channel order (``("CO",)`` or ``("CO", "Xe")``)."""
        return MODEL_TIPS[self.model_name]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.packed.output_names)

    def describe(self) -> str:
        """One line: where the model comes from and the input it expects."""
        sim = self.config.sim
        origin = (f"{self.registered_name} v{self.version}" if self.registered_name else self.reference)
        return (f"{origin}: {self.model_name} model, input {'+'.join(self.tips)} "
                f"{sim.scan_pixels[0]}×{sim.scan_pixels[1]} px over {sim.scan_size_angstrom[0]:g}×"
                f"{sim.scan_size_angstrom[1]:g} Å, {self.config.input_slices} slices far → close")


def load_model(reference: str | Path, tracking_uri: str | None = None) -> LoadedModel:
    """Load the model named by ``reference`` (see the module docstring for the accepted forms).

    ``tracking_uri``: the MLflow store for ``models:/`` and ``runs:/`` references; default
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db``. Raises :class:`InputError` (one line)
    for a missing model, version, alias, run or folder, or a model without afm-ray metadata.
    """
    text = str(reference)
    if text.startswith("models:/"):
        return _load_registered(text, resolve_tracking_uri(tracking_uri))
    if text.startswith("runs:/"):
        return _load_run_model(text, resolve_tracking_uri(tracking_uri))
    if re.match(r"^[a-z][a-z0-9+.-]*:/", text) and not Path(text).exists():
        raise InputError("--model", f"unsupported model reference {text!r}: use models:/NAME@ALIAS, "
                                    "models:/NAME/VERSION, runs:/RUN_ID/model or a local folder")
    return _load_local(Path(text), text)


# -- registry -------------------------------------------------------------------------------------
def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def _load_registered(reference: str, tracking_uri: str) -> LoadedModel:
    from mlflow.exceptions import MlflowException

    match = _MODELS_URI.match(reference)
    if match is None:
        raise InputError("--model", f"{reference!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = match["name"], match["alias"], match["version"]
    client = _client(tracking_uri)
    registered = _registered_model(client, name, tracking_uri)
    if alias is not None:
        if alias not in registered.aliases:
            known = ", ".join(f"@{a} → v{v}" for a, v in sorted(registered.aliases.items())) or "none"
            raise InputError("--model", f"registered model {name!r} has no alias {alias!r} (aliases: {known})")
        model_version = client.get_model_version_by_alias(name, alias)
    elif version == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise InputError("--model", f"registered model {name!r} has no versions")
        model_version = max(versions, key=lambda v: int(v.version))
    else:
        try:
            model_version = client.get_model_version(name, version)
        except MlflowException:
            known = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
            raise InputError("--model", f"registered model {name!r} has no version {version!r} "
                                        f"(versions: {', '.join(map(str, known)) or 'none'})") from None
    location = client.get_model_version_download_uri(name, model_version.version)
    packed, config = _load_mlflow_model(location, tracking_uri, reference)
    return LoadedModel(packed, config, reference, name, str(model_version.version), model_version.run_id)


def _registered_model(client, name: str, tracking_uri: str, where: str = "--model"):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = sorted(model.name for model in _all_registered_models(client, tracking_uri))
        raise InputError(where, f"no registered model {name!r} in {tracking_uri} "
                                f"(registered: {', '.join(known) or 'none'})") from None


def _load_run_model(reference: str, tracking_uri: str) -> LoadedModel:
    from mlflow.exceptions import MlflowException

    match = _RUNS_URI.match(reference)
    if match is None:
        raise InputError("--model", f"{reference!r} is not runs:/RUN_ID/model")
    run_id, path = match["run_id"], match["path"].strip("/")
    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise InputError("--model", f"no MLflow run {run_id!r} in {tracking_uri}") from None
    # MLflow 3 keeps logged models apart from run artifacts: look the name up among the run's models.
    logged = [model for model in client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                             filter_string=f"name = '{path}'")
              if model.source_run_id == run_id]
    location = logged[0].artifact_location if logged else f"{run.info.artifact_uri.rstrip('/')}/{path}"
    packed, config = _load_mlflow_model(location, tracking_uri, reference)
    return LoadedModel(packed, config, reference, None, None, run_id)


def _load_mlflow_model(location: str, tracking_uri: str, reference: str) -> tuple[PackedOutputs, TrainConfig]:
    """Load the MLflow model stored at ``location`` (a local path or an artifact URI)."""
    local = _local_path(location)
    if local is not None:
        return _read_mlflow_folder(local, reference)
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="afm-ray-model-") as folder:
        try:
            path = download_artifacts(artifact_uri=location, dst_path=folder, tracking_uri=tracking_uri)
        except Exception as exc:  # store-specific exception types
            raise InputError("--model", f"cannot download {reference} from {location}: "
                                        f"{str(exc).splitlines()[0][:200]}") from None
        return _read_mlflow_folder(Path(path), reference)


def _local_path(location: str) -> Path | None:
    if location.startswith("file://"):
        location = location[len("file://"):]
    if re.match(r"^[a-z][a-z0-9+.-]*:", location):
        return None
    path = Path(location)
    return path if path.exists() else None


def _read_mlflow_folder(folder: Path, reference: str) -> tuple[PackedOutputs, TrainConfig]:
    import mlflow.pytorch
    from mlflow.models import Model

    if not (folder / "MLmodel").is_file():
        raise InputError("--model", f"{reference}: no MLmodel file in {folder}")
    metadata = Model.load(str(folder)).metadata or {}
    if CONFIG_METADATA_KEY not in metadata:
        raise InputError("--model", f"{reference} was not logged by afm-ray train (no {CONFIG_METADATA_KEY!r} metadata)")
    # a model logged by an older afm-ray whose config no longer validates fails here, by name
    config = validate(TrainConfig, metadata[CONFIG_METADATA_KEY], f"{reference}: {CONFIG_METADATA_KEY}")
    packed = mlflow.pytorch.load_model(str(folder), map_location="cpu")
    if not isinstance(packed, PackedOutputs):
        raise InputError("--model", f"{reference} holds a {type(packed).__name__}, not afm-ray's PackedOutputs")
    return packed.eval(), config


def _load_local(path: Path, reference: str) -> LoadedModel:
    if not path.exists():
        raise InputError("--model", f"{reference}: no such model folder, and not a models:/ or runs:/ URI")
    if (path / "MLmodel").is_file():
        packed, config = _read_mlflow_folder(path, reference)
        return LoadedModel(packed, config, reference)
    from afm_ray.train.loop import CHECKPOINT_FILE, load_checkpoint_model

    if (path / CHECKPOINT_FILE).is_file():
        network, config, _ = load_checkpoint_model(path)
        packed = PackedOutputs(network, MODEL_TARGETS[config.model.name], config.model.name).eval()
        return LoadedModel(packed, config, reference)
    raise InputError("--model", f"{reference}: neither an MLflow model folder (MLmodel) nor a training "
                                f"checkpoint ({CHECKPOINT_FILE})")


# -- listing --------------------------------------------------------------------------------------
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
    client = _client(tracking_uri)
    out = []
    for model in _all_registered_models(client, tracking_uri):
        versions = client.search_model_versions(f"name = '{model.name}'")
        latest = max((int(v.version) for v in versions), default=None)
        out.append(RegisteredModelSummary(model.name, model.tags.get(ARCHITECTURE_TAG),
                                          {a: str(v) for a, v in model.aliases.items()}, len(versions),
                                          None if latest is None else str(latest)))
    return sorted(out, key=lambda m: m.name)


def _all_registered_models(client, tracking_uri: str) -> list:
    try:
        return list(client.search_registered_models())
    except Exception as exc:  # connection errors surface as several exception types
        raise InputError("--tracking-uri", f"MLflow store {tracking_uri} cannot be read: "
                                           f"{str(exc).splitlines()[0][:200]}") from None


def describe_model(name: str, tracking_uri: str | None = None) -> RegisteredModelSummary:
    """One registered model with every version's aliases, config summary and run metrics."""
    tracking_uri = resolve_tracking_uri(tracking_uri)
    client = _client(tracking_uri)
    registered = _registered_model(client, name, tracking_uri, where="models show")
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


def _version_config_summary(client, name: str, version, tracking_uri: str) -> dict[str, str]:
    """The training config of a version, read from its MLmodel metadata only (no weights loaded)."""
    from mlflow.models import Model

    location = client.get_model_version_download_uri(name, version.version)
    try:
        local = _local_path(location)
        if local is not None:
            metadata = Model.load(str(local)).metadata or {}
        else:
            from mlflow.artifacts import download_artifacts

            with tempfile.TemporaryDirectory(prefix="afm-ray-mlmodel-") as folder:
                path = download_artifacts(artifact_uri=f"{location.rstrip('/')}/MLmodel", dst_path=folder,
                                          tracking_uri=tracking_uri)
                metadata = Model.load(path).metadata or {}
    except Exception:  # unreadable artifact store: show the version without its config
        return {}
    if CONFIG_METADATA_KEY not in metadata:
        return {}
    try:
        return config_summary(validate(TrainConfig, metadata[CONFIG_METADATA_KEY], f"{name} v{version.version}"))
    except InputError as exc:  # listed anyway, with the reason its config cannot be shown
        return {"config": str(exc)}


def config_summary(config: TrainConfig) -> dict[str, str]:
    """The training settings that matter when using a model, as short strings."""
    sim, scan = config.sim, config.augment.scan_height
    slices = (f"{scan.kept_slices} of a random window of {scan.window_slices} (of {sim.num_slices} simulated)"
              if scan.enabled else f"all {sim.num_slices}")
    summary = {
        "model": config.model.name + (" +skip" if config.model.skip_connections else ""),
        "input": f"{'+'.join(MODEL_TIPS[config.model.name])}, {sim.scan_pixels[0]}×{sim.scan_pixels[1]} px over "
                 f"{sim.scan_size_angstrom[0]:g}×{sim.scan_size_angstrom[1]:g} Å, {config.input_slices} slices",
        "slices": f"{slices}, dz {sim.dz_angstrom:g} Å",
        "data": f"{config.data.database.name} split {config.data.split}, {config.rotations_per_molecule} rotations/molecule",
        "training": f"{config.run.epochs} epochs, batch {config.run.batch_size} × {config.scaling.num_workers} workers, "
                    f"lr {config.optimizer.learning_rate:g}",
    }
    if config.model.name == "xyz":
        summary["loss"] = (f"γ {config.loss.gamma:g}, αn {config.loss.alpha_n:g}, βPL {config.loss.beta_pl:g}"
                           + (f", classes {config.model.element_classes}" if config.model.element_classes else ""))
    else:
        weights = config.loss.dsh_weights if config.model.name == "dsh" else config.loss.es_weights
        summary["loss"] = "weights " + ", ".join(f"{w:g}" for w in weights)
    return summary
