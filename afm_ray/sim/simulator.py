"""The :class:`Simulator`: batched Probe Particle Model simulations on one OpenCL device.

See :mod:`afm_ray.sim` for the physics, axes and units. The simulator owns its OpenCL context,
queue, compiled program and device buffers; buffers are reused across calls and grow when a batch
needs more room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Sequence

import numpy as np
import pyopencl as cl
import pyopencl.cltypes as cltypes

from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError
from afm_ray.sim.buffers import LOCAL_SIZE, DeviceBuffers, round_up
from afm_ray.sim.config import EV_PER_ANGSTROM2_PER_N_PER_M, SimConfig
from afm_ray.sim.device import describe, select_device



# -- per-sample scan parameters ------------------------------------------------------------------
@dataclass(frozen=True)
class ScanParams:
    """Per-sample randomised scan settings.

    ``tilt_angstrom``: lateral (x, y) offset of the probe's rest position from below the tip anchor.
    ``start_distance_angstrom``: tip anchor height at the first step above the contact height.
    ``seed``: the integer that reproduces this draw with :meth:`draw` (None if set by hand).
    """

    tilt_angstrom: tuple[float, float] = (0.0, 0.0)
    start_distance_angstrom: float = 6.0
    seed: int | None = None

    @classmethod
    def draw(cls, config: SimConfig, seed: int) -> "ScanParams":
        """Random tilt (uniform in a disk of ``tilt_radius_angstrom``) and start distance (± jitter)."""
        rng = np.random.default_rng(seed)
        radius = config.tilt_radius_angstrom * math.sqrt(rng.random())
        angle = 2.0 * math.pi * rng.random()
        jitter = config.start_distance_jitter_angstrom * (2.0 * rng.random() - 1.0)
        return cls((radius * math.cos(angle), radius * math.sin(angle)), config.start_distance_angstrom + jitter, int(seed))

    @classmethod
    def fixed(cls, config: SimConfig, tilt_angstrom: tuple[float, float] = (0.0, 0.0)) -> "ScanParams":
        """No randomness: the given tilt and the configured start distance."""
        return cls((float(tilt_angstrom[0]), float(tilt_angstrom[1])), config.start_distance_angstrom, None)


def draw_scan_params(config: SimConfig, count: int, seed: int | None = None) -> list[ScanParams]:
    """``count`` independent draws; each sample's own seed (spawned from ``seed``) is recorded in it."""
    children = np.random.SeedSequence(seed).spawn(count)
    return [ScanParams.draw(config, int(child.generate_state(1, dtype=np.uint64)[0] >> 1)) for child in children]


# -- results -------------------------------------------------------------------------------------
@dataclass
class SimulationResult:
    """Output of :meth:`Simulator.run` for B samples (Å, Hz).

    df:                 (B, nx, ny, n_slices) float32 frequency shift, slices ordered far → close.
    window_origin:      (B, 2) x, y of the scan window's lower corner (pixel (0,0)'s outer corner), Å.
    tip_z:              (B, n_z_steps) absolute tip-anchor heights scanned, far → close, Å.
    slice_tip_z:        (B, n_slices) oscillation-centre tip-anchor height of each output slice, Å.
    top_atom_z:         (B,) highest nucleus z, Å.
    probe_rest:         (B, 3) rest offset of the probe from the tip anchor, Å.
    scan_params:        the per-sample ScanParams used (tilts, start distances, seeds).
    unconverged:        (B,) relaxations (pixel × height) that hit relax_max_iterations.
    fz:                 (B, nx, ny, n_z_steps) relaxed sample force Fz in eV/Å if requested, else None.
    probe_positions:    (B, nx, ny, n_z_steps, 3) relaxed probe positions in Å if requested, else None.
    relax_iterations:   (B, nx, ny, n_z_steps) force evaluations each relaxation took, with probe_positions.
    """

    df: np.ndarray
    window_origin: np.ndarray
    tip_z: np.ndarray
    slice_tip_z: np.ndarray
    top_atom_z: np.ndarray
    probe_rest: np.ndarray
    scan_params: list[ScanParams]
    unconverged: np.ndarray
    tip: str
    fz: np.ndarray | None = None
    probe_positions: np.ndarray | None = None
    relax_iterations: np.ndarray | None = None


