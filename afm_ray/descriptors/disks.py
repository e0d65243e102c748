"""Atomic Disks descriptor (thesis 3.2).

Each atom within ``cut_depth`` (1 Å) of the top nucleus is a cone centred on its xy position:

    value(r) = apex · (1 − r / (k · R_cov))   for r < k · R_cov, else 0,
    apex     = z_atom − (z_top − cut_depth)    (Å; the top atom's apex is 1 Å, an atom 1 Å deep 0),

with ``R_cov`` the covalent radius from :data:`afm_ray.elements.ELEMENT_TABLE` and cone width
factor ``k = 1.0`` (the cone reaches zero at one covalent radius, e.g. 0.76 Å for C, 0.31 Å for H:
the value ppafm uses, so bonded cones barely touch). Atoms whose nucleus is more than ``cut_depth``
below the top nucleus are left out. Where cones overlap the pixel takes the larger value, so the
apex of every visible cone still reads its atom's height.

That is ``mode: thesis`` (the default). ``mode: ppafm`` reproduces the Atomic Disks of the
published ASD-AFM data (ppafm's ``AtomicDisks`` with ``zmin = −1.2``, ``Rpp = −0.5``)::

    value(r) = Σ_i (1 − d_i / 1.2) · (1 − r / R_i)   over atoms with r < R_i,
    d_i      = z_top − z_i < 1.2 Å   and   (top of the highest sphere) − (z_i + S_i) < 1.2 Å,

with ``R_i`` ppafm's disk radii (its element table's "radius cov." column: C 0.735, H 0.365 Å)
and ``S_i`` its sphere radii (LJ R_min/2 − 0.5 Å). Overlapping cones add up, and the top atom's
apex is 1.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field

from afm_ray.config import StrictModel
from afm_ray.descriptors.geometry import DEFAULT_WINDOW, AtomBatch, ScanWindow, prepare_atoms
from afm_ray.descriptors.spheres import sphere_radius_of
from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError

ATOMIC_DISKS_CUT_DEPTH = 1.0
"""Å below the top nucleus beyond which atoms are left out (thesis 3.2)."""

CONE_WIDTH_FACTOR = 1.0
"""Cone base radius in units of the covalent radius."""

PPAFM_DEPTH = 1.2
"""Å: ``mode: ppafm`` depth scale, both of the nuclei and of the sphere tops (ppafm's ``zmin``, ``zmax_s``)."""

DiskMode = Literal["thesis", "ppafm"]


class AtomicDisksConfig(StrictModel):
    """Which Atomic Disks convention (module docstring)."""

    mode: DiskMode = Field("thesis", description="thesis: maximum of cones 1 Å deep, Cordero covalent radii; ppafm: sum "
                                                 "of cones (1 − d/1.2)(1 − r/R), ppafm's radii (published ASD-AFM data)")


def atomic_disks(molecules: Any, window: ScanWindow = DEFAULT_WINDOW, *,
                 cut_depth: float = ATOMIC_DISKS_CUT_DEPTH,
                 cone_width_factor: float = CONE_WIDTH_FACTOR,
                 radius_of: Callable[[np.ndarray], np.ndarray] | None = None, mode: DiskMode = "thesis",
                 centre: bool = True) -> np.ndarray:
    """Atomic Disks maps for a batch of molecules.

    Args:
        molecules: see :func:`afm_ray.descriptors.geometry.as_atom_batch`; positions in the scan
            frame (Å, tip looking down −z).
        window: scan window and pixel grid, in the frame where each molecule's mean atom xy is 0.
        cut_depth: Å below the top nucleus beyond which atoms are dropped; also the top apex value.
        cone_width_factor: cone base radius = factor × radius.
        radius_of: maps atomic numbers to radii in Å; default the element table's covalent radii.
        mode: ``thesis`` (the arguments above apply) or ``ppafm`` (fixed published convention; the
            other arguments besides ``window`` and ``centre`` are ignored).

        centre: move each molecule's mean atom xy to the origin first (as the simulator does);
            False to use the positions as given.

    Returns:
        (B, nx, ny) float32: ``thesis`` in Å, in ``[0, cut_depth]``; ``ppafm`` dimensionless, ≥ 0;
        0 is background.
    """
    check_disk_arguments(mode, cut_depth, cone_width_factor)
    batch = prepare_atoms(molecules, centre)
    visible, apex, widths = cone_parameters(batch, mode, cut_depth, cone_width_factor, radius_of)
    return _cones(batch, visible, apex, widths, window, np.add if mode == "ppafm" else np.maximum)


def check_disk_arguments(mode: str, cut_depth: float, cone_width_factor: float) -> None:
    """:class:`InputError` for an unknown mode or, in ``thesis`` mode, a non-positive depth or width."""
    if mode == "ppafm":  # a fixed convention: the other arguments do not apply
        return
    if mode != "thesis":
        raise InputError("atomic_disks.mode", f"expected 'thesis' or 'ppafm', got {mode!r}")
    if cut_depth <= 0:
        raise InputError("atomic_disks.cut_depth", f"must be > 0 Å, got {cut_depth}")
    if cone_width_factor <= 0:
        raise InputError("atomic_disks.cone_width_factor", f"must be > 0, got {cone_width_factor}")


def cone_parameters(batch: AtomBatch, mode: DiskMode, cut_depth: float = ATOMIC_DISKS_CUT_DEPTH,
                    cone_width_factor: float = CONE_WIDTH_FACTOR,
                    radius_of: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
    """``(visible, apex, width)``, each (B, N): which atoms draw a cone, its apex value and base radius (Å).

    Overlapping cones combine by their maximum (``thesis``) or sum (``ppafm``); see the module docstring.
    """
    if mode == "ppafm":
        depth = batch.top_z()[:, None] - batch.positions[..., 2]
        sphere_tops = batch.positions[..., 2] + batch.per_atom(sphere_radius_of("ppafm"))
        sphere_depth = np.where(batch.mask, sphere_tops, -np.inf).max(axis=1)[:, None] - sphere_tops
        visible = batch.mask & (depth < PPAFM_DEPTH) & (sphere_depth < PPAFM_DEPTH)
        return visible, 1.0 - depth / PPAFM_DEPTH, batch.per_atom(ELEMENT_TABLE.ppafm_disk_radius)
    widths = cone_width_factor * batch.per_atom(radius_of or ELEMENT_TABLE.covalent_radius)
    apex = batch.positions[..., 2] - (batch.top_z() - cut_depth)[:, None]
    # An atom exactly cut_depth below has apex 0 and so draws nothing: ">= 0" and "> 0" agree.
    return batch.mask & (apex > 0.0), apex, widths


def _cones(batch: AtomBatch, visible: np.ndarray, apex: np.ndarray, widths: np.ndarray, window: ScanWindow,
           combine) -> np.ndarray:
    """(B, nx, ny) float32: cones ``apex · (1 − r / width)`` (0 beyond ``width``) of the ``visible`` (B, N)
    atoms, overlaps merged by ``combine`` (``np.maximum`` or ``np.add``)."""
    px, py = window.pixel_x(), window.pixel_y()
    disks = np.zeros((batch.batch_size, window.nx, window.ny))
    # One pass per atom slot keeps memory at one (B, nx, ny) temporary instead of (B, N, nx, ny).
    for atom in range(batch.numbers.shape[1]):
        present = visible[:, atom]
        if not present.any():
            continue
        x, y = batch.positions[present, atom, 0], batch.positions[present, atom, 1]
        dx2 = (px[None, :] - x[:, None]) ** 2
        dy2 = (py[None, :] - y[:, None]) ** 2
        r = np.sqrt(dx2[:, :, None] + dy2[:, None, :])
        cone = apex[present, atom][:, None, None] * np.maximum(1.0 - r / widths[present, atom][:, None, None], 0.0)
        disks[present] = combine(disks[present], cone)
    return disks.astype(np.float32)
