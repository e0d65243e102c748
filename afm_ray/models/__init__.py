"""The thesis' three fully convolutional networks (section 3.3), in PyTorch, and the model registry.

* :class:`DSH` — CO stack ``(B, 1, X, Y, Z)`` → Atomic Disks, vdW Spheres, Height Map ``(B, X, Y)``.
* :class:`ES` — CO + Xe stacks ``(B, 2, X, Y, Z)`` → Electrostatic Map, Height Map ``(B, X, Y)``.
* :class:`XYZ` — CO stack → class probabilities ``(B, n_classes, X/8, Y/8)`` and offsets
  ``(B, 3, X/8, Y/8)`` in Å.

Each network's module defines its loss settings (a :class:`LossSettings` subclass) and registers its
:class:`~afm_ray.models.spec.ModelSpec` (tips, outputs, targets, loss, objective, figures) on import;
:func:`get_model_spec` looks one up by name. :class:`ModelSettings` is a config's ``model:`` section and builds
its network (:meth:`ModelSettings.build_network`).

At the thesis input (128 × 128 px, 10 slices) with default options the parameter counts are
exactly the thesis' 122,811 / 169,970 / 560,941 (each spec's ``thesis_parameters``).
"""

from __future__ import annotations

from afm_ray.models.blocks import Decoder2D, Encoder3D, PaddedConv, count_parameters, pad_same
from afm_ray.models.dsh import DSH, DSH_OUTPUTS, DshLossSettings
from afm_ray.models.es import ES, ES_OUTPUTS, ES_TIPS, EsLossSettings
from afm_ray.models.spec import (LossSettings, MapWeightsLossSettings, ModelSpec, Objective, OutputSpec, get_model_spec,
                                 list_model_specs, register_model, validated_model_spec, weighted_mse_map_model)
from afm_ray.models.xyz import XYZ, XyzLossSettings
from afm_ray.models.settings import ModelSettings  # noqa: E402 (last: its help lists the models registered above)

__all__ = [
    "DSH", "DSH_OUTPUTS", "Decoder2D", "DshLossSettings", "ES", "ES_OUTPUTS", "ES_TIPS", "Encoder3D", "EsLossSettings",
    "LossSettings", "MapWeightsLossSettings", "ModelSettings", "ModelSpec", "Objective", "OutputSpec", "PaddedConv",
    "XYZ", "XyzLossSettings", "count_parameters", "get_model_spec", "list_model_specs", "pad_same", "register_model",
    "validated_model_spec", "weighted_mse_map_model",
]
