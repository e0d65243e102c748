"""A plugin model in one file, as another package would write it: its network, its loss settings, its spec
and a descriptor no afm-ray model has (the molecule's footprint), each registered here.

Imported by name (``model.module: tests.toy_model``) in every process that validates a config naming it: the
test driver, the Ray Train workers and the simulation actors (which then make its new target).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from afm_ray.descriptors import vdw_spheres
from afm_ray.descriptors.registry import TargetBatch, register_descriptor
from afm_ray.models.losses import WeightedMSELoss
from afm_ray.models import LossSettings, ModelSpec, Objective, OutputSpec, register_model

TOY_OUTPUTS = ("vdw_spheres", "toy_footprint")


@register_descriptor("toy_footprint")
def toy_footprint(batch: TargetBatch) -> np.ndarray:
    """(B, nx, ny) float32: 1 where a vdW sphere shows within the vdW Spheres' cut-off below the top, else 0."""
    return (vdw_spheres(batch.molecules, batch.context.window) > 0).astype(np.float32)


class ToyLossSettings(LossSettings):
    """The toy's loss: MSE of the vdW Spheres plus a weighted MSE of the footprint."""

    footprint_weight: float = Field(0.5, ge=0, description="weight of the footprint MSE beside the vdW Spheres' "
                                                           "(dimensionless)")


class ToyNetwork(nn.Module):
    """``(B, 1, X, Y, K)`` CO stack → vdW Spheres (Å, ≥ 0) and footprint (≥ 0), each ``(B, X, Y)``: one 3 × 3
    conv over the K slices."""

    def __init__(self, n_slices: int):
        super().__init__()
        self.conv = nn.Conv2d(n_slices, len(TOY_OUTPUTS), 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slices_as_channels = x[:, 0].permute(0, 3, 1, 2)  # (B, K, X, Y)
        maps = torch.relu(self.conv(slices_as_channels))
        return maps[:, 0], maps[:, 1]


TOY_SPEC = register_model(ModelSpec(
    name="toy",
    description="test model: vdW Spheres and footprint from one conv",
    tips=("CO",),
    outputs=(OutputSpec("vdw_spheres", "relu", "Å"), OutputSpec("toy_footprint", "relu", "dimensionless")),
    targets=TOY_OUTPUTS,
    build_network=lambda model, input_slices: ToyNetwork(input_slices),
    loss_settings=ToyLossSettings,
    build_loss=lambda loss: WeightedMSELoss((1.0, loss.footprint_weight), TOY_OUTPUTS),
    objective=Objective("val_mse_mean", "min"),
    figure_maps=("vdw_spheres",),
    rotations_per_molecule=2,
    module=__name__,
))
