"""The thesis' three fully convolutional networks (section 3.3), in PyTorch, and the model registry.

* :class:`DSH` — CO stack ``(B, 1, X, Y, Z)`` → Atomic Disks, vdW Spheres, Height Map ``(B, X, Y)``.
* :class:`ES` — CO + Xe stacks ``(B, 2, X, Y, Z)`` → Electrostatic Map, Height Map ``(B, X, Y)``.
* :class:`XYZ` — CO stack → class probabilities ``(B, n_classes, X/8, Y/8)`` and offsets
  ``(B, 3, X/8, Y/8)`` in Å.

Each network's module registers its :class:`~afm_ray.models.spec.ModelSpec` (tips, outputs, targets,
loss, objective, figures) on import; :func:`get_model_spec` looks one up by name.

At the thesis input (128 × 128 px, 10 slices) with default options the parameter counts are
exactly the thesis' 122,811 / 169,970 / 560,941 (each spec's ``thesis_parameters``).
"""

from __future__ import annotations

from afm_ray.models.blocks import Decoder2D, Encoder3D, PaddedConv, count_parameters, pad_same
from afm_ray.models.dsh import DSH, DSH_OUTPUTS
from afm_ray.models.es import ES, ES_OUTPUTS, ES_TIPS
from afm_ray.models.spec import (ModelSpec, Objective, OutputSpec, get_model_spec, list_model_specs, register_model,
                                 validated_model_spec, weighted_mse_map_model)
from afm_ray.models.xyz import DEFAULT_ELEMENT_CLASSES, XYZ, class_names, element_class_index

__all__ = [
    "DEFAULT_ELEMENT_CLASSES", "DSH", "DSH_OUTPUTS", "Decoder2D", "ES", "ES_OUTPUTS", "ES_TIPS", "Encoder3D",
    "ModelSpec", "Objective", "OutputSpec", "PaddedConv", "XYZ", "class_names",
    "count_parameters", "element_class_index", "get_model_spec", "list_model_specs", "pad_same", "register_model",
    "validated_model_spec", "weighted_mse_map_model",
]
