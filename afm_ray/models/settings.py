"""The ``model:`` section of a training config: which registered network, with which options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from afm_ray.config import StrictModel
from afm_ray.models.spec import ModelSpec, get_model_spec, list_model_specs, validated_model_spec


class ModelSettings(StrictModel):
    """Which network, with the thesis' section-5 options (off by default: exact thesis models)."""

    name: str = Field("dsh", description="a registered model: " + "; ".join(
        f"{spec.name} ({spec.description})" for spec in list_model_specs()))
    module: str | None = Field(None, description="a model from another package: the module that registers it "
                                                 "(imported first, on every node)")
    skip_connections: bool = Field(False, description="1×1-conv skips from the 3D encoder into the 2D decoders")
    padding: Literal["reflect", "replicate"] = Field(
        "reflect", description="convolution padding: reflect (thesis text) or replicate (the published ASD-AFM Keras "
                               "code, whose 1-pixel 'reflective' padding repeats the edge pixel)")
    element_classes: list[list[str]] | None = Field(
        None, description="xyz only: atom classes as element-symbol groups, e.g. [[H], [C], [N, O, F]], plus one "
                          "'other' class for every element in no group; None = one 'atom' class as in the thesis")

    @model_validator(mode="after")
    def _registered(self) -> "ModelSettings":
        spec = validated_model_spec(self.name, self.module)
        if self.element_classes is not None and not spec.uses_element_classes:
            raise ValueError(f"element_classes applies to "
                             f"{' and '.join(s.name for s in list_model_specs() if s.uses_element_classes)} only")
        return self

    @property
    def spec(self) -> ModelSpec:
        """The registered :class:`~afm_ray.models.ModelSpec` of :attr:`name`."""
        return get_model_spec(self.name, self.module)

    def build_network(self, input_slices: int) -> nn.Module:
        """The untrained network, reading ``(B, len(spec.tips), X, Y, input_slices)`` stacks."""
        return self.spec.build_network(self, input_slices)
