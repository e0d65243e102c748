"""Matching experiments to simulated rotations of a known molecule (thesis section 4.1, Fig. 17).

The thesis validates the DSH model on experiments by simulating several hundred evenly spread
rotations of the imaged molecule, predicting the vdW Spheres descriptor for the experiments and
for every simulation, and pairing each experiment with the rotation of highest cross-correlation.
Comparing predicted descriptors rather than AFM images makes the match independent of the exact
scan heights and robust to experimental noise.

Steps (:func:`match_experiments`):

1. **Rotations** (:func:`evenly_spread_rotations`): ``n_directions`` viewing directions on a
   Fibonacci sphere; rotation r turns direction r of the molecule's frame to +z (towards the tip)
   along the shortest arc (:func:`afm_ray.molecules.rotations.rotations_to_z`). With
   ``n_azimuths`` > 1 each is also turned about z by ``360°·a / n_azimuths`` (a molecule lying on a
   surface has any in-plane orientation), giving ``n_directions · n_azimuths`` rotations, index
   ``direction · n_azimuths + a``.
2. **Simulation** of every rotation with the model's own simulator settings (``config.sim``) but
   no tilt and no start-height jitter (:func:`matching_sim_config`), in batches on this machine's
   OpenCL device, or, when Ray is connected, by :class:`RotationSimulator` actors placed like the
   model's simulation actors (its ``pipeline`` settings) and fed by
   :class:`~afm_ray.pipeline.BatchStream`. Both run the same code and give equal stacks.
3. **Prediction** of vdW Spheres for simulations and experiments, both prepared by
   :func:`afm_ray.predict.preprocess.prepare_stack` with the same slice choice.
4. **Ranking** by normalised cross-correlation (:func:`normalised_cross_correlation`): the
   experiment's map without a border of ``max_shift_angstrom`` (default 2 Å: the simulation window
   is centred on the molecule, an experiment's scan wherever the operator put it) is slid over
   each simulated map, and the score is the best Pearson r over those offsets, in [−1, 1].
5. **Outputs** (:func:`write_match_outputs`): the ranking table, the simulated maps, the best
   geometry per experiment and the figure; :func:`ranked_rotations` lists a ranking with its
   shifts in Å and directions, for tables and consoles.

**Descriptor mode** (``predictor=None``, CLI ``--model descriptor``) skips simulation and
network: the simulated side is the exact vdW Spheres descriptor of each rotation and each
"experiment" is a molecule geometry file whose vdW Spheres are computed directly. It checks the
rotation search and the ranking without a trained model; it says nothing about AFM data.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from afm_ray.config import StrictModel
from afm_ray.descriptors import vdw_spheres
from afm_ray.descriptors.geometry import ScanWindow
from afm_ray.errors import InputError
from afm_ray.molecules.molecule import Molecule
from afm_ray.molecules.rotations import fibonacci_sphere, rotations_to_z
from afm_ray.pipeline.cluster import assigned_opencl_device
from afm_ray.pipeline.dispatch import BatchMaker
from afm_ray.pipeline.settings import PipelineSettings
from afm_ray.predict.inputs import AfmStack
from afm_ray.predict.predictor import Predictor
from afm_ray.predict.preprocess import PreparedStack, PrepareSettings, prepare_stack
from afm_ray.samples.plan import BatchSpec
from afm_ray.samples.sample_batch import SampleBatch
from afm_ray.sim import ScanParams, SimConfig

MATCH_OUTPUT = "vdw_spheres"
DEFAULT_DIRECTIONS = 500
DEFAULT_MAX_SHIFT_ANGSTROM = 2.0
DEFAULT_SIM_BATCH = 32
_NCC_CHUNK = 64  # candidate maps per FFT call: bounds memory (a few 128² float64 arrays per map)


# -- rotations ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RotationSet:
    """Candidate orientations of the molecule.

    Attributes:
        rotations: (R, 3, 3) matrices applied about the molecule's centroid (``Molecule.rotated``);
            afterwards the tip looks down −z.
        directions: (R, 3) unit vectors of the molecule's own frame that end up pointing at the tip.
        azimuths_deg: (R,) extra turn about z after the direction is aligned, degrees.
    """

    rotations: np.ndarray
    directions: np.ndarray
    azimuths_deg: np.ndarray

    def __len__(self) -> int:
        return int(self.rotations.shape[0])


def evenly_spread_rotations(n_directions: int = DEFAULT_DIRECTIONS, n_azimuths: int = 1) -> RotationSet:
    """``n_directions · n_azimuths`` rotations (step 1 of the module docstring), deterministic."""
    if n_directions < 1 or n_azimuths < 1:
        raise InputError("--rotations", f"need at least one direction and azimuth, got {n_directions}, {n_azimuths}")
    directions = fibonacci_sphere(n_directions)
    aligned = rotations_to_z(directions)
    angles = np.arange(n_azimuths) * (360.0 / n_azimuths)
    turns = np.stack([_rotation_about_z(a) for a in angles])  # (A, 3, 3)
    rotations = np.einsum("aij,djk->daik", turns, aligned).reshape(-1, 3, 3)
    return RotationSet(rotations, np.repeat(directions, n_azimuths, axis=0), np.tile(angles, n_directions))


def _rotation_about_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_angle_deg(rotations: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between each of (R, 3, 3) ``rotations`` and one (3, 3) ``reference``."""
    trace = np.einsum("rij,ij->r", np.asarray(rotations), np.asarray(reference))  # tr(Rᵀ·ref)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


