"""Finding and loading trained models: the MLflow registry, run models, local folders.

A *model reference* is one of

* ``models:/NAME@ALIAS`` — the registered version an alias points to (``afm-ray train`` sets
  ``mlflow.alias``, default ``current``);
* ``models:/NAME/VERSION`` or ``models:/NAME/latest`` — a version number, or the newest version;
* ``runs:/RUN_ID/model`` — the model a training run logged (``model`` is the name
  :func:`afm_ray.train.trainer.finish` logs it under);
* a local folder: an MLflow model folder (it holds an ``MLmodel`` file, e.g. a downloaded model)
  or a training checkpoint folder (it holds ``state.pt``; ``runs/NAME/checkpoint_…``).

:func:`load_model` returns a :class:`LoadedModel`: the packed network in eval mode on the CPU and
its :class:`~afm_ray.train.config.TrainConfig`, read from the model's ``afm_ray_config`` metadata
(or the checkpoint), which says what input the model expects (scan window, pixels, slices, tips).
Nothing global is changed: the tracking URI is passed to an :class:`mlflow.MlflowClient` and to the
artifact download, never set process-wide.

Loading never unpickles. A registered model is a ``torch.export`` archive (MLflow's ``pt2``,
:mod:`afm_ray.train.registration`): it is checked to hold only JSON, raw tensor bytes and records
that ``torch.load(weights_only=True)`` accepts, then loaded as an
:class:`~afm_ray.models.packed.ExportedPackedOutputs`. A checkpoint folder is read with
``weights_only=True``. The format is read from the model's MLmodel file before any weights are
fetched: a model that an older afm-ray registered pickled is refused unless the caller passes
``trust_pickle=True`` (``--trust-pickle``), which loads it with a :class:`PickledModelWarning`.

An artifact never chooses code: the format and the archive's pickle-freedom are checked first, then
a config naming a ``model.module`` (a plugin model) is refused unless the caller trusts that module
(``allowed_modules``, ``--allow-module NAME``, or ``$AFM_RAY_TRUSTED_MODULES``), and only then is the
config validated (which imports it).

:func:`list_models` and :func:`describe_model` serve ``afm-ray models list|show``;
:func:`reregister_model` serves ``afm-ray models reregister`` (a pickled model as a new, safe version).
"""

from __future__ import annotations

import io
import re
import tempfile
import warnings
import zipfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from afm_ray.config import one_line, validate
from afm_ray.errors import InputError
from afm_ray.models.spec import refuse_untrusted_module
from afm_ray.models.packed import PACKED_SPEC_METADATA_KEY, ExportedPackedOutputs, PackedOutputs, PackedSpec
from afm_ray.train.config import TrainConfig
from afm_ray.train.registration import CONFIG_METADATA_KEY, SERIALIZATION_FORMAT, SERIALIZATION_METADATA_KEY
from afm_ray.train.tracking import ARCHITECTURE_TAG, resolve_tracking_uri

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+)$")
_EXPORTED_MODEL_FILE = "model.pt2"  # MLflow's name for a pt2 model in the model's data folder


class PickledModelWarning(UserWarning):
    """A pickled model was loaded because the caller trusted its source (``trust_pickle=True``)."""


@dataclass(frozen=True)
class LoadedModel:
    """A trained model ready to predict, and what it expects as input.

    Attributes:
        packed: the network, eval mode, CPU: a registered model's exported graph
            (:class:`ExportedPackedOutputs`), or :class:`PackedOutputs` around the network of a
            checkpoint or a trusted pickled model. ``forward(x)`` with x ``(B, C, nx, ny, K)``
            float32 returns the outputs concatenated on axis 1; ``packed.unpack`` splits them by
            name; ``packed.network(x)`` returns the network's tuple of outputs.
        config: the training configuration (``config.sim`` = scan window and pixels,
            ``config.input_slices`` = K, ``config.augment`` = how slices were picked).
        reference: what was asked for (URI or folder).
        registered_name, version, run_id: where it came from, when known.
    """

    packed: ExportedPackedOutputs | PackedOutputs
    config: TrainConfig
    reference: str
    registered_name: str | None = None
    version: str | None = None
    run_id: str | None = None

    @property
    def model_name(self) -> str:
        """The registered model's name (``dsh``, ``es``, ``xyz``, …)."""
        return self.config.model.name

    @property
    def tips(self) -> tuple[str, ...]:
        """Probe of each input channel, in channel order (``("CO",)`` or ``("CO", "Xe")``)."""
        return self.config.model.spec.tips

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


