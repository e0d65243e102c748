"""Logging a trained network to MLflow and registering it under ``NAME@ALIAS``.

Used by ``afm-ray train`` for the model it trained and by ``afm-ray models import-asdafm`` for
published weights, so every registered afm-ray model carries the same things: the network wrapped
in :class:`~afm_ray.models.packed.PackedOutputs`, a signature inferred from a real input example,
its training configuration (``afm_ray_config`` metadata: what input it expects, how the data it
learned from was made), any further metadata (provenance, preprocessing), and the architecture tag.
"""

from __future__ import annotations

import numpy as np
import torch

from afm_ray.batches import MODEL_TARGETS
from afm_ray.models.packed import PackedOutputs
from afm_ray.train.config import TrainConfig
from afm_ray.train.tracking import ARCHITECTURE_TAG

CONFIG_METADATA_KEY = "afm_ray_config"
"""Key of the training config in the logged model's MLflow metadata."""


def log_and_register(network: torch.nn.Module, config: TrainConfig, example_input: np.ndarray, tracking_uri: str,
                     run_id: str, extra_metadata: dict | None = None) -> str:
    """Log ``network`` in MLflow run ``run_id``, register it as ``config.registered_model_name`` and point
    ``config.mlflow.alias`` at the new version; returns the version.

    ``example_input``: (1, C, nx, ny, K) float32, the input example the signature is inferred from.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    packed = PackedOutputs(network, MODEL_TARGETS[config.model.name], config.model.name).eval()
    with torch.no_grad():
        signature = infer_signature(example_input, packed(torch.from_numpy(example_input)).numpy())
    name = config.registered_model_name
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        # pickle keeps the nn.Module (afm-ray must be installed where it is loaded); pt2 export
        # would fix the batch size of the input example.
        info = mlflow.pytorch.log_model(packed, name="model", input_example=example_input, signature=signature,
                                        registered_model_name=name, serialization_format="pickle",
                                        metadata={CONFIG_METADATA_KEY: config.model_dump(mode="json"),
                                                  **(extra_metadata or {})},
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "afm-ray"])
    client = MlflowClient(tracking_uri)
    version = str(info.registered_model_version)
    client.set_registered_model_tag(name, ARCHITECTURE_TAG, config.model.name)
    client.set_registered_model_alias(name, config.mlflow.alias, version)
    return version