# -- cross-correlation ----------------------------------------------------------------------------
def _box_sums(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, nx, ny) → (N, nx − sx + 1, ny − sy + 1): sums over every ``size`` window (integral image)."""
    padded = torch.nn.functional.pad(maps.cumsum(1).cumsum(2), (1, 0, 1, 0))
    sx, sy = size
    return padded[:, sx:, sy:] - padded[:, :-sx, sy:] - padded[:, sx:, :-sy] + padded[:, :-sx, :-sy]


def normalised_cross_correlation(reference: np.ndarray, candidates: np.ndarray,
                                 max_shift_px: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Best normalised cross-correlation of each candidate map with ``reference`` over lateral shifts.

    Template matching (Lewis' fast normalised cross-correlation): the reference minus a border of
    ``max_shift_px`` is the template; for every shift s the candidate window under it lies fully
    inside the candidate, and the score is Pearson's r between template and that window (each
    standardised over the window). No padding enters a score, so larger shifts are not penalised.

    Args:
        reference: (nx, ny) map (the experiment's).
        candidates: (R, nx, ny) maps (the simulations').
        max_shift_px: (mx, my): shifts s with |s_x| ≤ mx, |s_y| ≤ my pixels are tried (capped so
            that the template keeps at least one pixel).

    Returns:
        ``(scores (R,), shifts (R, 2) int)``: score = max over s of r(reference(p), candidate(p − s))
        over the template pixels p, in [−1, 1] (0 where either side is constant); shift = the s
        that reached it (the candidate moved by +s lines up with the reference).
    """
    reference = torch.as_tensor(np.asarray(reference, dtype=np.float64))
    candidates = torch.as_tensor(np.asarray(candidates, dtype=np.float64))
    nx, ny = reference.shape
    if candidates.ndim != 3 or tuple(candidates.shape[1:]) != (nx, ny):
        raise ValueError(f"candidates must be (R, {nx}, {ny}), got {tuple(candidates.shape)}")
    mx, my = (max(0, min(int(m), (n - 1) // 2)) for m, n in zip(max_shift_px, (nx, ny)))
    template = reference[mx:nx - mx, my:ny - my]
    size = tuple(template.shape)
    n_pixels = size[0] * size[1]
    template = template - template.mean()
    template_norm = template.square().sum().sqrt()
    # circular correlation on the (nx, ny) grid: the offsets o ≤ 2m used below never wrap
    template_spectrum = torch.fft.rfft2(template, s=(nx, ny)).conj()
    scores, shifts = [], []
    for start in range(0, candidates.shape[0], _NCC_CHUNK):
        chunk = candidates[start:start + _NCC_CHUNK]
        products = torch.fft.irfft2(torch.fft.rfft2(chunk) * template_spectrum, s=(nx, ny))
        products = products[:, :2 * mx + 1, :2 * my + 1]  # Σ_q t(q)·c(o + q) for window offsets o
        # Σ t·(c − mean c) = Σ t·c as t has mean 0; the window's spread from box sums of c and c²
        spread = (_box_sums(chunk.square(), size) - _box_sums(chunk, size).square() / n_pixels).clamp(min=0).sqrt()
        denominator = template_norm * spread
        r = torch.where(denominator > 1e-12 * max(float(template_norm), 1.0),
                        products / torch.where(denominator > 0, denominator, torch.ones_like(denominator)),
                        torch.zeros_like(products))
        best, where = r.reshape(r.shape[0], -1).max(dim=1)
        offset_x, offset_y = where.numpy() // (2 * my + 1), where.numpy() % (2 * my + 1)
        scores.append(best.clamp(-1.0, 1.0).numpy())
        shifts.append(np.stack([mx - offset_x, my - offset_y], axis=1))  # window at o = m − s
    return np.concatenate(scores), np.concatenate(shifts).astype(np.int64)


# -- simulation -----------------------------------------------------------------------------------
def matching_sim_config(sim: SimConfig) -> SimConfig:
    """The model's simulator settings without random tilt or start-height jitter."""
    return sim.without_randomness()


class RotationSimulator(BatchMaker):
    """Simulates rotations of one molecule, untilted: the body of a local simulator or a Ray actor.

    Args:
        molecule: the molecule, in its file's frame.
        rotations: (R, 3, 3) matrices (``Molecule.rotated``).
        sim_config: simulator settings (:func:`matching_sim_config` of the model's).
        tip: probe name.
        device: OpenCL device (see :func:`afm_ray.sim.device.select_device`), None = the config's; in a Ray
            actor also ``"ray"``, the GPU Ray assigned it.
    """

    def __init__(self, molecule: Molecule, rotations: np.ndarray, sim_config: SimConfig, tip: str,
                 device: str | None = None):
        from afm_ray.sim import Simulator

        self.molecule = molecule
        self.rotations = np.asarray(rotations, dtype=np.float64)
        self.tip = tip
        self.scan_params = ScanParams.fixed(sim_config)
        self.simulator = Simulator(sim_config, device=assigned_opencl_device(device))

    def make_batch(self, spec: BatchSpec) -> SampleBatch:
        """The stacks of rotations ``spec.samples``: ``df`` (B, 1, nx, ny, nz) float32 Hz, its one channel this
        simulator's tip (``df[:, 0]`` is the (B, nx, ny, nz) stack), no targets; ``samples`` the rotation indices."""
        started = time.perf_counter()
        batch = [self.molecule.rotated(self.rotations[index]) for index in spec.samples]
        df = self.simulator.simulate(batch, tip=self.tip, scan_params=[self.scan_params] * len(batch))
        return SampleBatch(np.asarray(spec.samples, dtype=np.int64), df=df[:, None],
                           produce_seconds=time.perf_counter() - started)

    def release(self) -> None:
        self.simulator.release()


def simulate_rotations(molecule: Molecule, rotations: np.ndarray, sim_config: SimConfig, tip: str = "CO",
                       batch_size: int = DEFAULT_SIM_BATCH, actors: int = 0, placement: PipelineSettings | None = None,
                       device: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices (B,), df (B, nx, ny, nz) float32 Hz)`` for every rotation, in any order.

    ``actors`` = 0: one :class:`RotationSimulator` here, on OpenCL ``device``. ``actors`` > 0
    (Ray connected): that many :class:`RotationSimulator` actors placed like the model's
    simulation actors (``placement`` = its ``pipeline`` settings: CPUs, GPUs, custom resources,
    OpenCL device), fed through :class:`~afm_ray.pipeline.BatchStream` (a crashed actor's batch is
    sent again). Both paths run the same code on the same untilted scans, so they give equal stacks.
    """
    if batch_size < 1:
        raise InputError("--batch-size", f"must be ≥ 1, got {batch_size}")
    rotations = np.asarray(rotations, dtype=np.float64)
    specs = [BatchSpec("match", 0, index, np.arange(start, min(start + batch_size, len(rotations))), (index,))
             for index, start in enumerate(range(0, len(rotations), batch_size))]
    if actors == 0:
        simulator = RotationSimulator(molecule, rotations, sim_config, tip, device)
        try:
            for spec in specs:
                yield spec.samples, simulator.make_batch(spec).df[:, 0]
        finally:
            simulator.release()
        return
    import ray

    from afm_ray.pipeline import BatchStream
    from afm_ray.pipeline.actors import actor_options, check_cluster_fits, stop_actors

    placement = placement or PipelineSettings()
    check_cluster_fits({"CPU": placement.sim_num_cpus, "GPU": placement.sim_num_gpus, **placement.sim_resources},
                       "match: each simulation actor")
    remote = ray.remote(RotationSimulator).options(**actor_options(placement))
    workers = [remote.remote(molecule, rotations, sim_config, tip, placement.opencl_device) for _ in range(actors)]
    try:
        stream = BatchStream(workers, specs, batch_timeout_s=placement.batch_timeout_s,
                             max_attempts=placement.max_attempts_per_batch)
        for spec, batch in stream:
            if batch is None:
                raise RuntimeError(f"rotations {spec.samples[0]}–{spec.samples[-1]} failed on every attempt; "
                                   "see the log")
            yield spec.samples, batch.df[:, 0]
    finally:
        stop_actors(workers)


# -- matching -------------------------------------------------------------------------------------
class MatchSettings(StrictModel):
    """How rotations are simulated, predicted and compared (``afm-ray match`` options)."""

    max_shift_angstrom: float = Field(DEFAULT_MAX_SHIFT_ANGSTROM, ge=0.0,
                                      description="largest lateral offset tried between experiment and simulation, Å")
    batch_size: int = Field(DEFAULT_SIM_BATCH, ge=1, description="rotations per simulator call")
    actors: int = Field(0, ge=0, description="simulation actors on Ray (0 = simulate in this process)")
    opencl_device: str | None = Field(None, description="OpenCL device of the local simulator (None = the model's)")
    prepare: PrepareSettings = Field(default_factory=PrepareSettings, description="slice choice and resampling")


@dataclass(frozen=True)
class Ranking:
    """How well every rotation matches one experiment.

    Attributes:
        name: the experiment's name.
        scores: (R,) best normalised cross-correlation per rotation, in [−1, 1].
        shifts_px: (R, 2) the lateral shift (px) of the simulation that reached it.
        experiment_map: (nx, ny) the experiment's vdW Spheres (Å).
        experiment: the prepared experiment input, or None in descriptor mode.
    """

    name: str
    scores: np.ndarray
    shifts_px: np.ndarray
    experiment_map: np.ndarray
    experiment: PreparedStack | None = None

    @property
    def order(self) -> np.ndarray:
        """Rotation indices, best first (ties keep rotation order)."""
        return np.argsort(-self.scores, kind="stable")

    @property
    def best(self) -> int:
        return int(self.order[0])


@dataclass(frozen=True)
class MatchResult:
    """Rankings of all experiments against one set of simulated rotations.

    Attributes:
        rotations: the candidates.
        simulated_maps: (R, nx, ny) vdW Spheres of every rotation (predicted, or exact in
            descriptor mode), Å.
        rankings: one per experiment, in input order.
        window: the maps' scan window.
        simulation_seconds, prediction_seconds, ranking_seconds: wall time spent simulating (or
            computing descriptors), predicting the rotations' maps, and cross-correlating.
    """

    rotations: RotationSet
    simulated_maps: np.ndarray
    rankings: list[Ranking]
    window: ScanWindow
    simulation_seconds: float
    prediction_seconds: float
    ranking_seconds: float


def simulated_vdw_maps(molecule: Molecule, rotations: RotationSet, predictor: Predictor | None, window: ScanWindow,
                       settings: MatchSettings = MatchSettings()) -> tuple[np.ndarray, float, float]:
    """(R, nx, ny) vdW Spheres of every rotation, seconds simulating, seconds predicting.

    With a ``predictor``: simulate, prepare like an experiment, predict. Without (descriptor
    mode): the exact descriptor on ``window``.
    """
    if predictor is None:
        started = time.perf_counter()
        maps = np.concatenate([vdw_spheres([molecule.rotated(r) for r in rotations.rotations[start:start + 256]], window)
                               for start in range(0, len(rotations), 256)])
        return maps, time.perf_counter() - started, 0.0
    config = predictor.model.config
    sim_config = matching_sim_config(config.sim)
    maps = np.zeros((len(rotations), *sim_config.scan_pixels), np.float32)
    simulation_seconds = prediction_seconds = 0.0
    started = time.perf_counter()
    for indices, df in simulate_rotations(molecule, rotations.rotations, sim_config, predictor.model.tips[0],
                                          settings.batch_size, settings.actors, config.pipeline,
                                          settings.opencl_device):
        simulation_seconds += time.perf_counter() - started
        started = time.perf_counter()
        maps[indices] = _predict_maps(predictor, df, sim_config, settings.prepare)
        prediction_seconds += time.perf_counter() - started
        started = time.perf_counter()
    return maps, simulation_seconds, prediction_seconds


def _as_stacks(df: np.ndarray, sim_config: SimConfig, tip: str, names: Sequence[str]) -> list[AfmStack]:
    size = (float(sim_config.scan_size_angstrom[0]), float(sim_config.scan_size_angstrom[1]))
    return [AfmStack(name, stack[None], (tip,), size, "simulation") for name, stack in zip(names, df)]


def _predict_maps(predictor: Predictor, df: np.ndarray, sim_config: SimConfig, prepare: PrepareSettings) -> np.ndarray:
    stacks = _as_stacks(df, sim_config, predictor.model.tips[0], [f"rotation {i}" for i in range(len(df))])
    prepared = np.stack([prepare_stack(stack, predictor.model_input, prepare).x for stack in stacks])
    return predictor.predict_arrays(prepared)[MATCH_OUTPUT]


def require_vdw_output(predictor: Predictor) -> None:
    """Matching compares vdW Spheres: refuse models that do not predict them."""
    if MATCH_OUTPUT not in predictor.model.output_names:
        raise InputError("--model", f"{predictor.model.reference} is a {predictor.model.model_name!r} model with outputs "
                                    f"{', '.join(predictor.model.output_names)}; matching needs {MATCH_OUTPUT} (a DSH model)")


def rank(name: str, experiment_map: np.ndarray, simulated_maps: np.ndarray, window: ScanWindow,
         max_shift_angstrom: float = DEFAULT_MAX_SHIFT_ANGSTROM, experiment: PreparedStack | None = None) -> Ranking:
    """Rank all simulated maps against one experiment map (step 4 of the module docstring)."""
    if max_shift_angstrom < 0:
        raise InputError("--max-shift", f"must be ≥ 0 Å, got {max_shift_angstrom}")
    pixel = window.pixel_size
    # the epsilon keeps a shift of exactly k pixels (2 Å at 0.5 Å/px) from rounding down to k − 1
    max_shift_px = (int(np.floor(max_shift_angstrom / pixel[0] + 1e-9)), int(np.floor(max_shift_angstrom / pixel[1] + 1e-9)))
    scores, shifts = normalised_cross_correlation(experiment_map, simulated_maps, max_shift_px)
    return Ranking(name, scores, shifts, np.asarray(experiment_map), experiment)


def experiment_maps(predictor: Predictor, stacks: Sequence[AfmStack],
                    prepare: PrepareSettings = PrepareSettings()) -> list[tuple[PreparedStack, np.ndarray]]:
    """Prepared experiments and their predicted vdW Spheres (nx, ny)."""
    prepared = [prepare_stack(stack, predictor.model_input, prepare) for stack in stacks]
    if not prepared:
        return []
    maps = predictor.predict_arrays(np.stack([p.x for p in prepared]))[MATCH_OUTPUT]
    return list(zip(prepared, maps))


@dataclass(frozen=True)
class RankedRotation:
    """One rotation's place in an experiment's ranking.

    Attributes:
        place: 1 = best.
        rotation: index into the :class:`RotationSet`.
        ncc: its normalised cross-correlation, in [−1, 1].
        shift_angstrom: (x, y) lateral shift of the simulation that reached it, Å.
        direction: (3,) molecule-frame unit vector facing the tip.
        azimuth_deg: its turn about z, degrees.
        angle_to_best_deg: geodesic angle to the experiment's best rotation, degrees.
    """

    place: int
    rotation: int
    ncc: float
    shift_angstrom: tuple[float, float]
    direction: np.ndarray
    azimuth_deg: float
    angle_to_best_deg: float


def ranked_rotations(result: MatchResult, ranking: Ranking, count: int | None = None) -> list[RankedRotation]:
    """The ``count`` best rotations of ``ranking`` (all when None), best first."""
    order = ranking.order[:count]
    rotations = result.rotations
    pixel = result.window.pixel_size
    angles = rotation_angle_deg(rotations.rotations[order], rotations.rotations[ranking.best])
    return [RankedRotation(place, int(rotation), float(ranking.scores[rotation]),
                           (float(ranking.shifts_px[rotation, 0] * pixel[0]), float(ranking.shifts_px[rotation, 1] * pixel[1])),
                           rotations.directions[rotation], float(rotations.azimuths_deg[rotation]), float(angle))
            for place, (rotation, angle) in enumerate(zip(order, angles), start=1)]


def write_ranking_csv(path: str | Path, result: MatchResult) -> Path:
    """One row per (experiment, rotation), best first within each experiment.

    Columns: experiment, rank (1 = best), rotation, ncc, shift_x_angstrom, shift_y_angstrom,
    direction_x/y/z (molecule-frame direction facing the tip), azimuth_deg,
    angle_to_best_deg (geodesic angle to this experiment's best rotation).
    """
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["experiment", "rank", "rotation", "ncc", "shift_x_angstrom", "shift_y_angstrom",
                         "direction_x", "direction_y", "direction_z", "azimuth_deg", "angle_to_best_deg"])
        for ranking in result.rankings:
            for row in ranked_rotations(result, ranking):
                writer.writerow([ranking.name, row.place, row.rotation, f"{row.ncc:.6f}",
                                 f"{row.shift_angstrom[0]:.4f}", f"{row.shift_angstrom[1]:.4f}",
                                 *(f"{v:.6f}" for v in row.direction), f"{row.azimuth_deg:.3f}",
                                 f"{row.angle_to_best_deg:.3f}"])
    return path


@dataclass(frozen=True)
class MatchOutputs:
    """Files written by :func:`write_match_outputs`.

    Attributes:
        ranking: ranking.csv (:func:`write_ranking_csv`).
        rotations: rotations.npz: rotations (R, 3, 3), directions (R, 3), azimuths_deg (R,) and
            vdw_spheres (R, nx, ny) Å, for reuse.
        best_geometries: experiment name → NAME_best.xyz (the best rotation, scan frame, Å, charges).
        figure: match.png (thesis Fig. 17).
    """

    ranking: Path
    rotations: Path
    best_geometries: dict[str, Path]
    figure: Path


def write_match_outputs(out: str | Path, molecule: Molecule, result: MatchResult, predictor: Predictor | None = None,
                        settings: MatchSettings = MatchSettings()) -> MatchOutputs:
    """Write a match's outputs into ``out`` (created): see :class:`MatchOutputs`.

    With a ``predictor`` the figure also shows the network inputs of each best rotation, simulated
    again here for that purpose (a few stacks; the search kept only their maps).
    """
    from afm_ray.molecules.io import write_xyz
    from afm_ray.figures.predictions import plot_match_rows  # matplotlib loads only when figures are drawn

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rotations = result.rotations
    table = write_ranking_csv(out / "ranking.csv", result)
    arrays = out / "rotations.npz"
    np.savez_compressed(arrays, rotations=rotations.rotations, directions=rotations.directions,
                        azimuths_deg=rotations.azimuths_deg, vdw_spheres=result.simulated_maps)
    best_rotations = np.stack([rotations.rotations[ranking.best] for ranking in result.rankings])
    simulations = (prepared_simulations(predictor, molecule, best_rotations, settings)
                   if predictor is not None else [None] * len(result.rankings))
    geometries, rows = {}, []
    for ranking, simulation in zip(result.rankings, simulations):
        best = ranking.best
        geometry = molecule.rotated(rotations.rotations[best])
        geometries[ranking.name] = out / f"{ranking.name}_best.xyz"
        write_xyz(geometries[ranking.name], geometry,
                  comment=f"best rotation {best} for {ranking.name}: ncc {ranking.scores[best]:.4f}")
        rows.append({"name": ranking.name, "experiment_map": ranking.experiment_map,
                     "simulation_map": result.simulated_maps[best], "molecule": geometry,
                     "label": f"rotation {best}, ncc {ranking.scores[best]:.3f}",
                     "experiment_x": ranking.experiment.x[0] if ranking.experiment is not None else None,
                     "simulation_x": simulation.x[0] if simulation is not None else None})
    figure = plot_match_rows(out / "match.png", rows, result.window)
    return MatchOutputs(table, arrays, geometries, figure)


def simulation_actors(predictor: Predictor, requested: int | None, use_ray: bool | None) -> int:
    """How many Ray simulation actors a match uses: 0 (simulate in this process) when Ray is
    ruled out (``use_ray`` False) or not connected, else ``requested`` or the model's
    ``pipeline.num_sim_actors``."""
    if use_ray is False:
        return 0
    import ray

    if not ray.is_initialized():
        return 0
    return requested or predictor.model.config.pipeline.num_sim_actors


def match_experiments(molecule: Molecule, rotations: RotationSet, predictor: Predictor | None = None,
                      experiments: Sequence[AfmStack] = (), experiment_molecules: Sequence[Molecule] = (),
                      window: ScanWindow | None = None, settings: MatchSettings = MatchSettings()) -> MatchResult:
    """Steps 1–4 of the module docstring.

    With a ``predictor`` (a DSH model) the ``experiments`` are AFM stacks and the maps lie on the
    model's window. In descriptor mode (``predictor=None``) they are ``experiment_molecules``
    (as oriented in their files) and the maps lie on ``window`` (default: the thesis window).
    """
    if predictor is not None:
        require_vdw_output(predictor)
        window = predictor.window
        prepared = experiment_maps(predictor, experiments, settings.prepare)  # bad input fails before simulating
        named = [(p.name, m, p) for p, m in prepared]
    else:
        window = window or ScanWindow()
        maps = vdw_spheres(list(experiment_molecules), window) if experiment_molecules else []
        named = [(m.id, vdw, None) for m, vdw in zip(experiment_molecules, maps)]
    if not named:
        raise InputError("--experiment", "no experiments to match")
    maps, simulation_seconds, prediction_seconds = simulated_vdw_maps(molecule, rotations, predictor, window, settings)
    started = time.perf_counter()
    rankings = [rank(name, experiment_map, maps, window, settings.max_shift_angstrom, prepared_stack)
                for name, experiment_map, prepared_stack in named]
    return MatchResult(rotations, maps, rankings, window, simulation_seconds, prediction_seconds,
                       time.perf_counter() - started)


def prepared_simulations(predictor: Predictor, molecule: Molecule, rotation_matrices: np.ndarray,
                         settings: MatchSettings = MatchSettings()) -> list[PreparedStack]:
    """The network inputs of a few rotations (for figures): simulated here, prepared like experiments."""
    sim_config = matching_sim_config(predictor.model.config.sim)
    tip = predictor.model.tips[0]
    prepared = []
    for indices, df in simulate_rotations(molecule, rotation_matrices, sim_config, tip, device=settings.opencl_device):
        stacks = _as_stacks(df, sim_config, tip, [f"rotation {i}" for i in indices])
        prepared += [prepare_stack(stack, predictor.model_input, settings.prepare) for stack in stacks]
    return prepared
