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
from afm_ray.sim.buffers import (FRESH, LOCAL_SIZE, DeviceBuffers, FreshHostArrays, Pending, PinnedHostArrays,
                                 round_up)
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
        return cls.draw_many(config, [seed])[0]

    @classmethod
    def draw_many(cls, config: SimConfig, seeds) -> list["ScanParams"]:
        """:meth:`draw` for each of ``seeds`` (ints in [0, 2⁶³)) at once; sample b's draw depends on ``seeds[b]`` alone."""
        seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1)
        uniform = seed_uniforms(seeds, 3)
        radius = (config.tilt_radius_angstrom * np.sqrt(uniform[:, 0])).tolist()
        angle = (2.0 * math.pi * uniform[:, 1]).tolist()
        start = (config.start_distance_angstrom
                 + config.start_distance_jitter_angstrom * (2.0 * uniform[:, 2] - 1.0)).tolist()
        # math's cos/sin per sample: NumPy's SIMD loops may round differently for a batch than for one value
        return [cls((r * math.cos(a), r * math.sin(a)), distance, seed)
                for r, a, distance, seed in zip(radius, angle, start, seeds.tolist())]

    @classmethod
    def fixed(cls, config: SimConfig, tilt_angstrom: tuple[float, float] = (0.0, 0.0)) -> "ScanParams":
        """No randomness: the given tilt and the configured start distance."""
        return cls((float(tilt_angstrom[0]), float(tilt_angstrom[1])), config.start_distance_angstrom, None)


def draw_scan_params(config: SimConfig, count: int, seed: int | None = None) -> list[ScanParams]:
    """``count`` independent draws; each sample's own seed (derived from ``seed`` and its index) is recorded in it."""
    return ScanParams.draw_many(config, derived_seeds(np.random.SeedSequence(seed), np.arange(count)))


# -- per-sample random numbers, vectorised ---------------------------------------------------------
# SplitMix64 (Steele, Lea & Flood 2014): a stream of 64-bit outputs per seed from one multiply-xorshift
# mix, so a whole batch's draws are a few NumPy operations and each sample's draws a function of its seed.
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (a bijection; arithmetic wraps modulo 2⁶⁴)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seed_uniforms(seeds: np.ndarray, count: int) -> np.ndarray:
    """(B, count) float64 uniform in [0, 1): the first ``count`` SplitMix64 outputs of each of ``seeds`` (B,) uint64."""
    states = np.asarray(seeds, dtype=np.uint64).reshape(-1, 1) + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN_GAMMA
    return (_mix64(states) >> np.uint64(11)) * 2.0**-53


def derived_seeds(sequence: np.random.SeedSequence, numbers) -> np.ndarray:
    """(B,) uint64 seeds in [0, 2⁶³), one per sample number in ``numbers``, each a function of (``sequence``, number) alone."""
    key = sequence.generate_state(2, np.uint64)
    numbers = np.asarray(numbers, dtype=np.int64).astype(np.uint64).reshape(-1)
    return _mix64(key[0] ^ _mix64(numbers * _GOLDEN_GAMMA + key[1])) >> np.uint64(1)


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
    """B molecules as concatenated arrays (N atoms in all), packed once for every kernel of a batch."""

    atoms: np.ndarray          # (N, 4) float32 x, y, z, q
    atom_range: np.ndarray     # (B, 2) int32 first atom, atom count
    pixel_origin: np.ndarray   # (B, 4) float32 x, y of pixel (0, 0)'s centre; z 0 (a scan sets its tip height)
    window_origin: np.ndarray  # (B, 2) float64
    top_atom_z: np.ndarray     # (B,)
    surface_top_z: np.ndarray  # (B,) highest z + R_min/2 over the atoms: the contact height less the probe's R_min/2
    r_half: np.ndarray         # (N,) float64 the atoms' R_min/2, Å
    epsilon: np.ndarray        # (N,) float64 the atoms' ε, eV
    numbers: np.ndarray        # (N,) int64
    positions: np.ndarray      # (N, 3) float64 Å
    charges: np.ndarray        # (N,) float64 e
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.atom_range.shape[0]

    def probe_terms(self, probe_number: int) -> tuple[np.ndarray, np.ndarray]:
        """(lj (N, 2) float32 C12, C6 of every atom mixed with the probe element; contact_z (B,) Å)."""
        probe_r, probe_eps = ELEMENT_TABLE.lj_params([probe_number])
        r_mix = self.r_half + probe_r[0]
        eps_mix = np.sqrt(self.epsilon * probe_eps[0])
        lj = np.column_stack([eps_mix * r_mix**12, 2.0 * eps_mix * r_mix**6]).astype(np.float32)
        return lj, self.surface_top_z + probe_r[0]


