"""Logging a trained network to MLflow and registering it under ``NAME@ALIAS``.

Used by ``afm-ray train`` for the model it trained and by ``afm-ray models import-asdafm`` for
published weights, so every registered afm-ray model carries the same things: the network wrapped
in :class:`~afm_ray.models.packed.PackedOutputs`, a signature inferred from a real input example,
its training configuration (``afm_ray_config`` metadata: what input it expects, how the data it
learned from was made), how to read its packed output (``afm_ray_packed_outputs``), any further
metadata (provenance, preprocessing), and the architecture tag.

Format: MLflow's ``pt2`` (``torch.export``), not pickle. The model is a graph of ATen operations and
its weights as raw tensor bytes, so loading it runs no code from the artifact (the registry checks
the archive is pickle-free before ``torch.export.load``; :mod:`afm_ray.registry.loading`). Chosen
over state dict + code by measurement: DSH (plain and with skip connections, zero and replicate
padding: the published ASD-AFM model), ES and xyz all export, and the exported graph gives the
eager network's outputs exactly (max abs difference 0.0 at batch 1 and 5, contiguous and
channels-last input, CPU), loads in 0.15–0.5 s and is 0.8–3.7 MB. The batch axis stays dynamic
because the export example has two samples (``torch.export`` fixes a size-1 axis); the other axes
are the model's input shape, as the signature says. A loaded graph does not need afm-ray's code,
so ``mlflow models serve`` needs only torch. Cost: exporting adds a few seconds to registration.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from afm_ray.models.packed import PACKED_SPEC_METADATA_KEY, PackedOutputs
from afm_ray.recipe import TrainConfig
from afm_ray.registry.tracking import ARCHITECTURE_TAG

CONFIG_METADATA_KEY = "afm_ray_config"
"""Key of the training config in the logged model's MLflow metadata."""
SERIALIZATION_METADATA_KEY = "afm_ray_serialization"
"""Key of the model file's format in the logged model's MLflow metadata (``pt2``); a model
without it was registered by an older afm-ray, pickled."""
SERIALIZATION_FORMAT = "pt2"


def export_example(example_input: np.ndarray) -> np.ndarray:
    """Two samples of ``example_input`` (B, C, nx, ny, K), the first repeated when B is 1, so the
    export keeps the batch axis dynamic."""
    if example_input.ndim != 5 or len(example_input) == 0:
        raise ValueError(f"the input example must be (B ≥ 1, C, nx, ny, K), got shape {example_input.shape}")
    return np.ascontiguousarray(np.concatenate([example_input[:2], example_input[:1]])[:2], dtype=np.float32)


def log_and_register(network: torch.nn.Module, config: TrainConfig, example_input: np.ndarray, tracking_uri: str,
                     run_id: str, extra_metadata: dict | None = None, set_alias: bool = True) -> str:
    """Log ``network`` in MLflow run ``run_id``, register it as ``config.registered_model_name`` and point
    ``config.mlflow.alias`` at the new version (unless ``set_alias`` is False); returns the version.

    ``example_input``: (B ≥ 1, C, nx, ny, K) float32, the input example the signature is inferred
    from and the model exported with (two samples of it are logged). ``network`` is left as it is:
    a CPU copy in eval mode is exported.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    network = copy.deepcopy(network).cpu()
    packed = PackedOutputs(network, config.model.spec.output_names, config.model.name).eval()
    example = export_example(example_input)
    with torch.no_grad():
        signature = infer_signature(example, packed(torch.from_numpy(example)).numpy())  # batch axis -1: dynamic
    name = config.registered_model_name
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(packed, name="model", input_example=example, signature=signature,
                                        registered_model_name=name, serialization_format=SERIALIZATION_FORMAT,
                                        metadata={CONFIG_METADATA_KEY: config.model_dump(mode="json"),
                                                  PACKED_SPEC_METADATA_KEY: packed.spec.to_json(),
                                                  SERIALIZATION_METADATA_KEY: SERIALIZATION_FORMAT,
                                                  **(extra_metadata or {})},
                                        # the exported graph runs on torch alone (afm-ray reads its metadata)
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    client = MlflowClient(tracking_uri)
    version = str(info.registered_model_version)
    client.set_registered_model_tag(name, ARCHITECTURE_TAG, config.model.name)
    if set_alias:
        client.set_registered_model_alias(name, config.mlflow.alias, version)
    return version
