"""One-tensor model outputs for the MLflow registry.

MLflow's PyTorch flavour (and ``mlflow models serve``) expects a model to return one tensor; the
networks return a tuple of maps. :class:`PackedOutputs` wraps a network and concatenates its
outputs along the channel axis; :meth:`PackedOutputs.unpack` splits them again by name.
"""

from __future__ import annotations

import torch
from torch import nn


class PackedOutputs(nn.Module):
    """``forward(x) -> (B, sum of channels, X', Y')``: the network's outputs concatenated.

    Args:
        network: a DSH, ES or XYZ network.
        output_names: one name per output, in forward order (e.g. ``atomic_disks, vdw_spheres,
            height_map``; ``xyz_classes, xyz_offsets``).
        model_name: ``dsh``, ``es`` or ``xyz`` — how to read the packed tensor.
    """

    def __init__(self, network: nn.Module, output_names: tuple[str, ...], model_name: str):
        super().__init__()
        self.network = network
        self.output_names = tuple(output_names)
        self.model_name = model_name
        self.output_channels = ((network.n_classes, 3) if model_name == "xyz" else (1,) * len(self.output_names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.network(x)
        return torch.cat([output if output.dim() == 4 else output.unsqueeze(1) for output in outputs], dim=1)

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: output}`` with the shapes the network returns ((B, X, Y) maps; xyz (B, C, gx, gy))."""
        pieces = torch.split(packed, list(self.output_channels), dim=1)
        return {name: piece.squeeze(1) if channels == 1 and self.model_name != "xyz" else piece
                for name, piece, channels in zip(self.output_names, pieces, self.output_channels)}