def _raw_arrays(molecule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numbers, positions, charges) of a Molecule-like object (or ase.Atoms), unchecked; AttributeError if not one."""
    numbers = np.asarray(molecule.numbers)
    positions = np.asarray(molecule.positions, dtype=np.float64)
    if getattr(molecule, "charges", None) is not None:
        charges = np.asarray(molecule.charges, dtype=np.float64)
    elif hasattr(molecule, "get_initial_charges"):
        charges = np.asarray(molecule.get_initial_charges(), dtype=np.float64)
    else:
        charges = np.zeros(len(numbers))
    return numbers, positions, charges


def _molecule_arrays(molecule, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numbers (N,), positions (N, 3) Å, charges (N,) e) of a Molecule-like object (or ase.Atoms), checked."""
    try:
        numbers, positions, charges = _raw_arrays(molecule)
    except AttributeError:
        raise InputError(where, "expected a molecule with .numbers, .positions and .charges "
                                f"(afm_ray.molecules.Molecule or ase.Atoms), got {type(molecule).__name__}") from None
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


def _concatenated_arrays(molecules: list, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(numbers (N,), positions (N, 3) Å, charges (N,) e, atoms per molecule (B,)), checked for the whole batch
    at once; on any fault the molecules are checked one by one, so the error names the first faulty one."""
    try:
        arrays = [_raw_arrays(molecule) for molecule in molecules]
    except AttributeError:
        arrays = None
    if arrays is not None and all(n.ndim == 1 and n.size and p.shape == (n.size, 3) and q.shape == (n.size,)
                                  for n, p, q in arrays):
        numbers, positions, charges = (np.concatenate(column) for column in zip(*arrays))
        if np.isfinite(positions).all() and np.isfinite(charges).all():
            try:
                numbers = ELEMENT_TABLE.check_numbers(numbers)
            except InputError:
                pass
            else:
                return numbers, positions, charges, np.array([n.size for n, _, _ in arrays])
    for molecule, name in zip(molecules, names):
        _molecule_arrays(molecule, name)
    raise AssertionError("a batch check failed that no single molecule fails")


# -- the simulator -------------------------------------------------------------------------------
class LoadedBatch:
    """A batch of molecules packed once and uploaded once to a :class:`Simulator`'s device.

    Every kernel of the batch reads these atoms: the Δf simulation of each tip, the Height / ES Map
    search and the rigid-probe fields (the LJ terms of each probe element are uploaded on first use).
    Made by :meth:`Simulator.load`; valid until that simulator loads the next batch (the device
    buffers are reused). ``len(batch)`` is B.
    """

    def __init__(self, packed: _PackedBatch, generation: int):
        self.packed = packed
        self.generation = generation
        self.contact_z: dict[int, np.ndarray] = {}  # probe atomic number → (B,) contact heights, Å

    def __len__(self) -> int:
        return len(self.packed)

    def atoms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The molecules' atoms, concatenated in batch order: (numbers (N,), positions (N, 3) Å, charges (N,) e,
        atoms per molecule (B,))."""
        packed = self.packed
        return packed.numbers, packed.positions, packed.charges, packed.atom_range[:, 1]


class Simulator:
    """Probe Particle Model AFM simulator on one OpenCL device.

    >>> sim = Simulator(SimConfig(), device="cpu")
    >>> df = sim.simulate([molecule], tip="CO")          # (1, 128, 128, 20) Hz, far → close

    ``device`` overrides ``config.device`` (see :func:`afm_ray.sim.device.select_device`).
    ``profile=True`` times every device command (OpenCL profiling) into :attr:`profile`.

    Every public method is one synchronous call. To run several computations on one batch with a
    single wait (what a simulation actor does): ``batch = sim.load(molecules)``, then
    :meth:`enqueue_run` / :meth:`enqueue_iso_surface` (each returns a :class:`Pending`), then
    :meth:`finish`, then each pending ``.result()``.
    """

    def __init__(self, config: SimConfig | None = None, device: str | int | cl.Device | None = None,
                 profile: bool = False):
        self.config = config if config is not None else SimConfig()
        self.device = select_device(self.config.device if device is None else device)
        self.context = cl.Context([self.device])
        self.queue = (cl.CommandQueue(self.context, properties=cl.command_queue_properties.PROFILING_ENABLE)
                      if profile else cl.CommandQueue(self.context))
        self.profile = DeviceProfile() if profile else None
        # commands enqueued since the last finish(): their events keep the host arrays they read alive
        # (pyopencl's NannyEvent would otherwise wait for the copy as soon as it is dropped) and time them
        self._in_flight: list[tuple[str, cl.Event, int]] = []
        self._generation = 0
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

    def run(self, molecules: Sequence | LoadedBatch, tip: str = "CO", scan_params: Sequence[ScanParams] | None = None,
            seed: int | None = None, return_fz: bool = False, return_probe_positions: bool = False) -> SimulationResult:
        """Simulate a batch; ``scan_params`` (one per molecule) default to draws seeded by ``seed``.

        ``return_fz`` adds the relaxed Fz before Giessibl's formula, ``return_probe_positions`` the
        relaxed probe positions and the Newton iterations each relaxation took (see SimulationResult).
        """
        pending = self.enqueue_run(molecules, tip, scan_params, seed, return_fz, return_probe_positions)
        self.finish()
        return pending.result()

    def load(self, molecules: Sequence) -> LoadedBatch:
        """Pack ``molecules`` and upload their atoms once (see :class:`LoadedBatch`); the copies are enqueued, not awaited."""
        packed = self._pack(list(molecules))
        self._generation += 1
        for name, array in (("atoms", packed.atoms), ("atom_range", packed.atom_range), ("origin", packed.pixel_origin),
                            ("top_z", packed.top_atom_z.astype(np.float32))):
            self._upload(name, array)
        return LoadedBatch(packed, self._generation)

    def enqueue_run(self, molecules: Sequence | LoadedBatch, tip: str = "CO",
                    scan_params: Sequence[ScanParams] | None = None, seed: int | None = None,
                    return_fz: bool = False, return_probe_positions: bool = False,
                    df_out: np.ndarray | None = None, df_channel: int = 0) -> Pending[SimulationResult]:
        """:meth:`run`'s device work, enqueued; ``.result()`` of what it returns is the :class:`SimulationResult`.

        ``df_out``: a C-contiguous float32 array to read Δf into instead of a new one, (B, nx, ny,
        n_slices) or (B, C, nx, ny, n_slices) with this tip's stacks at channel ``df_channel``
        (the device copies each sample's stack straight to its place); ``result().df`` is then its view.
        """
        config = self.config
        tip_config = config.tip(tip)
        molecules = molecules if isinstance(molecules, LoadedBatch) else list(molecules)
        count = len(molecules)
        nxy = config.scan_pixels[0] * config.scan_pixels[1]
        n_steps, n_slices = config.num_z_steps, config.num_slices
        self._check_memory(count, {"fz": count * n_steps * nxy * 4, "df": count * nxy * n_slices * 4,
                                   "positions": count * n_steps * nxy * 16 if return_probe_positions else 0})
        batch = molecules if isinstance(molecules, LoadedBatch) else self.load(molecules)
        if scan_params is None:
            scan_params = draw_scan_params(config, count, seed)
        scan_params = list(scan_params)
        if len(scan_params) != count:
            raise InputError("scan_params", f"{len(scan_params)} scan parameter sets for {count} molecules")
        inputs = self._inputs(batch, tip_config.atomic_number)
        probe_rest, tip_z = self._scan_heights(batch, tip_config.atomic_number, scan_params)
        pixel_origin = batch.packed.pixel_origin.copy()
        pixel_origin[:, 2] = tip_z[:, 0]

        df_shape = (count, *config.scan_pixels, n_slices)
        channels = df_out.shape[1] if df_out is not None and df_out.ndim == 5 else 1
        if df_out is not None and (df_out.dtype != np.float32 or not df_out.flags.c_contiguous or df_out.ndim not in (4, 5)
                                   or (df_out.shape[0], *df_out.shape[-3:]) != df_shape or not 0 <= df_channel < channels):
            raise InputError("df_out", f"expected a C-contiguous float32 array of shape {df_shape} or (B, C, nx, ny, "
                                       f"n_slices) with channel {df_channel} < C, got {df_out.dtype} {df_out.shape}")
        fz_buffer = self._buffers.at_least("fz", count * n_steps * nxy * 4)
        df_buffer = self._buffers.at_least("df", count * nxy * n_slices * 4)
        positions_buffer = self._buffers.at_least("positions", count * n_steps * nxy * 16 if return_probe_positions else 16)
        unconverged = np.zeros(count, np.int32)
        unconverged_buffer = self._upload("unconverged", unconverged)
        charges, charge_z = tip_config.point_charges()
        kx, ky, kr = config.stiffness_ev_per_angstrom2()

        relax = self._kernels["relax_scan"]
        relax.set_args(inputs["atoms"], inputs["lj"], inputs["atom_range"], self._upload("scan_origin", pixel_origin),
                       self._upload("probe_rest", probe_rest),
                       _float4(charges), _float4(charge_z), np.int32(len(charges)),
                       _float4((kx, ky, kr, config.probe_length_angstrom)),
                       _float4((*config.pixel_size_angstrom, config.dz_angstrom)),
                       np.int32(config.scan_pixels[0]), np.int32(config.scan_pixels[1]), np.int32(n_steps),
                       np.int32(config.relax_max_iterations), np.float32(config.relax_force_tolerance_ev_per_angstrom**2),
                       np.float32(config.relax_max_step_angstrom), fz_buffer, unconverged_buffer,
                       np.int32(return_probe_positions), positions_buffer)
        self.track("relax_scan kernel", cl.enqueue_nd_range_kernel(self.queue, relax, (round_up(nxy), count),
                                                                    (LOCAL_SIZE, 1)))
        convolve = self._kernels["giessibl_df"]
        convolve.set_args(fz_buffer, self._weights, np.int32(n_steps), np.int32(n_slices), np.int32(nxy), df_buffer)
        self.track("giessibl_df kernel", cl.enqueue_nd_range_kernel(
            self.queue, convolve, (round_up(nxy * n_slices), count), (LOCAL_SIZE, 1)))

        reads = []
        if df_out is None:
            df = df_out = np.empty(df_shape, np.float32)
        else:
            df = df_out if df_out.ndim == 4 else df_out[:, df_channel]
        reads.append(self._read_rows("read Δf", df_out, df_buffer, count, df_channel))
        reads.append(self.track("read Δf", cl.enqueue_copy(self.queue, unconverged, unconverged_buffer, is_blocking=False),
                                 unconverged.nbytes))
        fz = positions = None
        if return_fz:
            fz = np.empty((count, n_steps, *config.scan_pixels), np.float32)
            reads.append(self.track("read Fz", cl.enqueue_copy(self.queue, fz, fz_buffer, is_blocking=False), fz.nbytes))
        if return_probe_positions:
            positions = np.empty((count, n_steps, *config.scan_pixels, 4), np.float32)
            reads.append(self.track("read probe positions", cl.enqueue_copy(self.queue, positions, positions_buffer,
                                                                             is_blocking=False), positions.nbytes))
        half_span = 0.5 * config.amplitude_peak_to_peak_angstrom
        packed = batch.packed

        def result() -> SimulationResult:
            moved_positions = None if positions is None else np.moveaxis(positions, 1, 3)
            return SimulationResult(
                df=df, window_origin=packed.window_origin, tip_z=tip_z,
                slice_tip_z=tip_z[:, :n_slices] - half_span, top_atom_z=packed.top_atom_z,
                probe_rest=probe_rest[:, :3].astype(np.float64), scan_params=scan_params,
                unconverged=unconverged, tip=config.tip_name(tip),
                fz=None if fz is None else np.ascontiguousarray(np.moveaxis(fz, 1, -1)),
                probe_positions=None if positions is None else moved_positions[..., :3].astype(np.float64),
                relax_iterations=None if positions is None else moved_positions[..., 3].astype(np.int32))

        return Pending(reads, result)

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
        batch = self.load(molecules)
        z_values = self._z_reference(batch.packed, relative_to)[:, None] + planes[None, :]
        return self._rigid(batch, tip_config, z_values.astype(np.float32), strides=(planes.size, 1, 0),
                           n_planes=planes.size, field_z=_is_field_z(electrostatics))

    def iso_surface(self, molecules: Sequence | LoadedBatch, highest_angstrom: float, plane_dz_angstrom: float,
                    n_planes: int, iso_force_ev_per_angstrom: float, cut_depth_angstrom: float, tip: str = "CO",
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
        pending = self.enqueue_iso_surface(molecules, highest_angstrom, plane_dz_angstrom, n_planes,
                                           iso_force_ev_per_angstrom, cut_depth_angstrom, tip, electrostatics,
                                           stride_planes, refine_margin_ev_per_angstrom)
        self.finish()
        return pending.result()

    def enqueue_iso_surface(self, molecules: Sequence | LoadedBatch, highest_angstrom: float, plane_dz_angstrom: float,
                            n_planes: int, iso_force_ev_per_angstrom: float, cut_depth_angstrom: float,
                            tip: str = "CO", electrostatics: str = "potential", stride_planes: int = 1,
                            refine_margin_ev_per_angstrom: float = 0.0,
                            host: FreshHostArrays | PinnedHostArrays = FRESH) -> Pending[tuple[np.ndarray, np.ndarray]]:
        """:meth:`iso_surface`'s device work, enqueued; the two maps are read into ``host``'s arrays."""
        tip_config = self.config.tip(tip)
        batch = molecules if isinstance(molecules, LoadedBatch) else self.load(molecules)
        count, nxy = len(batch), self.config.scan_pixels[0] * self.config.scan_pixels[1]
        inputs = self._inputs(batch, tip_config.atomic_number)
        surface_buffer = self._buffers.at_least("iso_surface", count * nxy * 4)
        value_buffer = self._buffers.at_least("iso_value", count * nxy * 4)
        status = np.zeros(count, np.int32)
        status_buffer = self._upload("iso_status", status)
        bound_buffer = self._upload("iso_bound", np.full(count, n_planes, np.int32))
        charges, charge_z = tip_config.point_charges()
        common = (inputs["atoms"], inputs["lj"], inputs["atom_range"], inputs["scan_origin"], inputs["top_z"],
                  _float4(charges), _float4(charge_z), np.int32(len(charges)),
                  _float4((*self.config.pixel_size_angstrom, self.config.dz_angstrom)),
                  np.int32(self.config.scan_pixels[0]), np.int32(self.config.scan_pixels[1]),
                  np.float32(highest_angstrom), np.float32(plane_dz_angstrom), np.int32(n_planes),
                  np.float32(iso_force_ev_per_angstrom))
        bound = self._kernels["iso_search_bound"]
        bound.set_args(*common, bound_buffer)
        atoms_per_sample = int(batch.packed.atom_range[:, 1].max())
        self.track("iso search kernels", cl.enqueue_nd_range_kernel(self.queue, bound, (atoms_per_sample, count), None))
        kernel = self._kernels["iso_surface"]
        kernel.set_args(*common, np.int32(_is_field_z(electrostatics)), bound_buffer,
                        np.int32(math.ceil(cut_depth_angstrom / plane_dz_angstrom - 1e-6)), np.int32(stride_planes),
                        np.float32(iso_force_ev_per_angstrom - refine_margin_ev_per_angstrom),
                        surface_buffer, value_buffer, status_buffer)
        self.track("iso search kernels", cl.enqueue_nd_range_kernel(self.queue, kernel, (round_up(nxy), count),
                                                                     (LOCAL_SIZE, 1)))
        surface = host.empty("iso_surface", (count, *self.config.scan_pixels))
        value = host.empty("iso_value", surface.shape)
        reads = [self.track("read iso maps", cl.enqueue_copy(self.queue, array, buffer, is_blocking=False), array.nbytes)
                 for array, buffer in ((surface, surface_buffer), (value, value_buffer), (status, status_buffer))]
        names = batch.packed.names

        def result() -> tuple[np.ndarray, np.ndarray]:
            if status.any():
                raise InputError("height map", f"Fz already exceeds the iso level {iso_force_ev_per_angstrom} eV/Å at "
                                               f"the highest plane ({highest_angstrom:g} Å) for "
                                               f"{names[int(status.argmax())]}: raise highest_plane_angstrom")
            return surface, value

        return Pending(reads, result)

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
        batch = self.load(molecules)
        z_values = heights.reshape(len(molecules), -1) + self._z_reference(batch.packed, relative_to)[:, None]
        nxy = z_values.shape[1]
        _, potential = self._rigid(batch, None, z_values.astype(np.float32), strides=(nxy, 0, 1), n_planes=1)
        return potential[..., 0]

    def pixel_centres(self, molecule) -> tuple[np.ndarray, np.ndarray]:
        """(x (nx,), y (ny,)) pixel-centre coordinates in Å of the window this simulator puts around ``molecule``."""
        packed = self._pack([molecule])
        (sx, sy), (nx, ny) = self.config.pixel_size_angstrom, self.config.scan_pixels
        return packed.pixel_origin[0, 0] + sx * np.arange(nx), packed.pixel_origin[0, 1] + sy * np.arange(ny)

    def finish(self) -> None:
        """Wait until every enqueued command has run (the one wait of a batch); adds their times to :attr:`profile`."""
        self.queue.finish()
        if self.profile is not None:
            for stage, event, nbytes in self._in_flight:
                self.profile.add(stage, (event.profile.end - event.profile.start) * 1e-9, nbytes)
        self._in_flight.clear()

    # -- internals -------------------------------------------------------------------------------
    def _scan_heights(self, batch: LoadedBatch, probe_number: int,
                      scan_params: list[ScanParams]) -> tuple[np.ndarray, np.ndarray]:
        """Probe rest offsets (B, 4) float32 and tip-anchor heights (B, n_z_steps); rejects scans that come too close.
        Needs the probe's contact heights, which :meth:`_inputs` sets."""
        config, packed = self.config, batch.packed
        contact_z = batch.contact_z[probe_number]
        tilt = np.array([params.tilt_angstrom for params in scan_params], dtype=np.float64).reshape(-1, 2)
        start = np.array([params.start_distance_angstrom for params in scan_params], dtype=np.float64)
        lateral2 = tilt[:, 0] * tilt[:, 0] + tilt[:, 1] * tilt[:, 1]
        too_tilted = np.flatnonzero(lateral2 >= (0.9 * config.probe_length_angstrom) ** 2)
        if too_tilted.size:
            b = int(too_tilted[0])
            raise InputError(f"scan_params[{b}]", f"tilt {math.sqrt(lateral2[b]):.2f} Å is too large for a "
                                                  f"{config.probe_length_angstrom} Å probe")
        probe_rest = np.zeros((len(scan_params), 4), np.float32)
        probe_rest[:, :2] = tilt
        probe_rest[:, 2] = -np.sqrt(config.probe_length_angstrom**2 - lateral2)
        tip_z = (contact_z + start)[:, None] - np.arange(config.num_z_steps) * config.dz_angstrom
        lowest_probe = tip_z[:, -1] + probe_rest[:, 2] - packed.top_atom_z
        too_close = np.flatnonzero(lowest_probe < config.min_clearance_angstrom)
        if too_close.size:
            b = int(too_close[0])
            raise InputError(packed.names[b], f"scan too close: at the lowest step the probe's rest position is "
                                              f"{lowest_probe[b]:.2f} Å above the highest nucleus, below min_clearance_angstrom "
                                              f"= {config.min_clearance_angstrom} (raise start_distance_angstrom "
                                              f"{scan_params[b].start_distance_angstrom:g} or use fewer slices)")
        return probe_rest, tip_z

    def _pack(self, molecules: list) -> _PackedBatch:
        """Check and pack a batch in a few NumPy operations over all its atoms (per-molecule values by segment)."""
        if not molecules:
            raise InputError("molecules", "empty batch: nothing to simulate")
        config = self.config
        names = [f"molecule {getattr(molecule, 'id', None) or b}" for b, molecule in enumerate(molecules)]
        numbers, positions, charges, counts = _concatenated_arrays(molecules, names)
        starts = np.cumsum(counts) - counts
        (size_x, size_y), (sx, sy) = config.scan_size_angstrom, config.pixel_size_angstrom
        # per molecule, as a mean over its own atoms: a segment sum of the batch could round differently
        centre = np.array([positions[first:first + count, :2].mean(axis=0) for first, count in zip(starts, counts)])
        extent = np.maximum.reduceat(np.abs(positions[:, :2] - np.repeat(centre, counts, axis=0)), starts, axis=0)
        outside = np.flatnonzero((extent[:, 0] > 0.5 * size_x) | (extent[:, 1] > 0.5 * size_y))
        if outside.size:
            b = int(outside[0])
            raise InputError(names[b], f"the scan window ({size_x:g} × {size_y:g} Å, scan_size_angstrom) does not contain the "
                                       f"molecule: atoms reach {extent[b, 0]:.2f} Å in x and {extent[b, 1]:.2f} Å in y from its centre")
        window_origin = centre - 0.5 * np.array([size_x, size_y])
        pixel_origin = np.zeros((len(molecules), 4), np.float32)
        pixel_origin[:, :2] = window_origin + 0.5 * np.array([sx, sy])
        r_half, epsilon = ELEMENT_TABLE.lj_params(numbers)
        return _PackedBatch(
            atoms=np.column_stack([positions, charges]).astype(np.float32),
            atom_range=np.column_stack([starts, counts]).astype(np.int32), pixel_origin=pixel_origin,
            window_origin=window_origin, top_atom_z=np.maximum.reduceat(positions[:, 2], starts),
            surface_top_z=np.maximum.reduceat(positions[:, 2] + r_half, starts), r_half=r_half, epsilon=epsilon,
            numbers=numbers, positions=positions, charges=charges, names=names)

    @staticmethod
    def _z_reference(packed: _PackedBatch, relative_to: str) -> np.ndarray:
        if relative_to == "top_atom":
            return packed.top_atom_z
        if relative_to == "absolute":
            return np.zeros_like(packed.top_atom_z)
        raise InputError("relative_to", f"expected 'top_atom' or 'absolute', got {relative_to!r}")

    def _rigid(self, batch: LoadedBatch, tip_config, z_values: np.ndarray, strides: tuple[int, int, int],
               n_planes: int, field_z: bool = False) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        count = len(batch)
        nxy = config.scan_pixels[0] * config.scan_pixels[1]
        # the potential alone (no tip) still runs the force loop: any probe element's LJ terms do
        inputs = self._inputs(batch, tip_config.atomic_number if tip_config is not None else 8)
        z_buffer = self._upload("z_values", np.ascontiguousarray(z_values, np.float32))
        fz_buffer = self._buffers.at_least("rigid_fz", count * nxy * n_planes * 4)
        potential_buffer = self._buffers.at_least("rigid_potential", count * nxy * n_planes * 4)
        charges, charge_z = tip_config.point_charges() if tip_config is not None else (np.zeros(1), np.zeros(1))
        kernel = self._kernels["rigid_fields"]
        kernel.set_args(inputs["atoms"], inputs["lj"], inputs["atom_range"], inputs["scan_origin"],
                        _float4(charges), _float4(charge_z), np.int32(len(charges)),
                        _float4((*config.pixel_size_angstrom, config.dz_angstrom)),
                        np.int32(config.scan_pixels[0]), np.int32(config.scan_pixels[1]), z_buffer,
                        *(np.int32(s) for s in strides), np.int32(n_planes), np.int32(field_z), fz_buffer,
                        potential_buffer)
        self.track("rigid fields kernel", cl.enqueue_nd_range_kernel(self.queue, kernel, (round_up(nxy), count),
                                                                      (LOCAL_SIZE, 1)))
        fz = np.empty((count, *config.scan_pixels, n_planes), np.float32)
        potential = np.empty_like(fz)
        self.track("read rigid fields", cl.enqueue_copy(self.queue, fz, fz_buffer, is_blocking=False), fz.nbytes)
        self.track("read rigid fields", cl.enqueue_copy(self.queue, potential, potential_buffer, is_blocking=False),
                    potential.nbytes)
        self.finish()
        return fz, potential

    def _inputs(self, batch: LoadedBatch, probe_number: int) -> dict[str, cl.Buffer]:
        """The device buffers of a loaded batch, with the LJ terms of ``probe_number`` (uploaded on first use).

        ``scan_origin`` holds the pixel origins with z 0: the iso search and the rigid fields read only x, y."""
        if batch.generation != self._generation:
            raise RuntimeError("this LoadedBatch was replaced on the device by a later Simulator.load(): load it again")
        lj_name = f"lj {probe_number}"
        if probe_number not in batch.contact_z:
            lj, batch.contact_z[probe_number] = batch.packed.probe_terms(probe_number)
            self._upload(lj_name, lj)
        return {name: self._buffers[name] for name in ("atoms", "atom_range", "top_z")} | {
            "lj": self._buffers[lj_name], "scan_origin": self._buffers["origin"]}

    def _upload(self, name: str, array: np.ndarray) -> cl.Buffer:
        """Enqueue a copy of a host array into the (reused) device buffer ``name``; kept alive until :meth:`finish`."""
        array = np.ascontiguousarray(array)
        buffer = self._buffers.at_least(name, array.nbytes)
        self.track("upload", cl.enqueue_copy(self.queue, buffer, array, is_blocking=False), array.nbytes)
        return buffer

    def _read_rows(self, stage: str, host: np.ndarray, buffer: cl.Buffer, count: int, channel: int) -> cl.Event:
        """Enqueue the read of ``count`` equal rows of ``buffer`` into ``host`` (B, …) or channel ``channel`` of (B, C, …)."""
        if host.ndim == 4 or host.shape[1] == 1:
            return self.track(stage, cl.enqueue_copy(self.queue, host, buffer, is_blocking=False), host.nbytes)
        row = host[0, 0].nbytes
        event = cl.enqueue_copy(self.queue, host, buffer, buffer_origin=(0, 0), host_origin=(channel * row, 0),
                                region=(row, count), buffer_pitches=(row,), host_pitches=(host.shape[1] * row,),
                                is_blocking=False)
        return self.track(stage, event, row * count)

    def track(self, stage: str, event: cl.Event, nbytes: int = 0) -> cl.Event:
        """Hold a command enqueued on :attr:`queue` (and the host array it copies) until :meth:`finish`, which
        adds its device time to :attr:`profile` under ``stage``."""
        self._in_flight.append((stage, event, nbytes))
        return event

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
