"""A toy model registered from outside afm_ray, as another package would: one CO tip → vdW Spheres.

Imported by name (``model.module: tests.toy_model``) in every process that validates a config
naming it — the test driver, the Ray Train workers and the simulation actors.
"""

from __future__ import annotations

import torch
from torch import nn

from afm_ray.models.losses import WeightedMSELoss
from afm_ray.models import ModelSpec, Objective, OutputSpec, register_model

TOY_LOSS_WEIGHTS = (1.0,)


class ToyNetwork(nn.Module):
    """``(B, 1, X, Y, K)`` CO stack → ``(B, X, Y)`` vdW Spheres (Å, ≥ 0): one 3 × 3 conv over the K slices."""

    def __init__(self, n_slices: int):
        super().__init__()
        self.conv = nn.Conv2d(n_slices, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        slices_as_channels = x[:, 0].permute(0, 3, 1, 2)  # (B, K, X, Y)
        return (torch.relu(self.conv(slices_as_channels)).squeeze(1),)


def describe_toy_loss(config) -> str:
    return "MSE"


TOY_SPEC = register_model(ModelSpec(
    name="toy",
    description="test model: vdW Spheres from one conv",
    tips=("CO",),
    outputs=(OutputSpec("vdw_spheres", "relu", "Å"),),
    targets=("vdw_spheres",),
    build_network=lambda config: ToyNetwork(config.input_slices),
    build_loss=lambda loss: WeightedMSELoss(TOY_LOSS_WEIGHTS, ("vdw_spheres",)),
    describe_loss=describe_toy_loss,
    objective=Objective("val_loss", "min"),
    figure_maps=("vdw_spheres",),
    rotations_per_molecule=2,
    module=__name__,
))
