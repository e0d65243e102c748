"""``afm-ray models reregister``: a model an older afm-ray registered pickled, as a new version in the safe format."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from afm_ray.errors import InputError
from afm_ray.models.packed import PACKED_SPEC_METADATA_KEY, ExportedPackedOutputs
from afm_ray.recipe import resolve_tracking_uri
from afm_ray.registry.catalog import version_metadata
from afm_ray.registry.loading import load_model
from afm_ray.registry.registration import CONFIG_METADATA_KEY, SERIALIZATION_METADATA_KEY, log_and_register
from afm_ray.registry.tracking import ARCHITECTURE_TAG, create_config_run


def reregister_model(reference: str, tracking_uri: str | None = None, trust_pickle: bool = False,
                     allowed_modules: Collection[str] = ()) -> tuple[str, str]:
    """Register the model of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` again in the safe
    format, as a new version of NAME; returns (new version, MLflow run id).

    For models an older afm-ray registered pickled (loading them needs ``trust_pickle``). The new
    version keeps the old one's metadata (config, provenance) and records where it came from
    (``afm_ray_reregistered_from``); every alias that pointed at the old version moves to it.
    """
    from mlflow import MlflowClient

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
    metadata = {key: value for key, value in version_metadata(client, name, old_version, tracking_uri).items()
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
