"""xyz descriptor (thesis 3.2, Fig. 11): atoms as one-hot classes and offsets on a grid of boxes.

The scan window is tiled by square boxes of ``box_size`` (1 Å → 16 × 16 boxes over 16 × 16 Å).
Box ``(i, j)`` covers ``x ∈ [x_min + i·s, x_min + (i+1)·s)``, ``y`` likewise; its centre is the
default position. Encoding:

* z zero is the highest nucleus of the molecule; atoms with ``z − z_top < z_cut`` (−0.7 Å) are
  cut (an atom exactly at −0.7 Å is kept), as are atoms outside the window;
* each remaining atom goes to the box holding its xy; if several land in one box the highest
  (largest z) wins;
* ``classes`` (B, n_classes, gx, gy) float32 one-hot: channel 0 background, channel 1 atom — or,
  with ``element_groups``, channels 1..G one per group and a last channel for every element in no
  group (e.g. ``ELEMENT_GROUPS_H_C_NOF`` gives H / C / N,O,F / heavy, 5 channels in all);
* ``offsets`` (B, 3, gx, gy) float32 in Å: ``(x − box centre x, y − box centre y, z − z_top)``
  for atom boxes, 0 for background (so the z offset is ≤ 0 and ≥ z_cut).

Decoding (:meth:`XyzGrid.decode`, a thin wrapper over :func:`afm_ray.metrics.decode_xyz`)
reverses this for a prediction: every box whose atom confidence ``1 − p_background`` reaches the
threshold yields one atom at box centre + offset; optional non-maximum suppression (thesis:
R_nms = 0.5 Å). Positions are in the molecule-centred frame of
:mod:`afm_ray.descriptors.geometry` (window x, y ∈ [−8, 8) Å).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from afm_ray.descriptors.geometry import DEFAULT_WINDOW, AtomBatch, ScanWindow, prepare_atoms
from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError

if TYPE_CHECKING:
    from afm_ray.metrics import Atoms

XYZ_Z_CUT = -0.7
"""Å relative to the top nucleus below which atoms are cut (thesis 3.2)."""

ELEMENT_GROUPS_H_C_NOF: tuple[tuple[int, ...], ...] = ((1,), (6,), (7, 8, 9))
"""Element classes H / C / N,O,F; every other element falls into a final "heavy" class."""


@dataclass(frozen=True)
class XyzTargets:
    """An encoded xyz descriptor batch.

    Attributes:
        classes: (B, n_classes, gx, gy) float32 one-hot, channel 0 = background.
        offsets: (B, 3, gx, gy) float32 Å: (dx, dy) from the box centre and z relative to the top
            nucleus; 0 in background boxes.
    """

    classes: np.ndarray
    offsets: np.ndarray

    @property
    def atom_mask(self) -> np.ndarray:
        """(B, gx, gy) bool, True where a box holds an atom."""
        return self.classes[:, 0] < 0.5


@dataclass(frozen=True)
class XyzGrid:
    """Geometry and options of the xyz descriptor; encodes molecules and decodes predictions.

    Attributes:
        window: scan window; its width and height must be whole multiples of ``box_size``.
        box_size: box edge in Å (thesis: 16 × 16 boxes over 16 Å → 1 Å).
        z_cut: Å relative to the top nucleus below which atoms are cut (≤ 0).
        element_groups: None for two classes (background, atom), or tuples of atomic numbers, one
            class each, plus a final class for all other elements.
    """

    window: ScanWindow = DEFAULT_WINDOW
    box_size: float = 1.0
    z_cut: float = XYZ_Z_CUT
    element_groups: tuple[tuple[int, ...], ...] | None = None
    _class_of_number: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.box_size <= 0:
            raise InputError("xyz.box_size", f"must be > 0 Å, got {self.box_size}")
        for extent, name in ((self.window.width, "width"), (self.window.height, "height")):
            boxes = extent / self.box_size
            if abs(boxes - round(boxes)) > 1e-6:
                raise InputError("xyz.box_size", f"window {name} {extent} Å is not a whole number of "
                                                  f"{self.box_size} Å boxes")
        if self.z_cut > 0:
            raise InputError("xyz.z_cut", f"must be ≤ 0 Å (relative to the top nucleus), got {self.z_cut}")
        class_of_number = np.ones(ELEMENT_TABLE.vdw_radius_angstrom.size, dtype=np.int64)
        if self.element_groups is not None:
            groups = tuple(tuple(int(z) for z in group) for group in self.element_groups)
            object.__setattr__(self, "element_groups", groups)
            seen: set[int] = set()
            class_of_number[:] = len(groups) + 1
            for index, group in enumerate(groups, start=1):
                numbers = ELEMENT_TABLE.check_numbers(np.array(group, dtype=np.int64), where="xyz.element_groups")
                if seen & set(group):
                    raise InputError("xyz.element_groups", f"element(s) {sorted(seen & set(group))} in two groups")
                seen |= set(group)
                class_of_number[numbers] = index
        object.__setattr__(self, "_class_of_number", class_of_number)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(gx, gy)`` boxes."""
        return round(self.window.width / self.box_size), round(self.window.height / self.box_size)

    @property
    def n_classes(self) -> int:
        """Class channels including background."""
        return 2 if self.element_groups is None else len(self.element_groups) + 2

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.element_groups is None:
            return "background", "atom"
        names = [",".join(ELEMENT_TABLE.symbols[z] for z in group) for group in self.element_groups]
        return ("background", *names, "other")

    def box_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """``(gx,)`` and ``(gy,)`` box-centre coordinates in Å."""
        gx, gy = self.grid_shape
        return (self.window.x_min + (np.arange(gx) + 0.5) * self.box_size,
                self.window.y_min + (np.arange(gy) + 0.5) * self.box_size)

    # -- encode -----------------------------------------------------------------------------
    def kept_atoms(self, molecules: Any, centre: bool = True) -> tuple[AtomBatch, np.ndarray]:
        """The padded (and, with ``centre``, mean-xy-centred) batch and a (B, N) bool mask of the
        atoms the descriptor can show: inside the window and not deeper than ``z_cut`` below the
        top nucleus (before "highest wins"). These are the true atoms to score predictions on."""
        batch = prepare_atoms(molecules, centre)
        relative_z = batch.positions[..., 2] - batch.top_z()[:, None]
        x, y = batch.positions[..., 0], batch.positions[..., 1]
        inside = ((x >= self.window.x_min) & (x < self.window.x_min + self.window.width)
                  & (y >= self.window.y_min) & (y < self.window.y_min + self.window.height))
        return batch, batch.mask & inside & (relative_z >= self.z_cut)

    def encode(self, molecules: Any, centre: bool = True) -> XyzTargets:
        """xyz targets for a batch of molecules.

        With ``centre`` (default) each molecule is first moved so that its mean atom xy is at the
        origin, as the simulator centres its window; offsets do not depend on this except through
        which box an atom falls in.
        """
        batch, kept = self.kept_atoms(molecules, centre)
        gx, gy = self.grid_shape
        sample, atom = np.nonzero(kept)
        position = batch.positions[sample, atom]
        relative_z = position[:, 2] - batch.top_z()[sample]
        # clip guards the x_max edge against floating-point rounding of the division
        box_x = np.clip(np.floor((position[:, 0] - self.window.x_min) / self.box_size).astype(np.int64), 0, gx - 1)
        box_y = np.clip(np.floor((position[:, 1] - self.window.y_min) / self.box_size).astype(np.int64), 0, gy - 1)
        box_id = (sample * gx + box_x) * gy + box_y
        # Sort by box, then height: the last entry of each box run is its highest atom.
        order = np.lexsort((relative_z, box_id))
        last_of_run = np.append(box_id[order][1:] != box_id[order][:-1], True)
        winner = order[last_of_run]

        classes = np.zeros((batch.batch_size, self.n_classes, gx, gy), dtype=np.float32)
        classes[:, 0] = 1.0
        offsets = np.zeros((batch.batch_size, 3, gx, gy), dtype=np.float32)
        b, i, j = sample[winner], box_x[winner], box_y[winner]
        centres_x, centres_y = self.box_centres()
        classes[b, 0, i, j] = 0.0
        classes[b, self._class_of_number[batch.numbers[b, atom[winner]]], i, j] = 1.0
        offsets[b, 0, i, j] = position[winner, 0] - centres_x[i]
        offsets[b, 1, i, j] = position[winner, 1] - centres_y[j]
        offsets[b, 2, i, j] = relative_z[winner]
        return XyzTargets(classes, offsets)

    # -- decode -----------------------------------------------------------------------------
    def decode(self, class_probabilities, offsets, threshold: float = 0.5,
               nms_radius: float | None = None) -> list[Atoms]:
        """Atoms of each sample whose confidence ``1 − p_background`` is ≥ ``threshold``.

        Wraps :func:`afm_ray.metrics.decode_xyz` (one decoder for the whole project) and moves its
        window-corner xy into this grid's frame (the molecule-centred frame of :meth:`encode`), so
        an encoded target decodes back to its atoms.

        Args:
            class_probabilities: (B, n_classes, gx, gy) probabilities (softmax applied) or one-hot
                targets; NumPy array or torch tensor.
            offsets: (B, 3, gx, gy) offsets in Å as in :class:`XyzTargets`.
            threshold: minimum atom confidence in [0, 1].
            nms_radius: Å; None (default) keeps every box, 0.5 is the thesis' R_nms.

        Returns:
            One :class:`afm_ray.metrics.Atoms` per sample (positions (n, 3) Å: x, y in the grid's
            frame, z relative to the top nucleus), most confident first.
        """
        from afm_ray.metrics import Atoms, decode_xyz  # torch-importing module: load on use

        gx, gy = self.grid_shape
        shape = tuple(getattr(class_probabilities, "shape", ()))
        if len(shape) != 4 or shape[2:] != (gx, gy):
            raise InputError("xyz decode", f"class probabilities must be (B, C, {gx}, {gy}), got {shape}")
        decoded = decode_xyz(class_probabilities, offsets, threshold=threshold, box_size=self.box_size,
                             nms_radius=nms_radius)
        corner = np.array([self.window.x_min, self.window.y_min, 0.0])
        return [Atoms(atoms.positions + corner, atoms.confidence, atoms.classes) for atoms in decoded]


def encode_xyz(molecules: Any, grid: XyzGrid | None = None, centre: bool = True) -> XyzTargets:
    """xyz targets with ``grid`` (default: 16 × 16 one-Å boxes, atom/background classes)."""
    return (grid or XyzGrid()).encode(molecules, centre)
