"""Typed configuration of the Probe Particle simulator (YAML: ``configs/sim.yaml``).

Every default is the thesis value (section 3.1, 3.4) or, where the thesis is silent, ppafm's default
(the reference simulator the thesis used). Units are in the field names: Å (``_angstrom``), elementary
charges (``_e``), N/m (``_n_per_m``), Hz (``_hz``), eV/Å (``_ev_per_angstrom``). Unknown keys are rejected.

Scan geometry (one sample; see :mod:`afm_ray.sim` for the axis conventions)::

    tip anchor z  ┬ tip_z[0] = contact_z + start_distance_angstrom        (first, farthest step)
                  │ … num_z_steps = num_slices + df_steps steps of dz_angstrom, downwards …
                  ┴ tip_z[num_z_steps - 1]
    probe rest    = tip anchor + (tilt_x, tilt_y, -sqrt(L² - tilt²)),  L = probe_length_angstrom
    contact_z     = max_i(z_i + R_i) + R_probe   (R = Lennard-Jones R_min/2 of the element table)

``contact_z`` is the height at which the probe's LJ sphere touches the highest atom's LJ sphere: the
same reference as the published data generators (their ``distAbove``).

Default geometry, and the evidence for it. The published ASD-AFM DSH model (trained on its
generator's data: probe 4.0 Å below the tip, start 5.0 ± 0.25 Å, 10 slices) was run on afm-ray's
simulations of 96 QM9 validation views and its predictions correlated with afm-ray's descriptors
(vdW Spheres / Height Map / Atomic Disks; ``afm-ray evaluate``, see the README):

* probe 4.0 Å, start 5.0 (the ``asdafm`` preset): 0.96 / 0.98 / 0.84 (augmented as in training),
  0.955 / 0.971 / 0.864 on clean scans; start 4.75: 0.96 / 0.98 / 0.82, 5.25 (ml-spm's): 0.95 /
  0.98 / 0.80, 5.5: 0.93 / 0.98 / 0.75, so 5.0 it is;
* probe 3.0 Å (ppafm's AFMulator default since 2022, afm-ray 0.1's; preset ``afm-ray-0.1``):
  0.78 / 0.91 / 0.42: the images are taken 1 Å higher and show less.

Hence ``probe_length_angstrom = 4.0``. The thesis simulates 20 slices (not 10) and picks a window
of 15 of them: ``start_distance_angstrom = 6.0`` keeps the closest slice at the published data's
closest height and is the lowest start at which every QM9 view keeps the 1.8 Å clearance (5.5:
58 % of views refused). The thesis' tilt (radius 1.0 Å) stays; the window varies the height, so
no jitter. ``preset: afm-ray-0.1`` restores the old geometry, ``preset: asdafm`` the published one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import Field, model_validator

from afm_ray.config import StrictModel, load_yaml_text, one_line, validate
from afm_ray.errors import InputError
from afm_ray.presets import find_config

EV_PER_ANGSTROM2_PER_N_PER_M = 0.0624150907
"""1 N/m expressed in eV/Å² (the simulator's internal stiffness unit)."""

COULOMB_CONSTANT_EV_ANGSTROM = 14.399644
"""Coulomb constant k_e in eV·Å/e² (so k_e·q/r is a potential in V for q in e and r in Å)."""


class TipConfig(StrictModel):
    """One probe particle (the flexible tip apex)."""

    atomic_number: int = Field(ge=1, le=118, description="element of the probe particle (LJ parameters from the element table)")
    charge_e: float = Field(description="probe charge q in e (monopole), or the quadrupole strength (see multipole)")
    multipole: Literal["monopole", "quadrupole"] = Field(
        "monopole",
        description="monopole: one charge q at the probe centre. quadrupole: three charges q/d²·(1, -2, 1) at "
                    "z = +d, 0, -d relative to the probe (d = quadrupole_spacing_angstrom), a d_z² quadrupole "
                    "with Q_zz = Σ q_i z_i² = 2q e·Å², the point-charge form ppafm uses for tip='dz2'")
    quadrupole_spacing_angstrom: float = Field(0.1, gt=0.0, description="d of the quadrupole point charges")

    def point_charges(self) -> tuple[np.ndarray, np.ndarray]:
        """(charges in e, z offsets from the probe centre in Å), each of shape (n,) with n = 1 or 3."""
        if self.multipole == "monopole":
            return np.array([self.charge_e]), np.array([0.0])
        d = self.quadrupole_spacing_angstrom
        return self.charge_e / d**2 * np.array([1.0, -2.0, 1.0]), np.array([d, 0.0, -d])


def _default_tips() -> dict[str, TipConfig]:
    return {
        # Thesis / ASD-AFM data: CO as a -0.1 e monopole, Xe as +0.3 e.
        "CO": TipConfig(atomic_number=8, charge_e=-0.1),
        "Xe": TipConfig(atomic_number=54, charge_e=0.3),
    }


GEOMETRY_PRESETS: dict[str, dict] = {
    "thesis": {},
    # afm-ray 0.1's default: ppafm's AFMulator geometry since 2022 (probe 3.0 Å), fixed start distance
    "afm-ray-0.1": {"probe_length_angstrom": 3.0, "start_distance_angstrom": 5.0,
                    "start_distance_jitter_angstrom": 0.0, "tilt_radius_angstrom": 1.0},
    # ASD-AFM's generate_data.py: tipR0 4.0, distAbove 5.0 ± 0.25, maxTilt0 0.5, scan_dim (128, 128, 20) with
    # 10 df steps → 10 slices, pixel centres on linspace(−8, 8, 128) (16/127 Å apart: a 16.126 Å window here)
    "asdafm": {"probe_length_angstrom": 4.0, "start_distance_angstrom": 5.0, "start_distance_jitter_angstrom": 0.25,
               "tilt_radius_angstrom": 0.5, "num_slices": 10, "scan_size_angstrom": (16 * 128 / 127, 16 * 128 / 127)},
}
"""Named scan geometries (``preset: NAME`` in a sim config): the fields each sets unless the config gives them."""


class SimConfig(StrictModel):
    """All parameters of a simulation run; defaults reproduce the thesis scan (128 × 128 px, 16 × 16 Å, 20 slices).

    ``preset: NAME`` (a key of :data:`GEOMETRY_PRESETS`) fills in a named scan geometry; fields given
    beside it win. ``thesis`` is the defaults, ``afm-ray-0.1`` the geometry afm-ray used before the
    4.0 Å probe, ``asdafm`` the published ASD-AFM data generator's.
    """

    # -- scan geometry -------------------------------------------------------------------------------
    scan_size_angstrom: tuple[float, float] = Field((16.0, 16.0), description="window size (x, y) in Å, centred on the molecule's mean atom xy")
    scan_pixels: tuple[int, int] = Field((128, 128), description="pixels (nx, ny); pixel centres at origin + (i + 0.5)·size/n")
    num_slices: int = Field(20, ge=1, description="Δf slices in the output stack")
    dz_angstrom: float = Field(0.1, gt=0.0, description="tip approach step in Å")
    df_steps: int = Field(10, ge=1, description="oscillation peak-to-peak amplitude in z steps: A_pp = df_steps·dz (1.0 Å)")
    start_distance_angstrom: float = Field(
        6.0, description="tip anchor height at the first step above contact_z (module docstring). 6.0 with the thesis' "
                         "20 slices puts the closest slice where the published data's closest was (ASD-AFM: 5.0 with "
                         "10 slices); 5.5 leaves 58 % of QM9 views below min_clearance_angstrom with the 4.0 Å probe")
    start_distance_jitter_angstrom: float = Field(
        0.0, ge=0.0, description="per-sample uniform jitter ± of the start distance, Å (published generator with 10 "
                                 "slices: 0.25; thesis: 0, its 15-of-20 slice window varies the height over 0.5 Å)")
    tilt_radius_angstrom: float = Field(1.0, ge=0.0, description="per-sample probe rest offset drawn uniformly in a disk of this radius (thesis 3.4)")
    min_clearance_angstrom: float = Field(
        1.8, description="reject scans whose lowest probe rest position (bottom turning point) is less than this above the "
                         "highest nucleus: the probe would sit inside the repulsive core (C–O LJ contact is 3.6 Å)")

    # -- probe mechanics -----------------------------------------------------------------------------
    lateral_stiffness_n_per_m: tuple[float, float] = Field((0.25, 0.25), description="spring constants (x, y) holding the probe, N/m")
    radial_stiffness_n_per_m: float = Field(30.0, gt=0.0, description="radial spring constant (probe–tip bond length), N/m")
    probe_length_angstrom: float = Field(
        4.0, gt=0.0, description="rest length L of the probe–tip bond, Å: 4.0 as the published data generators "
                                 "(ASD-AFM, ml-spm: tipR0 = [0, 0, 4]); ppafm's AFMulator uses 3.0 since 2022")
    tips: dict[str, TipConfig] = Field(default_factory=_default_tips, description="probe particles by name")

    # -- cantilever (Giessibl's formula) -------------------------------------------------------------
    f0_hz: float = Field(30300.0, gt=0.0, description="cantilever resonance frequency, Hz")
    cantilever_stiffness_n_per_m: float = Field(1800.0, gt=0.0, description="cantilever spring constant k, N/m")

    # -- relaxation ----------------------------------------------------------------------------------
    relax_force_tolerance_ev_per_angstrom: float = Field(1e-4, gt=0.0, description="relaxation stops at |F_total| below this")
    relax_max_iterations: int = Field(
        256, ge=1, description="Newton iterations (force + Hessian evaluations) per z step; ~90 % of relaxations need ≤ 2, "
                               "99 % ≤ 4, the rest sit at snap instabilities")
    relax_max_step_angstrom: float = Field(0.1, gt=0.0, description="trust radius: the longest probe move per iteration")

    # -- where to run --------------------------------------------------------------------------------
    device: str | int = Field("auto", description="'auto' | 'cpu' | 'gpu' | 'nvidia:<N>' | device index | device-name substring")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if not isinstance(data, dict) or "preset" not in data:
            return data
        data = dict(data)
        name = data.pop("preset")
        if name not in GEOMETRY_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(GEOMETRY_PRESETS)}")
        return {**GEOMETRY_PRESETS[name], **data}

    @model_validator(mode="after")
    def _check(self) -> "SimConfig":
        if min(self.scan_pixels) < 1 or min(self.scan_size_angstrom) <= 0:
            raise ValueError("scan_pixels and scan_size_angstrom must be positive")
        if not self.tips:
            raise ValueError("tips: at least one tip is needed")
        tilt_limit = 0.9 * self.probe_length_angstrom
        if self.tilt_radius_angstrom > tilt_limit:
            raise ValueError(f"tilt_radius_angstrom {self.tilt_radius_angstrom} must stay below 0.9 × probe_length_angstrom ({tilt_limit:g})")
        return self

    # -- derived quantities --------------------------------------------------------------------------
    @property
    def num_z_steps(self) -> int:
        """Tip heights scanned: each output slice integrates Fz over df_steps + 1 consecutive heights."""
        return self.num_slices + self.df_steps

    @property
    def amplitude_peak_to_peak_angstrom(self) -> float:
        return self.df_steps * self.dz_angstrom

    @property
    def pixel_size_angstrom(self) -> tuple[float, float]:
        return (self.scan_size_angstrom[0] / self.scan_pixels[0], self.scan_size_angstrom[1] / self.scan_pixels[1])

    def without_randomness(self) -> "SimConfig":
        """The same scan with no per-sample tilt and no start-distance jitter (every sample as configured)."""
        return self.model_copy(update={"tilt_radius_angstrom": 0.0, "start_distance_jitter_angstrom": 0.0})

    def stiffness_ev_per_angstrom2(self) -> tuple[float, float, float]:
        """(k_x, k_y, k_radial) in eV/Å²."""
        kx, ky = self.lateral_stiffness_n_per_m
        return (kx * EV_PER_ANGSTROM2_PER_N_PER_M, ky * EV_PER_ANGSTROM2_PER_N_PER_M,
                self.radial_stiffness_n_per_m * EV_PER_ANGSTROM2_PER_N_PER_M)

    def tip(self, name: str) -> TipConfig:
        """The probe called ``name`` (case-insensitive), or :class:`InputError` listing the known tips."""
        for key, tip in self.tips.items():
            if key.lower() == str(name).lower():
                return tip
        raise InputError("tip", f"unknown tip {name!r}; known tips: {', '.join(self.tips)}")

    def tip_name(self, name: str) -> str:
        """The configured spelling of a tip name (``'co'`` → ``'CO'``)."""
        self.tip(name)
        return next(key for key in self.tips if key.lower() == str(name).lower())

    # -- files ---------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "SimConfig":
        """Load a YAML file (or a preset name, :func:`afm_ray.presets.find_config`); a top-level ``sim:`` section
        is accepted too. Errors name the file and field."""
        path = find_config(path, "sim")
        try:
            data = load_yaml_text(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise InputError(str(path), f"cannot read simulator config ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise InputError(str(path), f"not valid YAML ({one_line(exc)})") from None
        if isinstance(data, dict) and set(data) == {"sim"}:
            data = data["sim"]
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data, where: str = "sim config") -> "SimConfig":
        return validate(cls, data, where)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