def load_model(reference: str | Path, tracking_uri: str | None = None, trust_pickle: bool = False,
               allowed_modules: Collection[str] = ()) -> LoadedModel:
    """Load the model named by ``reference`` (see the module docstring for the accepted forms).

    ``tracking_uri``: the MLflow store for ``models:/`` and ``runs:/`` references; default
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db``. ``trust_pickle``: also load a model an
    older afm-ray registered pickled (this runs code stored in the artifact: only for a trusted
    source; warns with :class:`PickledModelWarning`). ``allowed_modules``: model modules (plugins) the
    model's config may name and so import (also ``$AFM_RAY_TRUSTED_MODULES``). Raises
    :class:`InputError` (one line) for a missing model, version, alias, run or folder, a model without
    afm-ray metadata, a pickled model without ``trust_pickle``, an archive holding pickle payloads or
    corrupt, or a config naming an untrusted module.
    """
    text = str(reference)
    trust = _Trust(trust_pickle, tuple(allowed_modules))
    if text.startswith("models:/"):
        return _load_registered(text, resolve_tracking_uri(tracking_uri), trust)
    if text.startswith("runs:/"):
        return _load_run_model(text, resolve_tracking_uri(tracking_uri), trust)
    if re.match(r"^[a-z][a-z0-9+.-]*:/", text) and not Path(text).exists():
        raise InputError("--model", f"unsupported model reference {text!r}: use models:/NAME@ALIAS, "
                                    "models:/NAME/VERSION, runs:/RUN_ID/model or a local folder")
    return _load_local(Path(text), text, trust)


@dataclass(frozen=True)
class _Trust:
    """What the caller trusts: pickled models (``--trust-pickle``), model modules (``--allow-module``)."""

    pickle: bool = False
    modules: tuple[str, ...] = ()


# -- registry -------------------------------------------------------------------------------------
def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def _load_registered(reference: str, tracking_uri: str, trust: _Trust) -> LoadedModel:
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
    packed, config = _load_mlflow_model(location, tracking_uri, reference, trust)
    return LoadedModel(packed, config, reference, name, str(model_version.version), model_version.run_id)


def _registered_model(client, name: str, tracking_uri: str, where: str = "--model"):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = sorted(model.name for model in _all_registered_models(client, tracking_uri))
        raise InputError(where, f"no registered model {name!r} in {tracking_uri} "
                                f"(registered: {', '.join(known) or 'none'})") from None


def _load_run_model(reference: str, tracking_uri: str, trust: _Trust) -> LoadedModel:
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
    packed, config = _load_mlflow_model(location, tracking_uri, reference, trust)
    return LoadedModel(packed, config, reference, None, None, run_id)


def _load_mlflow_model(location: str, tracking_uri: str, reference: str,
                       trust: _Trust) -> tuple[ExportedPackedOutputs | PackedOutputs, TrainConfig]:
    """Load the MLflow model stored at ``location`` (a local path or an artifact URI)."""
    local = _local_path(location)
    if local is not None:
        return _read_mlflow_folder(local, reference, trust)
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="afm-ray-model-") as folder:
        try:
            # the MLmodel file first: a pickled model is refused before its weights are fetched
            mlmodel = download_artifacts(artifact_uri=f"{location.rstrip('/')}/MLmodel",
                                         dst_path=str(Path(folder) / "mlmodel"), tracking_uri=tracking_uri)
            _serialization_format(Model.load(mlmodel), reference, trust.pickle)
            path = download_artifacts(artifact_uri=location, dst_path=str(Path(folder) / "model"),
                                      tracking_uri=tracking_uri)
        except InputError:
            raise
        except Exception as exc:  # store-specific exception types
            raise InputError("--model", f"cannot download {reference} from {location}: "
                                        f"{str(exc).splitlines()[0][:200]}") from None
        return _read_mlflow_folder(Path(path), reference, trust)


def _local_path(location: str) -> Path | None:
    if location.startswith("file://"):
        location = location[len("file://"):]
    if re.match(r"^[a-z][a-z0-9+.-]*:", location):
        return None
    path = Path(location)
    return path if path.exists() else None


