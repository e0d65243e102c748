"""The xyz codec (thesis 3.2, Fig. 11): atoms ↔ one-hot classes and offsets on a grid of boxes.

Encoding (:meth:`XyzGrid.encode`, :func:`encode_xyz`) builds the xyz descriptor, the xyz
model's target; decoding (:func:`decode_xyz`, :meth:`XyzGrid.decode`) turns a predicted (or
target) grid back into atoms, with non-maximum suppression (:func:`non_max_suppression`).

The grid (shared with :mod:`afm_ray.models.xyz` and :mod:`afm_ray.models.metrics`):

* ``classes`` (B, n_classes, gx, gy) — probabilities, or float32 one-hot for a target, in the class
  layout of :mod:`afm_ray.descriptors.xyz_classes`: channel 0 background, channel 1 atom — or, with
  ``element_groups``, channels 1..G one per group and a last "other" channel for every element in no
  group (e.g. ``ELEMENT_GROUPS_H_C_NOF`` gives H / C / N,O,F / other, 5 channels in all);
* ``offsets`` (B, 3, gx, gy) float32 in Å: ``(x − box centre x, y − box centre y, z − z_top)``
  for atom boxes, 0 for background (so the z offset is ≤ 0 and ≥ z_cut).

The scan window is tiled by square boxes of ``box_size`` (1 Å → 16 × 16 boxes over 16 × 16 Å).
Box ``(i, j)`` covers ``x ∈ [x_min + i·s, x_min + (i+1)·s)``, ``y`` likewise, ``i`` along x
(tensor axis 2), ``j`` along y (axis 3); its centre is the default position. Encoding:

* z zero is the highest nucleus of the molecule; atoms with ``z − z_top < z_cut`` (−0.7 Å) are
  cut (an atom exactly at −0.7 Å is kept), as are atoms outside the window;
* each remaining atom goes to the box holding its xy; if several land in one box the highest
  (largest z) wins.

Decoding: every box whose atom confidence ``1 − p_background`` reaches the threshold (``>=``)
yields one atom at ``(box centre + offset_xy, offset_z)`` of class ``1 + argmax`` over the atom
channels; optional greedy non-maximum suppression drops atoms closer than R_nms (thesis 0.5 Å)
to a more confident one. :func:`decode_xyz` gives x, y from the window's corner;
:meth:`XyzGrid.decode` moves them into the molecule-centred frame of
:mod:`afm_ray.descriptors.geometry` (window x, y ∈ [−8, 8) Å), so an encoded target decodes back
to its atoms.

This module does not import torch (the descriptors are built in torch-free processes); it accepts
torch tensors wherever it takes arrays.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from afm_ray.descriptors.geometry import DEFAULT_WINDOW, AtomBatch, ScanWindow, prepare_atoms
from afm_ray.descriptors.xyz_classes import class_names, element_symbols
from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError

XYZ_Z_CUT = -0.7
"""Å relative to the top nucleus below which atoms are cut (thesis 3.2)."""

DEFAULT_BOX_SIZE = 1.0
"""Å, box edge (thesis: 16 × 16 boxes over the 16 Å window)."""
DEFAULT_NMS_RADIUS = 0.5
"""Å, the thesis' R_nms."""
DEFAULT_REPORT_THRESHOLD = 0.5
"""Atom confidence at which atoms are decoded and reported (the thesis reports precision/recall at 0.5)."""


def as_float64_array(array: Any) -> np.ndarray:
    """A NumPy float64 copy or view of ``array`` (NumPy array, nested sequence or torch tensor)."""
    # torch is looked up, not imported: an object can only be a tensor once torch is loaded
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def check_xyz_grid(classes: np.ndarray, offsets: np.ndarray | None = None) -> None:
    """Raise ValueError unless ``classes`` is (B, n_classes ≥ 2, H, W) and ``offsets`` (B, 3, H, W)."""
    if classes.ndim != 4 or classes.shape[1] < 2:
        raise ValueError(f"class tensor must be (B, n_classes>=2, H, W), got {classes.shape}")
    if offsets is not None and offsets.shape != (classes.shape[0], 3, *classes.shape[2:]):
        raise ValueError(f"offsets must be (B, 3, H, W) matching the class tensor {classes.shape}, "
                         f"got {offsets.shape}")


