"""The ES network: Electrostatic Map and Height Map from a CO-tip and a Xe-tip AFM stack
(thesis 3.3, Table 3; 169,970 parameters at the thesis settings)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from afm_ray.models.blocks import Decoder2D, Encoder3D, check_n_slices, check_padding_mode, check_stack, conv_leaky
from afm_ray.models.spec import MapWeightsLossSettings, OutputSpec, register_model, weighted_mse_map_model

ES_OUTPUTS = ("es_map", "height_map")
ES_TIPS = ("CO", "Xe")
BRANCH_CHANNELS = 64
LATENT_CHANNELS = 64


class EsLossSettings(MapWeightsLossSettings):
    """The weighted sum of per-map MSEs (thesis 3.4)."""

    es_weights: tuple[float, float] = Field(
        (1.0, 0.1), description="MSE weights of the ES Map and Height Map (dimensionless; thesis 1.0, 0.1)")


class ES(nn.Module):
    """Two encoder branches (CO, Xe) each + a 64-filter conv → concatenate (128) → 1 × 1 conv
    to 64 → two 64-filter convs → two decoders.

    Args:
        n_slices: z-slices per tip stack (thesis 10).
        skip_connections: beyond the thesis: each decoder also receives both branches' encoder
            activations at matching resolution (z folded, 1 × 1 conv to 16 channels).
        padding_mode: ``"reflect"`` (thesis text) or ``"replicate"`` (the published ASD-AFM
            Keras code, whose 1-pixel "reflective" padding repeats the edge pixel).

    Forward:
        x: ``(B, 2, X, Y, n_slices)``, channel 0 the CO-tip stack and channel 1 the Xe-tip
            stack of the same scan, X and Y divisible by 8, z from far to close.

    Returns:
        ``(es_map, height_map)``, each ``(B, X, Y)``: the electrostatic potential on the
        Height-Map surface (the descriptor's units, any sign: no activation) and the Height Map (Å, ≥ 0 via ReLU).
    """

    output_names = ES_OUTPUTS
    tip_names = ES_TIPS

    def __init__(self, n_slices: int = 10, skip_connections: bool = False, padding_mode: str = "reflect"):
        super().__init__()
        self.n_slices = check_n_slices(n_slices)
        self.skip_connections = bool(skip_connections)
        check_padding_mode(padding_mode)
        self.encoders = nn.ModuleList(Encoder3D(n_slices, padding_mode) for _ in ES_TIPS)
        encoder_channels = self.encoders[0].out_channels
        self.branch_convs = nn.ModuleList(conv_leaky(2, encoder_channels, BRANCH_CHANNELS, 3, padding_mode)
                                          for _ in ES_TIPS)
        # The 1×1 conv cuts 128 → 64 channels before the 3×3 convs to save their parameters.
        self.latent = nn.Sequential(
            conv_leaky(2, BRANCH_CHANNELS * len(ES_TIPS), LATENT_CHANNELS, 1, padding_mode),
            conv_leaky(2, LATENT_CHANNELS, LATENT_CHANNELS, 3, padding_mode),
            conv_leaky(2, LATENT_CHANNELS, LATENT_CHANNELS, 3, padding_mode))
        skip_channels = None
        if self.skip_connections:
            skip_channels = tuple(len(ES_TIPS) * c for c in self.encoders[0].skip_channels)
        activations = {"es_map": None, "height_map": "relu"}
        self.decoders = nn.ModuleDict({name: Decoder2D(LATENT_CHANNELS, activations[name], skip_channels, padding_mode)
                                       for name in ES_OUTPUTS})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = check_stack(x, len(ES_TIPS), self.n_slices)
        branch_features = []
        branch_skips = []
        for tip_index, (encoder, branch_conv) in enumerate(zip(self.encoders, self.branch_convs)):
            tip_stack = x[:, tip_index:tip_index + 1]
            if self.skip_connections:
                latent, skips = encoder(tip_stack, return_skips=True)
                branch_skips.append(skips)
            else:
                latent = encoder(tip_stack)
            branch_features.append(branch_conv(latent))
        latent = self.latent(torch.cat(branch_features, dim=1))
        skips = None
        if self.skip_connections:
            skips = [torch.cat(per_stage, dim=1) for per_stage in zip(*branch_skips)]
        return tuple(self.decoders[name](latent, skips) for name in ES_OUTPUTS)


ES_SPEC = register_model(weighted_mse_map_model(
    name="es",
    description="Electrostatic Map and Height from CO- and Xe-tip stacks",
    tips=ES_TIPS,
    outputs=(OutputSpec("es_map", None, "V"), OutputSpec("height_map", "relu", "Å")),
    network=ES,
    loss_settings=EsLossSettings,
    weights_field="es_weights",
    published_losses={"dataset1": {"train": 3.41e-4, "val": 3.40e-4, "test": 3.40e-4},
                      "dataset2": {"train": 4.15e-4, "val": 4.13e-4, "test": 4.26e-4}},  # thesis Table 6
    thesis_parameters=169_970,
    module=__name__,
))