def _read_mlflow_folder(folder: Path, reference: str,
                        trust: _Trust) -> tuple[ExportedPackedOutputs | PackedOutputs, TrainConfig]:
    from mlflow.models import Model

    if not (folder / "MLmodel").is_file():
        raise InputError("--model", f"{reference}: no MLmodel file in {folder}")
    try:
        mlmodel = Model.load(str(folder))
    except Exception as exc:  # YAML or MLflow schema errors
        raise InputError("--model", f"{reference}: unreadable MLmodel file ({one_line(exc, 200)})") from None
    metadata = mlmodel.metadata or {}
    if CONFIG_METADATA_KEY not in metadata:
        raise InputError("--model", f"{reference} was not logged by afm-ray train (no {CONFIG_METADATA_KEY!r} metadata)")
    # format and pickle-freedom first, then the config's module, and only then the config (which imports it)
    exported = _serialization_format(mlmodel, reference, trust.pickle) == SERIALIZATION_FORMAT
    data = folder / mlmodel.flavors["pytorch"].get("model_data", "data")
    archive = _pickle_free_archive(data / _EXPORTED_MODEL_FILE, reference) if exported else None
    where = f"{reference}: {CONFIG_METADATA_KEY}"
    refuse_untrusted_module(metadata[CONFIG_METADATA_KEY], where, trust.modules)
    # a model logged by an older afm-ray whose config no longer validates fails here, by name
    config = validate(TrainConfig, metadata[CONFIG_METADATA_KEY], where)
    if archive is not None:
        return _load_exported(archive, metadata, config, reference), config
    return _load_pickled(folder, reference), config


def _serialization_format(mlmodel, reference: str, trust_pickle: bool) -> str:
    """``pt2``, or ``pickle`` when ``trust_pickle`` allows it, read from the MLmodel file alone.

    MLflow writes the same MLmodel for both formats; afm-ray records ``pt2`` in the metadata, so a
    model without that entry was registered by an older afm-ray, pickled.
    """
    if "pytorch" not in mlmodel.flavors:
        raise InputError("--model", f"{reference} is not a PyTorch model (flavours: {', '.join(mlmodel.flavors)})")
    declared = (mlmodel.metadata or {}).get(SERIALIZATION_METADATA_KEY)
    if declared == SERIALIZATION_FORMAT:
        return SERIALIZATION_FORMAT
    if declared is not None:
        raise InputError("--model", f"{reference}: unknown {SERIALIZATION_METADATA_KEY} {declared!r} "
                                    f"(this afm-ray reads {SERIALIZATION_FORMAT!r})")
    if not trust_pickle:
        raise InputError("--model", f"{reference} was registered pickled by an older afm-ray, and loading a pickle "
                                    "runs code stored in the artifact. Register it again in the safe format "
                                    f"(afm-ray models reregister {reference} --trust-pickle, or train it again), or "
                                    "pass --trust-pickle (trust_pickle=True) if you trust where it came from")
    return "pickle"


def _pickle_free_archive(path: Path, reference: str) -> bytes:
    """The bytes of the pt2 archive at ``path`` after checking it holds no pickle payload (MLflow's check)."""
    from mlflow.exceptions import MlflowException

    if not path.is_file():
        raise InputError("--model", f"{reference}: no {path.name} in {path.parent}")
    try:
        from mlflow.pytorch import _validate_pt2_archive_is_pickle_free
    except ImportError:
        import mlflow

        raise InputError("--model", f"MLflow {mlflow.__version__} cannot check that {reference}'s pt2 archive is "
                                    "free of pickle payloads: upgrade mlflow") from None
    archive = path.read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(archive)):
        raise InputError("--model", f"{reference}: {path.name} is not a pt2 (zip) archive")
    try:
        _validate_pt2_archive_is_pickle_free(io.BytesIO(archive))  # the bytes that are then loaded
    except MlflowException as exc:
        raise InputError("--model", f"{reference}: refused: {str(exc).splitlines()[0][:300]}") from None
    return archive


def _load_exported(archive: bytes, metadata: dict, config: TrainConfig, reference: str) -> ExportedPackedOutputs:
    """The exported network of the pickle-free pt2 ``archive``, checked against the config's model."""
    try:
        spec = PackedSpec.from_json(metadata.get(PACKED_SPEC_METADATA_KEY) or {})
    except ValueError as exc:
        raise InputError("--model", f"{reference}: {exc}") from None
    if (spec.model_name, spec.output_names) != (config.model.name, config.model.spec.output_names):
        raise InputError("--model", f"{reference}: {PACKED_SPEC_METADATA_KEY} describes a {spec.model_name} model "
                                    f"with outputs {list(spec.output_names)}, but its config a {config.model.name}")
    try:
        return ExportedPackedOutputs.from_archive(archive, spec)
    except Exception as exc:  # torch.export.load: corrupt weights or graph (ValueError, RuntimeError, …)
        raise InputError("--model", f"{reference}: corrupt pt2 archive ({one_line(exc, 200)})") from None


