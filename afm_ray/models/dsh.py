"""The DSH network: Atomic Disks, vdW Spheres and Height Map from one CO-tip AFM stack
(thesis 3.3, Table 2; 122,811 parameters at the thesis settings)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from afm_ray.models.blocks import Decoder2D, Encoder3D, check_n_slices, check_padding_mode, check_stack, conv_leaky
from afm_ray.models.spec import MapWeightsLossSettings, OutputSpec, register_model, weighted_mse_map_model

DSH_OUTPUTS = ("atomic_disks", "vdw_spheres", "height_map")
LATENT_CHANNELS = 64


class DshLossSettings(MapWeightsLossSettings):
    """The weighted sum of per-map MSEs (thesis 3.4)."""

    dsh_weights: tuple[float, float, float] = Field(
        (20.0, 0.3, 0.2), description="MSE weights of Atomic Disks, vdW Spheres and Height Map (dimensionless; "
                                      "thesis 20, 0.3, 0.2)")


class DSH(nn.Module):
    """Encoder → two 64-filter 2D convs → three independent decoders.

    Args:
        n_slices: z-slices of the input stack (thesis 10); the encoder folds ``n_slices // 4``
            of them into ``16 · (n_slices // 4)`` channels.
        skip_connections: beyond the thesis (section 5): feed each decoder the encoder's
            activations at matching resolution (z folded, 1 × 1 conv to 16 channels).
            Off by default so the layer list is exactly Table 2.
        padding_mode: ``"reflect"`` (thesis text) or ``"replicate"`` (the published ASD-AFM
            Keras code, whose 1-pixel "reflective" padding repeats the edge pixel).

    Forward:
        x: CO-tip Δf stack ``(B, 1, X, Y, n_slices)`` (or ``(B, X, Y, n_slices)``), X and Y
            divisible by 8, z from far to close, each slice normalised (zero mean, unit std).

    Returns:
        ``(atomic_disks, vdw_spheres, height_map)``, each ``(B, X, Y)`` in Å over the
        descriptor's cut-off (Atomic Disks unbounded, the other two ≥ 0 through ReLU).
    """

    output_names = DSH_OUTPUTS

    def __init__(self, n_slices: int = 10, skip_connections: bool = False, padding_mode: str = "reflect"):
        super().__init__()
        self.n_slices = check_n_slices(n_slices)
        self.skip_connections = bool(skip_connections)
        check_padding_mode(padding_mode)
        self.encoder = Encoder3D(n_slices, padding_mode)
        self.latent = nn.Sequential(conv_leaky(2, self.encoder.out_channels, LATENT_CHANNELS, 3, padding_mode),
                                    conv_leaky(2, LATENT_CHANNELS, LATENT_CHANNELS, 3, padding_mode))
        skip_channels = self.encoder.skip_channels if self.skip_connections else None
        activations = {"atomic_disks": None, "vdw_spheres": "relu", "height_map": "relu"}
        self.decoders = nn.ModuleDict({name: Decoder2D(LATENT_CHANNELS, activations[name], skip_channels, padding_mode)
                                       for name in DSH_OUTPUTS})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = check_stack(x, 1, self.n_slices)
        if self.skip_connections:
            latent, skips = self.encoder(x, return_skips=True)
        else:
            latent, skips = self.encoder(x), None
        latent = self.latent(latent)
        return tuple(self.decoders[name](latent, skips) for name in DSH_OUTPUTS)


DSH_SPEC = register_model(weighted_mse_map_model(
    name="dsh",
    description="Disks, Spheres, Height from a CO-tip stack",
    tips=("CO",),
    outputs=(OutputSpec("atomic_disks", None, "dimensionless"), OutputSpec("vdw_spheres", "relu", "Å"),
             OutputSpec("height_map", "relu", "Å")),
    network=DSH,
    loss_settings=DshLossSettings,
    weights_field="dsh_weights",
    published_losses={"dataset1": {"train": 1.95e-3, "val": 1.90e-3, "test": 1.92e-3},
                      "dataset2": {"train": 2.32e-3, "val": 2.51e-3, "test": 2.59e-3}},  # thesis Table 6
    thesis_parameters=122_811,
    module=__name__,
))