@dataclass
class DeviceProfile:
    """Device time (s, from OpenCL profiling) and bytes moved per stage, summed since :meth:`reset`."""

    seconds: dict[str, float] = field(default_factory=dict)
    nbytes: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, seconds: float, nbytes: int = 0) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.nbytes[stage] = self.nbytes.get(stage, 0) + nbytes

    def reset(self) -> None:
        self.seconds.clear()
        self.nbytes.clear()


# -- Giessibl's formula --------------------------------------------------------------------------
def giessibl_weights(df_steps: int, dz_angstrom: float, f0_hz: float, k_n_per_m: float) -> np.ndarray:
    """Weights w (df_steps + 1,) in Hz per eV/Å so that Δf = Σ_j w_j Fz(z_top − j·dz).

    Giessibl: Δf(z_c) = f0/(π k A²) ∫_{−A}^{A} Fz(z_c − q) q/√(A² − q²) dq, with the oscillation
    spanning the df_steps + 1 samples (peak-to-peak 2A = df_steps·dz, centre z_c = z_top − A).
    Fz is taken piecewise linear between samples and each segment is integrated exactly, so the
    singular turning points need no special care.
    """
    n = int(df_steps)
    amplitude = 0.5 * n * dz_angstrom
    q = np.linspace(-amplitude, amplitude, n + 1)  # q_j = z_c − z_j: −A at the top sample
    inside = np.clip(amplitude**2 - q**2, 0.0, None)
    w0 = -np.sqrt(inside)  # ∫ q/√(A²−q²) dq
    w1 = 0.5 * amplitude**2 * np.arcsin(np.clip(q / amplitude, -1.0, 1.0)) - 0.5 * q * np.sqrt(inside)  # ∫ q²/√(A²−q²) dq
    i0 = np.diff(w0)
    linear = (np.diff(w1) - q[:-1] * i0) / dz_angstrom  # ∫ t·q/√(A²−q²) dq on each segment, t ∈ [0, 1]
    weights = np.zeros(n + 1)
    weights[:-1] += i0 - linear
    weights[1:] += linear
    k_ev = k_n_per_m * EV_PER_ANGSTROM2_PER_N_PER_M
    return weights * f0_hz / (math.pi * k_ev * amplitude**2)


# -- molecules in, packed arrays out -------------------------------------------------------------
@dataclass
class _PackedBatch:
    atoms: np.ndarray          # (N_total, 4) float32 x, y, z, q
    lj: np.ndarray             # (N_total, 2) float32 C12, C6
    atom_range: np.ndarray     # (B, 2) int32
    pixel_origin: np.ndarray   # (B, 4) float32
    window_origin: np.ndarray  # (B, 2) float64
    top_atom_z: np.ndarray     # (B,)
    contact_z: np.ndarray      # (B,)
    names: list[str] = field(default_factory=list)


