"""The descriptors' conventions in one typed section (YAML: ``descriptors:`` of a training config).

Defaults are the thesis' conventions. ``configs/published_asdafm.yaml`` selects the ppafm ones
(``vdw_spheres.radii: ppafm``, ``atomic_disks.mode: ppafm``), the conventions the published ASD-AFM
models were trained on; ``es_map.quantity: ez`` gives ppafm's Electrostatic Map.
"""

from __future__ import annotations

from pydantic import Field

from afm_ray.config import StrictModel
from afm_ray.descriptors.disks import AtomicDisksConfig
from afm_ray.descriptors.height_es import EsMapConfig, HeightMapConfig
from afm_ray.descriptors.spheres import VdwSpheresConfig


class DescriptorsConfig(StrictModel):
    """How each descriptor is computed (see each section's module for its definition and units)."""

    height_map: HeightMapConfig = Field(default_factory=HeightMapConfig)
    vdw_spheres: VdwSpheresConfig = Field(default_factory=VdwSpheresConfig)
    atomic_disks: AtomicDisksConfig = Field(default_factory=AtomicDisksConfig)
    es_map: EsMapConfig = Field(default_factory=EsMapConfig)