def _load_pickled(folder: Path, reference: str) -> PackedOutputs:
    """A model registered pickled, loaded because the caller trusts its source."""
    import mlflow.pytorch

    warnings.warn(f"{reference}: loading a pickled model (--trust-pickle): this runs code stored in the artifact; "
                  f"register it again in the safe format (afm-ray models reregister {reference} --trust-pickle)",
                  PickledModelWarning, stacklevel=4)
    packed = mlflow.pytorch.load_model(str(folder), map_location="cpu")
    if not isinstance(packed, PackedOutputs):
        raise InputError("--model", f"{reference} holds a {type(packed).__name__}, not afm-ray's PackedOutputs")
    return packed.eval()


def _load_local(path: Path, reference: str, trust: _Trust) -> LoadedModel:
    if not path.exists():
        raise InputError("--model", f"{reference}: no such model folder, and not a models:/ or runs:/ URI")
    if (path / "MLmodel").is_file():
        packed, config = _read_mlflow_folder(path, reference, trust)
        return LoadedModel(packed, config, reference)
    from afm_ray.train.loop import CHECKPOINT_FILE, load_checkpoint_model

    if (path / CHECKPOINT_FILE).is_file():
        network, config, _ = load_checkpoint_model(path, allowed_modules=trust.modules)
        packed = PackedOutputs(network, config.model.spec.output_names, config.model.name).eval()
        return LoadedModel(packed, config, reference)
    raise InputError("--model", f"{reference}: neither an MLflow model folder (MLmodel) nor a training "
                                f"checkpoint ({CHECKPOINT_FILE})")


# -- re-registering pickled models ----------------------------------------------------------------
def reregister_model(reference: str, tracking_uri: str | None = None, trust_pickle: bool = False,
                     allowed_modules: Collection[str] = ()) -> tuple[str, str]:
    """Register the model of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` again in the safe
    format, as a new version of NAME; returns (new version, MLflow run id).

    For models an older afm-ray registered pickled (loading them needs ``trust_pickle``). The new
    version keeps the old one's metadata (config, provenance) and records where it came from
    (``afm_ray_reregistered_from``); every alias that pointed at the old version moves to it.
    """
    from mlflow import MlflowClient

    from afm_ray.train.registration import log_and_register
    from afm_ray.train.run_state import create_config_run

    tracking_uri = resolve_tracking_uri(tracking_uri)
    if not str(reference).startswith("models:/"):
        raise InputError("--model", f"{reference!r}: reregister takes models:/NAME@ALIAS or models:/NAME/VERSION")
    loaded = load_model(reference, tracking_uri, trust_pickle=trust_pickle, allowed_modules=allowed_modules)
    name, old_version = loaded.registered_name, loaded.version
    if isinstance(loaded.packed, ExportedPackedOutputs):
        raise InputError("--model", f"{reference} (version {old_version}) is already in the safe format")
    client = MlflowClient(tracking_uri)
    aliases = sorted(alias for alias, version in client.get_registered_model(name).aliases.items()
                     if str(version) == old_version)
    source = f"models:/{name}/{old_version}"
    metadata = {key: value for key, value in _version_metadata(client, name, old_version, tracking_uri).items()
                if key not in (CONFIG_METADATA_KEY, PACKED_SPEC_METADATA_KEY, SERIALIZATION_METADATA_KEY)}
    settings = loaded.config.mlflow.model_copy(update={"registered_model_name": name, "tracking_uri": tracking_uri,
                                                       "alias": aliases[0] if aliases else loaded.config.mlflow.alias})
    config = loaded.config.model_copy(update={"mlflow": settings})
    run_id = create_config_run(client, config, f"reregister {name} v{old_version}",
                               {ARCHITECTURE_TAG: config.model.name, "afm_ray.reregistered_from": source})
    example = np.zeros((1, len(loaded.tips), *config.sim.scan_pixels, config.input_slices), np.float32)
    version = log_and_register(loaded.packed.network, config, example, tracking_uri, run_id,
                               {**metadata, "afm_ray_reregistered_from": source}, set_alias=bool(aliases))
    for alias in aliases[1:]:
        client.set_registered_model_alias(name, alias, version)
    client.set_terminated(run_id, status="FINISHED")
    return version, run_id


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


def _version_metadata(client, name: str, version: str, tracking_uri: str) -> dict:
    """The MLmodel metadata of a registered version (the MLmodel file only, no weights)."""
    from mlflow.models import Model

    location = client.get_model_version_download_uri(name, version)
    local = _local_path(location)
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
        metadata = _version_metadata(client, name, version.version, tracking_uri)
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
