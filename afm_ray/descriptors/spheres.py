"""vdW Spheres descriptor (thesis 3.2).

Each atom is a sphere of its van der Waals radius; a pixel holds the height of the highest sphere
surface above it. Values are measured from a reference plane ``cut_depth`` (1.5 Å) below the top
of the highest sphere and clipped to ``[0, cut_depth]``:

* the top of the highest sphere (``max_i z_i + R_i``, analytic, not the discretised maximum) has
  the value ``cut_depth`` = 1.5 Å;
* background and every surface deeper than 1.5 Å below that top have the value 0.

Zero-based, non-negative values suit the ReLU output of the DSH decoder (thesis 3.3).

Two radius conventions (``VdwSpheresConfig.radii``):

* ``vdw`` (default, the thesis' "van der Waals radius"): Bondi radii from
  :data:`afm_ray.elements.ELEMENT_TABLE`, e.g. H 1.20, C 1.70 Å;
* ``ppafm``: the Lennard-Jones ``R_min/2 − 0.5 Å`` of the same table (C 1.408, H 0.987 Å), the
  radii of ppafm's ``vdwSpheres`` (``Rpp = −0.5``) and so of the published ASD-AFM models' data.

ppafm returns values in ``[−1.5, 0]`` (top 0); with the same radii our map equals ppafm's plus
1.5 Å up to its pixel grid (ppafm puts pixel centres on ``linspace(x_min, x_max, n)``).
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field

from afm_ray.config import StrictModel
from afm_ray.descriptors.geometry import DEFAULT_WINDOW, AtomBatch, ScanWindow, prepare_atoms
from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError

VDW_SPHERES_CUT_DEPTH = 1.5
"""Å below the top of the highest sphere at which the descriptor is cut (thesis 3.2)."""

PPAFM_RADIUS_OFFSET = -0.5
"""Å added to the LJ R_min/2 for ``radii: ppafm`` (ppafm's ``Rpp``)."""

SphereRadii = Literal["vdw", "ppafm"]


class VdwSpheresConfig(StrictModel):
    """Which radii the vdW Spheres use (module docstring)."""

    radii: SphereRadii = Field("vdw", description="vdw: Bondi van der Waals radii (thesis); ppafm: LJ R_min/2 − 0.5 Å "
                                                  "(ppafm / published ASD-AFM data)")


def sphere_radius_of(radii: SphereRadii) -> Callable[[np.ndarray], np.ndarray]:
    """Atomic numbers → sphere radii in Å for a radius convention."""
    if radii == "vdw":
        return ELEMENT_TABLE.vdw_radius
    if radii == "ppafm":
        return lambda numbers: ELEMENT_TABLE.lj_params(numbers)[0] + PPAFM_RADIUS_OFFSET
    raise InputError("vdw_spheres.radii", f"expected 'vdw' or 'ppafm', got {radii!r}")


def check_sphere_arguments(cut_depth: float) -> None:
    if cut_depth <= 0:
        raise InputError("vdw_spheres.cut_depth", f"must be > 0 Å, got {cut_depth}")


def vdw_spheres(molecules: Any, window: ScanWindow = DEFAULT_WINDOW, *,
                cut_depth: float = VDW_SPHERES_CUT_DEPTH,
                radius_of: Callable[[np.ndarray], np.ndarray] | None = None, radii: SphereRadii = "vdw",
                centre: bool = True) -> np.ndarray:
    """vdW Spheres maps for a batch of molecules.

    Args:
        molecules: see :func:`afm_ray.descriptors.geometry.as_atom_batch`; positions in the scan
            frame (Å, tip looking down −z).
        window: scan window and pixel grid, in the frame where each molecule's mean atom xy is 0.
        cut_depth: Å below the highest sphere top where the map is cut; also its maximum value.
        radius_of: maps atomic numbers to sphere radii in Å; overrides ``radii``.
        radii: ``vdw`` or ``ppafm`` (module docstring).

        centre: move each molecule's mean atom xy to the origin first (as the simulator does);
            False to use the positions as given.

    Returns:
        (B, nx, ny) float32 heights in Å above the cut plane, in ``[0, cut_depth]``.
    """
    check_sphere_arguments(cut_depth)
    batch = prepare_atoms(molecules, centre)
    radius = batch.per_atom(radius_of or sphere_radius_of(radii))
    surface = highest_sphere_surface(batch, radius, window)
    top = np.where(batch.mask, batch.positions[..., 2] + radius, -np.inf).max(axis=1)
    heights = surface - (top - cut_depth)[:, None, None]
    # -inf (no sphere over the pixel) and deep surfaces both clip to 0
    return np.clip(heights, 0.0, cut_depth).astype(np.float32)


def highest_sphere_surface(batch: AtomBatch, radii: np.ndarray, window: ScanWindow) -> np.ndarray:
    """(B, nx, ny) float64 z (Å) of the highest sphere surface over each pixel; −inf where none.

    ``radii`` is (B, N) in Å (padding atoms are skipped via ``batch.mask``).
    """
    px, py = window.pixel_x(), window.pixel_y()
    surface = np.full((batch.batch_size, window.nx, window.ny), -np.inf)
    # One pass per atom slot keeps memory at one (B, nx, ny) temporary instead of (B, N, nx, ny).
    for atom in range(batch.numbers.shape[1]):
        present = batch.mask[:, atom]
        if not present.any():
            continue
        x, y, z = (batch.positions[present, atom, axis] for axis in range(3))
        r2 = radii[present, atom] ** 2
        dx2 = (px[None, :] - x[:, None]) ** 2
        dy2 = (py[None, :] - y[:, None]) ** 2
        under = r2[:, None, None] - dx2[:, :, None] - dy2[:, None, :]
        cap = np.where(under >= 0.0, z[:, None, None] + np.sqrt(np.maximum(under, 0.0)), -np.inf)
        surface[present] = np.maximum(surface[present], cap)
    return surface
