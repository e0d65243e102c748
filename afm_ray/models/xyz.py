"""The xyz network: per-box atom classes and position offsets on a coarse grid
(thesis 3.3, Table 4; 560,941 parameters at the thesis settings).

Grid layout shared with the xyz descriptor (``afm_ray.descriptors``) and
:mod:`afm_ray.models.metrics`: the net down-samples xy by 8, so a 128 × 128 px scan of 16 × 16 Å
gives a 16 × 16 grid of 1 Å boxes. Box ``(i, j)`` is ``[..., i, j]``: ``i`` along the scan's
x axis (input axis 2), ``j`` along y (input axis 3).

* class tensor ``(B, n_classes, X/8, Y/8)``: channel 0 = background, channels ``1..`` the
  atom classes (one "atom" class in the thesis, or the element groups of ``element_classes``);
* offsets ``(B, 3, X/8, Y/8)`` in Å: x and y relative to the box centre, z relative to the
  top nucleus of the molecule (z ≤ 0; atoms below ``z_min = −0.7 Å`` are not in the target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from afm_ray.elements import ELEMENT_TABLE
from afm_ray.models.losses import FocalPositionLoss
from afm_ray.models.blocks import Encoder3D, PaddedConv, check_n_slices, check_padding_mode, check_stack, conv_leaky
from afm_ray.models.spec import ModelSpec, Objective, OutputSpec, register_model

if TYPE_CHECKING:
    from afm_ray.recipe import LossSettings, TrainConfig

TRUNK_CHANNELS = 128
HEAD_CHANNELS = 64
N_OFFSETS = 3
XYZ_BOX_ANGSTROM = 1.0
"""Edge of the xyz descriptor's boxes (Å): one per 8 × 8 input pixels at the thesis' 0.125 Å/px."""
XYZ_LOSS_DEFAULTS = {"gamma": 1.25, "alpha_n": 0.30, "beta_pl": 0.15, "z_min_angstrom": -0.7}
"""Thesis values of the focal-position loss (``loss.gamma``, ``loss.alpha_n``, ``loss.beta_pl``, ``loss.z_min_angstrom``)."""

# Element groups for ``element_classes=DEFAULT_ELEMENT_CLASSES``: light-set elements get their
# own class where the chemistry differs most visibly in AFM (H vs C), N/O/F share the
# electronegative class, and the heavy set (Si, P, S, Cl, Br) is one class.
DEFAULT_ELEMENT_CLASSES: tuple[tuple[str, ...], ...] = (
    ("H",), ("C",), ("N", "O", "F"), ("Si", "P", "S", "Cl", "Br"))


def class_names(element_classes: Sequence[Sequence[str]] | None) -> tuple[str, ...]:
    """Names of the class channels: ``("background", "atom")`` or ``("background", "H", "C", "N/O/F", …)``."""
    if element_classes is None:
        return ("background", "atom")
    return ("background",) + tuple("/".join(group) for group in element_classes)


def check_element_classes(element_classes) -> tuple[tuple[str, ...], ...] | None:
    """Validate element groups: non-empty groups of element symbols, no symbol in two groups."""
    if element_classes is None:
        return None
    if isinstance(element_classes, str):
        raise ValueError("element_classes must be a sequence of element groups, e.g. [['H'], ['C'], ['N', 'O']]")
    groups = tuple(tuple(group) if not isinstance(group, str) else (group,) for group in element_classes)
    if not groups or any(not group for group in groups):
        raise ValueError(f"element_classes needs at least one non-empty group, got {element_classes!r}")
    seen: set[str] = set()
    for group in groups:
        for symbol in group:
            if symbol in seen:
                raise ValueError(f"element {symbol!r} appears in more than one element class")
            seen.add(symbol)
    return groups


def element_class_index(symbol: str, element_classes: Sequence[Sequence[str]] | None) -> int:
    """Class channel of an atom: 1 for any atom without element classes, else 1 + its group's index.

    Raises ``ValueError`` for an element in no group.
    """
    if element_classes is None:
        return 1
    for index, group in enumerate(element_classes):
        if symbol in group:
            return 1 + index
    raise ValueError(f"element {symbol!r} is in none of the element classes {element_classes!r}")


class XYZ(nn.Module):
    """Encoder → three 128-filter convs → a class head (64, 64, n_classes + softmax) and an
    offset head (64, 64, 3, no activation).

    Args:
        n_slices: z-slices of the input stack (thesis 10).
        element_classes: beyond the thesis: element groups (e.g. ``DEFAULT_ELEMENT_CLASSES``)
            so the class head predicts background + one class per group; ``None`` (default)
            is the thesis' background / atom.
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


def model_element_classes(config: TrainConfig) -> list[list[str]] | None:
    """The xyz model's classes: the configured groups plus one for every other element.

    The xyz descriptor puts elements in no group into a final "other" class; the network needs the
    same channels.
    """
    groups = config.model.element_classes
    if groups is None:
        return None
    grouped = {symbol for group in groups for symbol in group}
    others = [ELEMENT_TABLE.symbols[z] for z in ELEMENT_TABLE.known_numbers if ELEMENT_TABLE.symbols[z] not in grouped]
    return [list(group) for group in groups] + [others]


def build_xyz(config: TrainConfig) -> XYZ:
    return XYZ(n_slices=config.input_slices, element_classes=model_element_classes(config),
               padding_mode=config.model.padding)


def xyz_loss(loss: LossSettings) -> FocalPositionLoss:
    return FocalPositionLoss(loss.gamma, loss.alpha_n, loss.beta_pl, loss.z_min_angstrom)


def describe_xyz_loss(config: TrainConfig) -> str:
    loss = config.loss
    return (f"γ {loss.gamma:g}, αn {loss.alpha_n:g}, βPL {loss.beta_pl:g}"
            + (f", classes {config.model.element_classes}" if config.model.element_classes else ""))


def check_xyz_config(config: TrainConfig) -> None:
    """The network's output cell (8 px) must be the descriptor's box."""
    pixels, size = config.sim.scan_pixels, config.sim.scan_size_angstrom
    if any(abs(count / 8 - extent / XYZ_BOX_ANGSTROM) > 1e-6 for count, extent in zip(pixels, size)):
        raise ValueError(f"the xyz network predicts one {XYZ_BOX_ANGSTROM:g} Å box per 8 pixels, so "
                         f"sim.scan_pixels {list(pixels)} must be 8 × sim.scan_size_angstrom {list(size)} "
                         f"(thesis: 128 px over 16 Å)")


XYZ_SPEC = register_model(ModelSpec(
    name="xyz",
    description="atom classes and positions on a 1 Å grid from a CO-tip stack",
    tips=("CO",),
    outputs=(OutputSpec("xyz_classes", "softmax", "probability", shape="grid", channels=None),
             OutputSpec("xyz_offsets", None, "Å", shape="grid", channels=N_OFFSETS)),
    targets=("xyz_classes", "xyz_offsets"),
    build_network=build_xyz,
    build_loss=xyz_loss,
    loss_defaults=XYZ_LOSS_DEFAULTS,
    describe_loss=describe_xyz_loss,
    objective=Objective("val_atom_f1", "max"),
    metrics="atoms",
    figure_maps=("atoms",),
    rotations_per_molecule=30,
    uses_element_classes=True,
    check_config=check_xyz_config,
    published_losses={"dataset1": {"train": 4.43e-3, "val": 4.72e-3, "test": 4.72e-3},
                      "dataset2": {"train": 5.87e-3, "val": 6.10e-3, "test": 6.58e-3}},  # thesis Table 6
    thesis_parameters=560_941,
    module=__name__,
))