@dataclass(frozen=True)
class Atoms:
    """Atoms of one sample decoded from an xyz grid.

    Attributes:
        positions: ``(N, 3)`` Å; x, y from the scan window's corner (:func:`decode_xyz`) or in
            the molecule-centred frame (:meth:`XyzGrid.decode`), z from the top nucleus (≤ 0).
        confidence: ``(N,)`` in [0, 1], ``1 − p_background`` of the atom's box (1 for targets).
        classes: ``(N,)`` int, the atom class channel (1 = "atom" without element classes).
    """

    positions: np.ndarray
    confidence: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.confidence)

    def select(self, keep: np.ndarray) -> "Atoms":
        """The atoms picked by ``keep`` (bool mask or indices), in that order."""
        return Atoms(self.positions[keep], self.confidence[keep], self.classes[keep])


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
            class each, plus a final "other" class for all other elements (:mod:`~afm_ray.descriptors.xyz_classes`).
    """

    window: ScanWindow = DEFAULT_WINDOW
    box_size: float = DEFAULT_BOX_SIZE
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
        return len(self.class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names(element_symbols(self.element_groups))

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
    def decode(self, class_probabilities, offsets, threshold: float = DEFAULT_REPORT_THRESHOLD,
               nms_radius: float | None = None) -> list[Atoms]:
        """Atoms of each sample whose confidence ``1 − p_background`` is ≥ ``threshold``.

        :func:`decode_xyz` with this grid's box size, its window-corner xy moved into this grid's
        frame (the molecule-centred frame of :meth:`encode`), so an encoded target decodes back
        to its atoms.

        Args:
            class_probabilities: (B, n_classes, gx, gy) probabilities (softmax applied) or one-hot
                targets; NumPy array or torch tensor.
            offsets: (B, 3, gx, gy) offsets in Å as in :class:`XyzTargets`.
            threshold: minimum atom confidence in [0, 1].
            nms_radius: Å; None (default) keeps every box, 0.5 is the thesis' R_nms.

        Returns:
            One :class:`Atoms` per sample (positions (n, 3) Å: x, y in the grid's frame, z
            relative to the top nucleus), most confident first.
        """
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


def box_centres(height: int, width: int, box_size: float = DEFAULT_BOX_SIZE) -> np.ndarray:
    """``(H, W, 2)`` xy centres of the grid boxes in Å, from the scan window's corner."""
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return (np.stack((i, j), axis=-1) + 0.5) * box_size


def decode_xyz(class_probs, offsets, threshold: float = DEFAULT_REPORT_THRESHOLD,
               box_size: float = DEFAULT_BOX_SIZE, nms_radius: float | None = DEFAULT_NMS_RADIUS) -> list[Atoms]:
    """Turn a predicted (or target) xyz grid into a list of atoms per sample.

    Args:
        class_probs: ``(B, n_classes, H, W)`` probabilities or one-hot, channel 0 background.
        offsets: ``(B, 3, H, W)`` Å (see the module doc).
        threshold: keep boxes whose confidence ``1 − p_background`` is ≥ this.
        box_size: box edge in Å (thesis 1 Å: 16 boxes over the 16 Å window).
        nms_radius: drop atoms closer than this (Å) to a more confident kept atom; ``None`` or 0
            to skip NMS (use for targets).

    Returns:
        ``B`` :class:`Atoms`, x, y from the window's corner, each sorted by decreasing confidence.
    """
    class_probs, offsets = as_float64_array(class_probs), as_float64_array(offsets)
    check_xyz_grid(class_probs, offsets)
    confidence = 1.0 - class_probs[:, 0]
    classes = 1 + np.argmax(class_probs[:, 1:], axis=1)
    centres = box_centres(*class_probs.shape[2:], box_size)
    samples = []
    for b in range(class_probs.shape[0]):
        keep = confidence[b] >= threshold
        xy = centres[keep] + offsets[b, :2].transpose(1, 2, 0)[keep]
        z = offsets[b, 2][keep]
        order = np.argsort(-confidence[b][keep], kind="stable")
        atoms = Atoms(np.column_stack((xy, z))[order], confidence[b][keep][order], classes[b][keep][order])
        if nms_radius:
            atoms = non_max_suppression(atoms, nms_radius)
        samples.append(atoms)
    return samples


def non_max_suppression(atoms: Atoms, radius: float = DEFAULT_NMS_RADIUS) -> Atoms:
    """Greedy NMS: going from the most confident atom down, drop every atom closer than
    ``radius`` (Å, 3D distance) to an atom already kept. Returns the kept atoms, most confident first.
    """
    if radius < 0:
        raise ValueError(f"NMS radius must be >= 0, got {radius}")
    order = np.argsort(-atoms.confidence, kind="stable")
    positions = atoms.positions[order]
    kept: list[int] = []
    for index in range(len(order)):
        if kept:
            distances = np.linalg.norm(positions[kept] - positions[index], axis=1)
            if np.any(distances < radius):
                continue
        kept.append(index)
    return atoms.select(order[np.array(kept, dtype=np.int64)])
