"""The xyz network: per-box atom classes and position offsets on a coarse grid
(thesis 3.3, Table 4; 560,941 parameters at the thesis settings).

Grid layout shared with the xyz descriptor (``afm_ray.descriptors``) and
:mod:`afm_ray.models.metrics`: the net down-samples xy by 8, so a 128 × 128 px scan of 16 × 16 Å
gives a 16 × 16 grid of 1 Å boxes. Box ``(i, j)`` is ``[..., i, j]``: ``i`` along the scan's
x axis (input axis 2), ``j`` along y (input axis 3).

* class tensor ``(B, n_classes, X/8, Y/8)``: channel 0 = background, channels ``1..`` the
  atom classes (one "atom" class in the thesis, or the element groups of ``element_classes`` and
  "other": the layout of :mod:`afm_ray.descriptors.xyz_classes`);
* offsets ``(B, 3, X/8, Y/8)`` in Å: x and y relative to the box centre, z relative to the
  top nucleus of the molecule (z ≤ 0; atoms below ``z_min = −0.7 Å`` are not in the target).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import nn

from afm_ray.descriptors.xyz_classes import class_names, check_element_classes
from afm_ray.descriptors.xyz_codec import DEFAULT_BOX_SIZE, XYZ_Z_CUT
from afm_ray.models.losses import FocalPositionLoss
from afm_ray.models.blocks import Encoder3D, PaddedConv, check_n_slices, check_padding_mode, check_stack, conv_leaky
from afm_ray.models.spec import LossSettings, ModelSpec, Objective, OutputSpec, register_model

TRUNK_CHANNELS = 128
HEAD_CHANNELS = 64
N_OFFSETS = 3


class XyzLossSettings(LossSettings):
    """The focal-position loss J = FL + βPL · PL (thesis Eqs. 26–30; defaults: the published values)."""

    gamma: float = Field(1.25, ge=0, description="focal-loss exponent γ (dimensionless; thesis 1.25, picked from "
                                                 "1.0–2.0)")
    alpha_n: float = Field(0.30, gt=0, lt=1, description="background class weight αn (dimensionless; atoms weigh "
                                                         "1 − αn)")
    beta_pl: float = Field(0.15, ge=0, description="position-loss weight βPL (dimensionless)")
    z_min_angstrom: float = Field(XYZ_Z_CUT, lt=0, description="depth cut-off z_min of the position-loss discount, "
                                                               "Å below the top nucleus")

    def describe(self) -> str:
        return f"γ {self.gamma:g}, αn {self.alpha_n:g}, βPL {self.beta_pl:g}"


class XYZ(nn.Module):
    """Encoder → three 128-filter convs → a class head (64, 64, n_classes + softmax) and an
    offset head (64, 64, 3, no activation).

    Args:
        n_slices: z-slices of the input stack (thesis 10).
        element_classes: beyond the thesis: element-symbol groups (e.g.
            :data:`~afm_ray.descriptors.xyz_classes.DEFAULT_ELEMENT_CLASSES`) so the class head predicts
            background, one class per group and "other"; ``None`` (default) is the thesis' background / atom
            (the layout of :mod:`afm_ray.descriptors.xyz_classes`).
        padding_mode: ``"reflect"`` (thesis text) or ``"replicate"`` (the published ASD-AFM
            Keras code, whose 1-pixel "reflective" padding repeats the edge pixel).

    Forward:
        x: CO-tip Δf stack ``(B, 1, X, Y, n_slices)`` (or ``(B, X, Y, n_slices)``), X and Y
            divisible by 8.

    Returns:
        ``(class_probs, offsets)``: ``(B, n_classes, X/8, Y/8)`` softmax probabilities
        (channel 0 background) and ``(B, 3, X/8, Y/8)`` offsets in Å (see the module doc).
        :meth:`forward_logits` returns the pre-softmax scores instead, for a numerically
        stable loss (``FocalPositionLoss(from_logits=True)``).
    """

    def __init__(self, n_slices: int = 10, element_classes: Sequence[Sequence[str]] | None = None,
                 padding_mode: str = "reflect"):
        super().__init__()
        self.n_slices = check_n_slices(n_slices)
        self.element_classes = check_element_classes(element_classes)
        self.class_names = class_names(self.element_classes)
        self.n_classes = len(self.class_names)
        check_padding_mode(padding_mode)
        self.encoder = Encoder3D(n_slices, padding_mode)
        self.trunk = nn.Sequential(conv_leaky(2, self.encoder.out_channels, TRUNK_CHANNELS, 3, padding_mode),
                                   conv_leaky(2, TRUNK_CHANNELS, TRUNK_CHANNELS, 3, padding_mode),
                                   conv_leaky(2, TRUNK_CHANNELS, TRUNK_CHANNELS, 3, padding_mode))
        self.class_head = self._head(self.n_classes, padding_mode)
        self.offset_head = self._head(N_OFFSETS, padding_mode)

    @staticmethod
    def _head(out_channels: int, padding_mode: str) -> nn.Sequential:
        return nn.Sequential(conv_leaky(2, TRUNK_CHANNELS, HEAD_CHANNELS, 3, padding_mode),
                             conv_leaky(2, HEAD_CHANNELS, HEAD_CHANNELS, 3, padding_mode),
                             PaddedConv(2, HEAD_CHANNELS, out_channels, 3, padding_mode))

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class_logits (B, n_classes, X/8, Y/8), offsets (B, 3, X/8, Y/8))``."""
        x = check_stack(x, 1, self.n_slices)
        features = self.trunk(self.encoder(x))
        return self.class_head(features), self.offset_head(features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, offsets = self.forward_logits(x)
        return torch.softmax(logits, dim=1), offsets


def build_xyz(model, input_slices: int) -> XYZ:
    return XYZ(n_slices=input_slices, element_classes=model.element_classes, padding_mode=model.padding)


def xyz_loss(loss: XyzLossSettings) -> FocalPositionLoss:
    return FocalPositionLoss(loss.gamma, loss.alpha_n, loss.beta_pl, loss.z_min_angstrom)


def check_xyz_scan(scan_pixels: tuple[int, int], scan_size_angstrom: tuple[float, float]) -> None:
    """The network's output cell (8 px) must be the descriptor's box."""
    if any(abs(count / 8 - extent / DEFAULT_BOX_SIZE) > 1e-6 for count, extent in zip(scan_pixels, scan_size_angstrom)):
        raise ValueError(f"the xyz network predicts one {DEFAULT_BOX_SIZE:g} Å box per 8 pixels, so "
                         f"sim.scan_pixels {list(scan_pixels)} must be 8 × sim.scan_size_angstrom "
                         f"{list(scan_size_angstrom)} (thesis: 128 px over 16 Å)")


XYZ_SPEC = register_model(ModelSpec(
    name="xyz",
    description="atom classes and positions on a 1 Å grid from a CO-tip stack",
    tips=("CO",),
    outputs=(OutputSpec("xyz_classes", "softmax", "probability", shape="grid", channels=None),
             OutputSpec("xyz_offsets", None, "Å", shape="grid", channels=N_OFFSETS)),
    targets=("xyz_classes", "xyz_offsets"),
    build_network=build_xyz,
    build_loss=xyz_loss,
    loss_settings=XyzLossSettings,
    objective=Objective("val_atom_f1", "max"),
    metrics="atoms",
    figure_maps=("atoms",),
    rotations_per_molecule=30,
    uses_element_classes=True,
    check_scan=check_xyz_scan,
    published_losses={"dataset1": {"train": 4.43e-3, "val": 4.72e-3, "test": 4.72e-3},
                      "dataset2": {"train": 5.87e-3, "val": 6.10e-3, "test": 6.58e-3}},  # thesis Table 6
    thesis_parameters=560_941,
    module=__name__,
))
