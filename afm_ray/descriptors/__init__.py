"""Descriptors: the learning targets computed from a molecule's atoms (thesis 3.2).

Every descriptor is evaluated for a batch on the scan window and pixel grid of the simulated
stacks (16 × 16 Å, 128 × 128 px by default; see :mod:`afm_ray.descriptors.geometry` for the
frame and axis conventions). Maps are ``(B, nx, ny)`` float32:

* :func:`vdw_spheres` — heights (Å) of the highest vdW sphere surface above a plane 1.5 Å below
  the top sphere, in [0, 1.5];
* :func:`atomic_disks` — cones (base radius = covalent radius) with apex = atom height (Å) above a
  plane 1 Å below the top nucleus, in [0, 1] (or ppafm's summed cones, ``mode="ppafm"``);
* :func:`height_and_es_maps` — Height Map (Å above a plane 2 Å below the highest point of the
  rigid-probe Fz isosurface, in [0, 2]) and Electrostatic Map (V) on that surface; these need the
  simulator (:mod:`afm_ray.sim`);
* :class:`XyzGrid` / :func:`encode_xyz` — the xyz grid descriptor; :meth:`XyzGrid.decode` and
  :func:`decode_xyz` read atoms back (the codec: :mod:`afm_ray.descriptors.xyz_codec`; its class layout:
  :mod:`afm_ray.descriptors.xyz_classes`).

:mod:`afm_ray.descriptors.registry` names every descriptor a model can train on (a model's targets) and
makes them for a simulated batch.

Molecules are given as anything :func:`as_atom_batch` accepts: ``Molecule`` objects,
``(positions, numbers[, charges])`` tuples, or lists of them. Like the simulator's window, the
descriptor window is centred on each molecule's mean atom xy (``centre=False`` turns this off).
:class:`DescriptorsConfig` selects each descriptor's convention (thesis by default, or ppafm's).
"""

from afm_ray.descriptors.config import DescriptorsConfig
from afm_ray.descriptors.disks import ATOMIC_DISKS_CUT_DEPTH, CONE_WIDTH_FACTOR, AtomicDisksConfig, atomic_disks
from afm_ray.descriptors.geometry import (DEFAULT_WINDOW, AtomBatch, ScanWindow, as_atom_batch, centred_on_mean_xy,
                                         prepare_atoms)
from afm_ray.descriptors.height_es import (ES_MAP_CUT, HEIGHT_MAP_CUT_DEPTH, HEIGHT_MAP_ISO_FORCE, EsMapConfig,
                                           HeightEsMaps, HeightMapConfig, height_and_es_from_fields,
                                           height_and_es_maps)
from afm_ray.descriptors.spheres import VDW_SPHERES_CUT_DEPTH, VdwSpheresConfig, vdw_spheres
from afm_ray.descriptors.xyz_classes import ELEMENT_GROUPS_H_C_NOF
from afm_ray.descriptors.xyz_codec import XYZ_Z_CUT, Atoms, XyzGrid, XyzTargets, decode_xyz, encode_xyz, non_max_suppression

__all__ = [
    "ATOMIC_DISKS_CUT_DEPTH", "CONE_WIDTH_FACTOR", "DEFAULT_WINDOW", "ELEMENT_GROUPS_H_C_NOF", "ES_MAP_CUT",
    "HEIGHT_MAP_CUT_DEPTH", "HEIGHT_MAP_ISO_FORCE", "VDW_SPHERES_CUT_DEPTH", "XYZ_Z_CUT",
    "AtomBatch", "AtomicDisksConfig", "Atoms", "DescriptorsConfig", "EsMapConfig", "HeightEsMaps", "HeightMapConfig",
    "ScanWindow", "VdwSpheresConfig", "XyzGrid", "XyzTargets",
    "as_atom_batch", "atomic_disks", "centred_on_mean_xy", "decode_xyz", "encode_xyz", "height_and_es_from_fields",
    "height_and_es_maps", "non_max_suppression", "prepare_atoms", "vdw_spheres",
]
