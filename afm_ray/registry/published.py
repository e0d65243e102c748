"""``afm-ray models import-asdafm``: the published ASD-AFM DSH weights as a registered afm-ray model.

The weights (:mod:`afm_ray.models.asdafm`) are logged like a model ``afm-ray train`` produced: its
training config is the data preset it expects (default the shipped preset ``published_asdafm``,
``configs/published_asdafm.yaml``: the published generator's scan, slices, tilt and ppafm descriptor
conventions), with provenance
(source, licence, file digest) and preprocessing in the model's metadata. So ``afm-ray predict``,
``match``, ``evaluate`` and ``models show`` use it as any other registered model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from afm_ray.errors import InputError
from afm_ray.recipe import TrainConfig, with_absolute_paths

PREPROCESSING = ("input (B, 1, 128, 128, 10): CO-tip Δf, z far → close 0.1 Å apart, the whole simulated stack "
                 "(no slice choice); each slice normalised to mean 0, std 1 (afm-ray predict does this)")


def import_asdafm(h5_path: str | Path, name: str, alias: str, config: TrainConfig, preset: str,
                  tracking_uri: str | None = None) -> tuple[str, str]:
    """Register the weights in ``h5_path`` as ``models:/NAME@ALIAS``; returns (version, MLflow run id).

    ``config`` is the data preset the model expects (recorded as its training config, ``preset``
    names its file). Raises :class:`InputError` for a config the weights cannot serve or a bad file.
    """
    from mlflow import MlflowClient

    from afm_ray.models.asdafm import ASDAFM_SOURCE, N_SLICES, load_asdafm_dsh
    from afm_ray.registry.registration import log_and_register
    from afm_ray.registry.tracking import ARCHITECTURE_TAG, create_config_run, preflight

    h5_path = Path(h5_path)
    wanted = {"model.name": (config.model.name, "dsh"), "model.padding": (config.model.padding, "replicate"),
              "input slices": (config.input_slices, N_SLICES), "model.skip_connections": (config.model.skip_connections, False)}
    for field, (given, needed) in wanted.items():
        if given != needed:
            raise InputError(preset, f"{field} is {given!r}, but the published ASD-AFM weights need {needed!r}")
    network = load_asdafm_dsh(h5_path)
    mlflow_settings = config.mlflow.model_copy(update={"registered_model_name": name, "alias": alias,
                                                       "tracking_uri": tracking_uri or config.mlflow.tracking_uri})
    config = with_absolute_paths(config.model_copy(update={"mlflow": mlflow_settings}))
    tracking_uri = config.mlflow.tracking_uri
    preflight(tracking_uri, name, "dsh")

    digest = hashlib.sha256(h5_path.read_bytes()).hexdigest()
    provenance = {**ASDAFM_SOURCE, "imported_file": h5_path.name, "sha256": digest}
    client = MlflowClient(tracking_uri)
    run_id = create_config_run(client, config, f"import {h5_path.name}",
                               {ARCHITECTURE_TAG: "dsh", "afm_ray.imported_from": provenance["source"],
                                "afm_ray.licence": provenance["licence"], "afm_ray.sha256": digest,
                                "afm_ray.data_preset": preset})
    for beside in ("LICENSE", "SOURCE.md"):  # the licence travels with the weights
        if (h5_path.parent / beside).is_file():
            client.log_artifact(run_id, str(h5_path.parent / beside), "provenance")
    example = np.zeros((1, 1, *config.sim.scan_pixels, N_SLICES), np.float32)
    version = log_and_register(network, config, example, tracking_uri, run_id,
                               {"afm_ray_provenance": provenance, "afm_ray_preprocessing": PREPROCESSING,
                                "afm_ray_data_preset": preset})
    client.set_terminated(run_id, status="FINISHED")
    return version, run_id