def _molecule_arrays(molecule, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numbers (N,), positions (N, 3) Å, charges (N,) e) of a Molecule-like object (or ase.Atoms)."""
    try:
        numbers = np.asarray(molecule.numbers)
        positions = np.asarray(molecule.positions, dtype=np.float64)
    except AttributeError:
        raise InputError(where, "expected a molecule with .numbers, .positions and .charges "
                                f"(afm_ray.molecules.Molecule or ase.Atoms), got {type(molecule).__name__}") from None
    if hasattr(molecule, "charges") and molecule.charges is not None:
        charges = np.asarray(molecule.charges, dtype=np.float64)
    elif hasattr(molecule, "get_initial_charges"):
        charges = np.asarray(molecule.get_initial_charges(), dtype=np.float64)
    else:
        charges = np.zeros(len(numbers))
    if numbers.ndim != 1 or numbers.size == 0:
        raise InputError(where, "molecule has no atoms")
    if positions.shape != (numbers.size, 3):
        raise InputError(where, f"positions must have shape ({numbers.size}, 3), got {positions.shape}")
    if charges.shape != (numbers.size,):
        raise InputError(where, f"charges must have shape ({numbers.size},), got {charges.shape}")
    if not np.isfinite(positions).all():
        bad = int(np.flatnonzero(~np.isfinite(positions).all(axis=1))[0])
        raise InputError(where, f"atom {bad} has a non-finite position {positions[bad].tolist()}")
    if not np.isfinite(charges).all():
        raise InputError(where, f"atom {int(np.flatnonzero(~np.isfinite(charges))[0])} has a non-finite charge")
    return ELEMENT_TABLE.check_numbers(numbers, where), positions, charges


# -- the simulator -------------------------------------------------------------------------------
class Simulator:
    """Probe Particle Model AFM simulator on one OpenCL device.

    >>> sim = Simulator(SimConfig(), device="cpu")
    >>> df = sim.simulate([molecule], tip="CO")          # (1, 128, 128, 20) Hz, far → close

    ``device`` overrides ``config.device`` (see :func:`afm_ray.sim.device.select_device`).
    ``profile=True`` times every device command (OpenCL profiling) into :attr:`profile`.
    """

    def __init__(self, config: SimConfig | None = None, device: str | int | cl.Device | None = None,
                 profile: bool = False):
        self.config = config if config is not None else SimConfig()
        self.device = select_device(self.config.device if device is None else device)
        self.context = cl.Context([self.device])
        self.queue = (cl.CommandQueue(self.context, properties=cl.command_queue_properties.PROFILING_ENABLE)
                      if profile else cl.CommandQueue(self.context))
        self.profile = DeviceProfile() if profile else None
        self._events: list[tuple[str, cl.Event, int]] = []
        source = resources.files("afm_ray.sim").joinpath("kernels.cl").read_text(encoding="utf-8")
        charge_counts = {len(tip.point_charges()[0]) for tip in self.config.tips.values()}
        constants = [f"-D DF_WEIGHTS={self.config.df_steps + 1}"]
        if len(charge_counts) == 1:
            constants.append(f"-D PROBE_CHARGES={charge_counts.pop()}")
        try:
            self.program = cl.Program(self.context, source).build(options=["-cl-mad-enable", *constants])
        except cl.Error as exc:
            raise RuntimeError(f"afm_ray.sim kernels failed to build on {describe(self.device)}: {exc}") from None
        self._kernels = {name: cl.Kernel(self.program, name)
                         for name in ("relax_scan", "giessibl_df", "rigid_fields", "iso_search_bound", "iso_surface")}
        self._buffers = DeviceBuffers(self.context)
        weights = giessibl_weights(self.config.df_steps, self.config.dz_angstrom, self.config.f0_hz,
                                   self.config.cantilever_stiffness_n_per_m)
        self._weights = cl.Buffer(self.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                                  hostbuf=weights.astype(np.float32))

    @property
    def device_name(self) -> str:
        return describe(self.device)

    # -- public API ------------------------------------------------------------------------------
    def simulate(self, molecules: Sequence, tip: str = "CO", scan_params: Sequence[ScanParams] | None = None,
                 seed: int | None = None) -> np.ndarray:
        """Δf stacks (B, nx, ny, n_slices) float32 in Hz, slices ordered far → close. See :meth:`run`."""
        return self.run(molecules, tip=tip, scan_params=scan_params, seed=seed).df

    def run(self, molecules: Sequence, tip: str = "CO", scan_params: Sequence[ScanParams] | None = None,
            seed: int | None = None, return_fz: bool = False, return_probe_positions: bool = False) -> SimulationResult:
        """Simulate a batch; ``scan_params`` (one per molecule) default to draws seeded by ``seed``.

        ``return_fz`` adds the relaxed Fz before Giessibl's formula, ``return_probe_positions`` the
        relaxed probe positions and the Newton iterations each relaxation took (see SimulationResult).
        """
        config = self.config
        tip_config = config.tip(tip)
        molecules = list(molecules)
        if not molecules:
            raise InputError("molecules", "empty batch: nothing to simulate")
        if scan_params is None:
            scan_params = draw_scan_params(config, len(molecules), seed)
        scan_params = list(scan_params)
        if len(scan_params) != len(molecules):
            raise InputError("scan_params", f"{len(scan_params)} scan parameter sets for {len(molecules)} molecules")

        batch = self._pack(molecules, tip_config.atomic_number)
        count = len(molecules)
        probe_rest, tip_z = self._scan_heights(batch, scan_params)
        batch.pixel_origin[:, 2] = tip_z[:, 0]

        nxy = config.scan_pixels[0] * config.scan_pixels[1]
        n_steps, n_slices = config.num_z_steps, config.num_slices
        self._check_memory(count, {"fz": count * n_steps * nxy * 4, "df": count * nxy * n_slices * 4,
                                   "positions": count * n_steps * nxy * 16 if return_probe_positions else 0})
        fz_buffer = self._buffers.at_least("fz", count * n_steps * nxy * 4)
        df_buffer = self._buffers.at_least("df", count * nxy * n_slices * 4)
        positions_buffer = self._buffers.at_least("positions", count * n_steps * nxy * 16 if return_probe_positions else 16)
        unconverged = np.zeros(count, np.int32)
        inputs = self._upload(batch, probe_rest=probe_rest, unconverged=unconverged)
        charges, charge_z = tip_config.point_charges()
        kx, ky, kr = config.stiffness_ev_per_angstrom2()
        global_size = (round_up(nxy), count)

        relax = self._kernels["relax_scan"]
        relax.set_args(inputs["atoms"], inputs["lj"], inputs["atom_range"], inputs["pixel_origin"], inputs["probe_rest"],
                       _float4(charges), _float4(charge_z), np.int32(len(charges)),
                       _float4((kx, ky, kr, config.probe_length_angstrom)),
                       _float4((*config.pixel_size_angstrom, config.dz_angstrom)),
                       np.int32(config.scan_pixels[0]), np.int32(config.scan_pixels[1]), np.int32(n_steps),
                       np.int32(config.relax_max_iterations), np.float32(config.relax_force_tolerance_ev_per_angstrom**2),
                       np.float32(config.relax_max_step_angstrom), fz_buffer, inputs["unconverged"],
                       np.int32(return_probe_positions), positions_buffer)
        self._track("relax_scan kernel", cl.enqueue_nd_range_kernel(self.queue, relax, global_size, (LOCAL_SIZE, 1)))
        convolve = self._kernels["giessibl_df"]
        convolve.set_args(fz_buffer, self._weights, np.int32(n_steps), np.int32(n_slices), np.int32(nxy), df_buffer)
        self._track("giessibl_df kernel", cl.enqueue_nd_range_kernel(
            self.queue, convolve, (round_up(nxy * n_slices), count), (LOCAL_SIZE, 1)))

        df = np.empty((count, *config.scan_pixels, n_slices), np.float32)
        self._track("read Δf", cl.enqueue_copy(self.queue, df, df_buffer, is_blocking=False), df.nbytes)
        self._track("read Δf", cl.enqueue_copy(self.queue, unconverged, inputs["unconverged"], is_blocking=False),
                    unconverged.nbytes)
        fz = None
        if return_fz:
            fz = np.empty((count, n_steps, *config.scan_pixels), np.float32)
            cl.enqueue_copy(self.queue, fz, fz_buffer, is_blocking=False)
        positions = None
        if return_probe_positions:
            positions = np.empty((count, n_steps, *config.scan_pixels, 4), np.float32)
            cl.enqueue_copy(self.queue, positions, positions_buffer, is_blocking=False)
        self._finish()
        if fz is not None:
            fz = np.ascontiguousarray(np.moveaxis(fz, 1, -1))
        if positions is not None:
            positions = np.ascontiguousarray(np.moveaxis(positions, 1, 3))
        half_span = 0.5 * config.amplitude_peak_to_peak_angstrom
        return SimulationResult(
            df=df, window_origin=batch.window_origin, tip_z=tip_z,
            slice_tip_z=tip_z[:, :n_slices] - half_span, top_atom_z=batch.top_atom_z,
            probe_rest=probe_rest[:, :3].astype(np.float64), scan_params=scan_params,
            unconverged=unconverged, tip=config.tip_name(tip), fz=fz,
            probe_positions=None if positions is None else positions[..., :3].astype(np.float64),
            relax_iterations=None if positions is None else positions[..., 3].astype(np.int32))

    def rigid_probe_fields(self, molecules: Sequence, z_planes_angstrom, tip: str = "CO",
                           relative_to: str = "top_atom", electrostatics: str = "potential") -> tuple[np.ndarray, np.ndarray]:
        """Rigid-probe Fz and the sample's electrostatic potential (or field E_z) on the scan pixel grid.

        ``z_planes_angstrom`` (nz,) are probe heights above each molecule's highest nucleus
        (``relative_to="top_atom"``) or absolute z (``"absolute"``). Returns
        ``(fz, electrostatic)``, each (B, nx, ny, nz) float32: fz in eV/Å is the z force of the whole
        force field (LJ + Coulomb with the tip's charges) on a probe held at the point;
        ``electrostatics="potential"`` gives Σ k_e q_i / r in V of the sample's point charges,
        ``"ez"`` the z component of their field, Σ k_e q_i (z − z_i) / r³ in V/Å. Pixels as in :meth:`run`.
        """
        planes = np.atleast_1d(np.asarray(z_planes_angstrom, dtype=np.float64))
        if planes.ndim != 1 or not np.isfinite(planes).all():
            raise InputError("z_planes_angstrom", "expected a 1-D array of finite heights in Å")
        tip_config = self.config.tip(tip)
        batch = self._pack(list(molecules), tip_config.atomic_number)
        z_values = self._z_reference(batch, relative_to)[:, None] + planes[None, :]
        return self._rigid(batch, tip_config, z_values.astype(np.float32), strides=(planes.size, 1, 0), n_planes=planes.size,
                           field_z=_is_field_z(electrostatics))

    def iso_surface(self, molecules: Sequence, highest_angstrom: float, plane_dz_angstrom: float, n_planes: int,
                    iso_force_ev_per_angstrom: float, cut_depth_angstrom: float, tip: str = "CO",
                    electrostatics: str = "potential", stride_planes: int = 1,
                    refine_margin_ev_per_angstrom: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Where a rigid probe descending each pixel's column first feels Fz > iso, and the electrostatics there.

        The probe visits planes ``highest − k·dz`` (k < ``n_planes``, Å above each molecule's highest
        nucleus) until the z force of the whole force field on it exceeds ``iso_force_ev_per_angstrom``
        (repulsive, +z); the crossing is interpolated linearly between that plane and the one above,
        and so is the sample's potential (V) or field E_z (V/Å, ``electrostatics="ez"``) evaluated on
        those two planes. Columns are searched only down to ``cut_depth_angstrom`` (+ one plane) below
        the highest crossing found over the atoms: deeper crossings are cut from the Height Map anyway.
        The probe steps ``stride_planes`` planes at a time (1: every plane) and goes back plane by plane
        over every stride that ends above ``iso − refine_margin_ev_per_angstrom`` or crosses iso.
        Returns ``(surface, value)``, each (B, nx, ny) float32: surface in Å above the highest
        nucleus (NaN where no crossing down to that depth), value 0 there. Only these two maps leave
        the device; raises :class:`InputError` if Fz exceeds iso at the highest plane already.
        """
        tip_config = self.config.tip(tip)
        molecules = list(molecules)
        batch = self._pack(molecules, tip_config.atomic_number)
        count, nxy = len(molecules), self.config.scan_pixels[0] * self.config.scan_pixels[1]
        inputs = self._upload(batch, top_z=batch.top_atom_z.astype(np.float32))
        surface_buffer = self._buffers.at_least("iso_surface", count * nxy * 4)
        value_buffer = self._buffers.at_least("iso_value", count * nxy * 4)
        status = np.zeros(count, np.int32)
        status_buffer = self._buffers.at_least("iso_status", status.nbytes)
        cl.enqueue_copy(self.queue, status_buffer, status, is_blocking=False)
        bound_buffer = self._buffers.at_least("iso_bound", status.nbytes)
        cl.enqueue_copy(self.queue, bound_buffer, np.full(count, n_planes, np.int32), is_blocking=False)
        charges, charge_z = tip_config.point_charges()
        common = (inputs["atoms"], inputs["lj"], inputs["atom_range"], inputs["pixel_origin"], inputs["top_z"],
                  _float4(charges), _float4(charge_z), np.int32(len(charges)),
                  _float4((*self.config.pixel_size_angstrom, self.config.dz_angstrom)),
                  np.int32(self.config.scan_pixels[0]), np.int32(self.config.scan_pixels[1]),
                  np.float32(highest_angstrom), np.float32(plane_dz_angstrom), np.int32(n_planes),
                  np.float32(iso_force_ev_per_angstrom))
        bound = self._kernels["iso_search_bound"]
        bound.set_args(*common, bound_buffer)
        atoms_per_sample = int(batch.atom_range[:, 1].max())
        self._track("iso search kernels", cl.enqueue_nd_range_kernel(self.queue, bound, (atoms_per_sample, count), None))
        kernel = self._kernels["iso_surface"]
        kernel.set_args(*common, np.int32(_is_field_z(electrostatics)), bound_buffer,
                        np.int32(math.ceil(cut_depth_angstrom / plane_dz_angstrom - 1e-6)), np.int32(stride_planes),
                        np.float32(iso_force_ev_per_angstrom - refine_margin_ev_per_angstrom),
                        surface_buffer, value_buffer, status_buffer)
        self._track("iso search kernels", cl.enqueue_nd_range_kernel(self.queue, kernel, (round_up(nxy), count),
                                                                     (LOCAL_SIZE, 1)))
        surface = np.empty((count, *self.config.scan_pixels), np.float32)
        value = np.empty_like(surface)
        for host, buffer in ((surface, surface_buffer), (value, value_buffer), (status, status_buffer)):
            self._track("read iso maps", cl.enqueue_copy(self.queue, host, buffer, is_blocking=False), host.nbytes)
        self._finish()
        if status.any():
            raise InputError("height map", f"Fz already exceeds the iso level {iso_force_ev_per_angstrom} eV/Å at the "
                                           f"highest plane ({highest_angstrom:g} Å) for {batch.names[int(status.argmax())]}: "
                                           "raise highest_plane_angstrom")
        return surface, value

    def electrostatic_potential_on_surface(self, molecules: Sequence, heights_angstrom, relative_to: str = "top_atom") -> np.ndarray:
        """Sample electrostatic potential (V) at one height per pixel, e.g. on the Height-Map surface.

        ``heights_angstrom`` (B, nx, ny): z of each pixel's point, above the highest nucleus or
        absolute (``relative_to``). Returns (B, nx, ny) float32 in V.
        """
        molecules = list(molecules)
        heights = np.asarray(heights_angstrom, dtype=np.float64)
        expected = (len(molecules), *self.config.scan_pixels)
        if heights.shape != expected:
            raise InputError("heights_angstrom", f"expected shape {expected}, got {heights.shape}")
        batch = self._pack(molecules, probe_number=8)  # the probe only sets contact heights, unused here
        z_values = heights.reshape(len(molecules), -1) + self._z_reference(batch, relative_to)[:, None]
        nxy = z_values.shape[1]
        _, potential = self._rigid(batch, None, z_values.astype(np.float32), strides=(nxy, 0, 1), n_planes=1)
        return potential[..., 0]

    def pixel_centres(self, molecule) -> tuple[np.ndarray, np.ndarray]:
        """(x (nx,), y (ny,)) pixel-centre coordinates in Å of the window this simulator puts around ``molecule``."""
        batch = self._pack([molecule], 8)
        (sx, sy), (nx, ny) = self.config.pixel_size_angstrom, self.config.scan_pixels
        return batch.pixel_origin[0, 0] + sx * np.arange(nx), batch.pixel_origin[0, 1] + sy * np.arange(ny)

    # -- internals -------------------------------------------------------------------------------
    def _scan_heights(self, batch: "_PackedBatch", scan_params: list[ScanParams]) -> tuple[np.ndarray, np.ndarray]:
        """Probe rest offsets (B, 4) float32 and tip-anchor heights (B, n_z_steps); rejects scans that come too close."""
        config = self.config
        probe_rest = np.zeros((len(scan_params), 4), np.float32)
        tip_z = np.zeros((len(scan_params), config.num_z_steps))
        steps = np.arange(config.num_z_steps) * config.dz_angstrom
        for b, params in enumerate(scan_params):
            tx, ty = params.tilt_angstrom
            lateral2 = tx * tx + ty * ty
            if lateral2 >= (0.9 * config.probe_length_angstrom) ** 2:
                raise InputError(f"scan_params[{b}]", f"tilt {math.sqrt(lateral2):.2f} Å is too large for a "
                                                      f"{config.probe_length_angstrom} Å probe")
            probe_rest[b, :3] = (tx, ty, -math.sqrt(config.probe_length_angstrom**2 - lateral2))
            tip_z[b] = batch.contact_z[b] + params.start_distance_angstrom - steps
            lowest_probe = tip_z[b, -1] + probe_rest[b, 2] - batch.top_atom_z[b]
            if lowest_probe < config.min_clearance_angstrom:
                raise InputError(batch.names[b], f"scan too close: at the lowest step the probe's rest position is "
                                                 f"{lowest_probe:.2f} Å above the highest nucleus, below min_clearance_angstrom "
                                                 f"= {config.min_clearance_angstrom} (raise start_distance_angstrom "
                                                 f"{params.start_distance_angstrom:g} or use fewer slices)")
        return probe_rest, tip_z

    def _pack(self, molecules: list, probe_number: int) -> _PackedBatch:
        if not molecules:
            raise InputError("molecules", "empty batch: nothing to simulate")
        config = self.config
        probe_r, probe_eps = ELEMENT_TABLE.lj_params([probe_number])
        (size_x, size_y), (sx, sy) = config.scan_size_angstrom, config.pixel_size_angstrom
        atoms, lj, ranges, names = [], [], [], []
        pixel_origin = np.zeros((len(molecules), 4), np.float32)
        window_origin = np.zeros((len(molecules), 2))
        top_atom_z = np.zeros(len(molecules))
        contact_z = np.zeros(len(molecules))
        first = 0
        for b, molecule in enumerate(molecules):
            name = f"molecule {getattr(molecule, 'id', None) or b}"
            names.append(name)
            numbers, positions, charges = _molecule_arrays(molecule, name)
            r_half, eps = ELEMENT_TABLE.lj_params(numbers)
            centre = positions[:, :2].mean(axis=0)
            extent = np.abs(positions[:, :2] - centre).max(axis=0)
            if extent[0] > 0.5 * size_x or extent[1] > 0.5 * size_y:
                raise InputError(name, f"the scan window ({size_x:g} × {size_y:g} Å, scan_size_angstrom) does not contain the "
                                       f"molecule: atoms reach {extent[0]:.2f} Å in x and {extent[1]:.2f} Å in y from its centre")
            window_origin[b] = centre - 0.5 * np.array([size_x, size_y])
            pixel_origin[b, :2] = window_origin[b] + 0.5 * np.array([sx, sy])
            top_atom_z[b] = positions[:, 2].max()
            contact_z[b] = (positions[:, 2] + r_half).max() + probe_r[0]
            r_mix = r_half + probe_r[0]
            eps_mix = np.sqrt(eps * probe_eps[0])
            atoms.append(np.column_stack([positions, charges]))
            lj.append(np.column_stack([eps_mix * r_mix**12, 2.0 * eps_mix * r_mix**6]))
            ranges.append((first, numbers.size))
            first += numbers.size
        return _PackedBatch(np.concatenate(atoms).astype(np.float32), np.concatenate(lj).astype(np.float32),
                            np.asarray(ranges, np.int32), pixel_origin, window_origin, top_atom_z, contact_z, names)

    @staticmethod
    def _z_reference(batch: _PackedBatch, relative_to: str) -> np.ndarray:
        if relative_to == "top_atom":
            return batch.top_atom_z
        if relative_to == "absolute":
            return np.zeros_like(batch.top_atom_z)
        raise InputError("relative_to", f"expected 'top_atom' or 'absolute', got {relative_to!r}")

    def _rigid(self, batch: _PackedBatch, tip_config, z_values: np.ndarray, strides: tuple[int, int, int],
               n_planes: int, field_z: bool = False) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        count = batch.atom_range.shape[0]
        nxy = config.scan_pixels[0] * config.scan_pixels[1]
        inputs = self._upload(batch, z_values=np.ascontiguousarray(z_values, np.float32))
        fz_buffer = self._buffers.at_least("rigid_fz", count * nxy * n_planes * 4)
        potential_buffer = self._buffers.at_least("rigid_potential", count * nxy * n_planes * 4)
        charges, charge_z = tip_config.point_charges() if tip_config is not None else (np.zeros(1), np.zeros(1))
        kernel = self._kernels["rigid_fields"]
        kernel.set_args(inputs["atoms"], inputs["lj"], inputs["atom_range"], inputs["pixel_origin"],
                        _float4(charges), _float4(charge_z), np.int32(len(charges)),
                        _float4((*config.pixel_size_angstrom, config.dz_angstrom)),
                        np.int32(config.scan_pixels[0]), np.int32(config.scan_pixels[1]), inputs["z_values"],
                        *(np.int32(s) for s in strides), np.int32(n_planes), np.int32(field_z), fz_buffer,
                        potential_buffer)
        cl.enqueue_nd_range_kernel(self.queue, kernel, (round_up(nxy), count), (LOCAL_SIZE, 1))
        fz = np.empty((count, *config.scan_pixels, n_planes), np.float32)
        potential = np.empty_like(fz)
        cl.enqueue_copy(self.queue, fz, fz_buffer, is_blocking=False)
        cl.enqueue_copy(self.queue, potential, potential_buffer, is_blocking=False)
        self._finish()
        return fz, potential

    def _upload(self, batch: _PackedBatch, **extra: np.ndarray) -> dict[str, cl.Buffer]:
        """Copy the batch's host arrays into (reused) device buffers."""
        arrays = {"atoms": batch.atoms, "lj": batch.lj, "atom_range": batch.atom_range,
                  "pixel_origin": batch.pixel_origin, **extra}
        buffers = {}
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            buffers[name] = self._buffers.at_least(name, array.nbytes)
            self._track("upload", cl.enqueue_copy(self.queue, buffers[name], array, is_blocking=True), array.nbytes)
        return buffers

    def _track(self, stage: str, event: cl.Event, nbytes: int = 0) -> None:
        if self.profile is not None:
            self._events.append((stage, event, nbytes))

    def _finish(self) -> None:
        self.queue.finish()
        for stage, event, nbytes in self._events:
            self.profile.add(stage, (event.profile.end - event.profile.start) * 1e-9, nbytes)
        self._events.clear()

    def _check_memory(self, count: int, needs: dict[str, int]) -> None:
        """Refuse, before any allocation, a batch whose buffers (``needs``: bytes by name) the device cannot hold."""
        per_buffer, total = int(self.device.max_mem_alloc_size), int(self.device.global_mem_size)
        largest = max(needs, key=needs.get)
        need = sum(needs.values())
        if needs[largest] <= per_buffer and need <= 0.9 * total:
            return
        fits = min(count * per_buffer // max(needs[largest], 1), int(count * 0.9 * total) // max(need, 1))
        advice = (f"use at most {fits} samples per batch" if fits else
                  "even one sample is too large: use fewer pixels or heights")
        raise InputError("batch", f"{count} samples of {self.config.scan_pixels[0]}×{self.config.scan_pixels[1]} px × "
                                  f"{self.config.num_z_steps} heights need {need / 2**20:.0f} MiB on {self.device_name} "
                                  f"(buffer {largest!r} {needs[largest] / 2**20:.0f} MiB), but it allows "
                                  f"{per_buffer / 2**20:.0f} MiB per buffer and has {total / 2**20:.0f} MiB: {advice}")

    def release(self) -> None:
        """Free device buffers now (they are otherwise freed with the simulator)."""
        self._buffers.release()


def _is_field_z(electrostatics: str) -> bool:
    if electrostatics not in ("potential", "ez"):
        raise InputError("electrostatics", f"expected 'potential' or 'ez', got {electrostatics!r}")
    return electrostatics == "ez"


def _float4(values) -> np.ndarray:
    padded = [0.0, 0.0, 0.0, 0.0]
    for i, value in enumerate(values):
        padded[i] = float(value)
    return cltypes.make_float4(*padded)
