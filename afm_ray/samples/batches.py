"""Training batches: molecules → rotations → simulation → descriptors → augmentation, in plain Python.

:class:`BatchFactory` is the whole per-batch work of a simulation actor, usable without Ray::

    factory = BatchFactory(task, sim_config, augment_config, molecules={"train": mols})
    batch = factory.make_batch(plan_epoch(factory.n_samples("train"), 8, run_seed=0, epoch=0)[0])
    batch.x.shape                  # (8, C, 128, 128, 10): C tips (CO; ES: CO, Xe), slices far → close
    batch.targets["height_map"]    # (8, 128, 128) Å, one array per target of the task

A sample number ``s`` of a split means rotation ``s % R`` of molecule ``s // R``, with the
molecule's rotations chosen by thesis Eq. 25 (best ``R`` of 100 directions). Everything random
(tilts, start heights, slice choice, noise, shifts, cutouts) is drawn from the batch's seed, so a
batch can be regenerated bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from afm_ray.descriptors.config import DescriptorsConfig
from afm_ray.descriptors.device_maps import DeviceMaps
from afm_ray.descriptors.geometry import ScanWindow
from afm_ray.descriptors.registry import TargetBatch, TargetContext, empty_targets, enqueue_targets, get_descriptor
from afm_ray.errors import InputError
from afm_ray.molecules.molecule import Molecule
from afm_ray.molecules.rotations import select_rotations
from afm_ray.samples.augment import AugmentConfig, augment_batch, read_slices
from afm_ray.samples.plan import BatchSpec
from afm_ray.samples.sample_batch import SampleBatch
from afm_ray.samples.seeds import sample_seeds, tip_seeds
from afm_ray.sim import ScanParams, SimConfig, Simulator
from afm_ray.sim.buffers import FRESH, FreshHostArrays, Pending, PinnedHostArrays
from afm_ray.sim.simulator import LoadedBatch


@dataclass(frozen=True)
class Task:
    """What a batch holds: the probe tips of its input channels, its targets and the xyz element groups.

    Attributes:
        tips: probe tip of each input channel, in channel order (``("CO", "Xe")``: channel 0 CO).
        targets: descriptor names (:mod:`afm_ray.descriptors.registry`), e.g. a model spec's targets.
        element_groups: xyz element classes as atomic-number groups; ``None``: one "atom" class.
    """

    tips: tuple[str, ...]
    targets: tuple[str, ...]
    element_groups: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self):
        for name in self.targets:
            get_descriptor(name)  # InputError naming the registered descriptors


@dataclass(frozen=True)
class SplitSamples:
    """The molecules of one split with their scan rotations: sample ``s`` = rotation ``s % R`` of molecule ``s // R``."""

    molecules: tuple[Molecule, ...]
    rotations: np.ndarray  # (n_molecules, R, 3, 3)

    @classmethod
    def of(cls, molecules: Sequence[Molecule], rotations_per_molecule: int, candidates: int = 100,
           beta_per_angstrom: float = 1.0) -> "SplitSamples":
        rotations = np.stack([select_rotations(m.positions, rotations_per_molecule, candidates, beta_per_angstrom)
                              for m in molecules]) if molecules else np.zeros((0, rotations_per_molecule, 3, 3))
        return cls(tuple(molecules), rotations)

    def __len__(self) -> int:
        return self.rotations.shape[0] * self.rotations.shape[1]

    def molecule(self, sample: int) -> Molecule:
        molecule_index, rotation_index = divmod(int(sample), self.rotations.shape[1])
        return self.molecules[molecule_index].rotated(self.rotations[molecule_index, rotation_index])

    def molecule_id(self, sample: int) -> str:
        return self.molecules[int(sample) // self.rotations.shape[1]].id

    def describe(self, sample: int) -> str:
        """``molecule ID, rotation R`` of a sample number."""
        molecule_index, rotation_index = divmod(int(sample), self.rotations.shape[1])
        return f"molecule {self.molecules[molecule_index].id}, rotation {rotation_index}"


class BatchFactory:
    """Owns one :class:`~afm_ray.sim.Simulator` (OpenCL context and kernels built once) and makes batches.

    Args:
        task: model and targets.
        sim_config, augment_config, descriptors: the stages' configurations.
        splits: ``{"train": SplitSamples, "val": …}``.
        device: OpenCL device override (see :func:`afm_ray.sim.device.select_device`).
        profile: time the simulator's device commands (``simulator.profile``, ``afm-ray bench batch``).
        reuse_host_memory: read the device's results into page-locked host arrays that every batch
            reuses (full-speed DMA on a GPU, no allocation): the arrays of a returned batch are then
            overwritten by the next :meth:`make_batch`. For a Ray actor, whose return value is
            serialised into the object store before its next call runs; plain callers keep False.

    A batch's device work (the Δf of each tip, the Height / ES search, the sphere and disk maps) is
    enqueued on the simulator's queue back to back from one upload of its atoms, with one wait.
    ``stage_seconds`` and ``stage_cpu_seconds`` sum the wall time and the calling thread's CPU time
    of each host stage since they were last cleared (``wait for the device`` is the wait).
    """

    def __init__(self, task: Task, sim_config: SimConfig, augment_config: AugmentConfig,
                 descriptors: DescriptorsConfig, splits: dict[str, SplitSamples], device=None, profile: bool = False,
                 reuse_host_memory: bool = False):
        self.task = task
        self.augment_config = augment_config
        self.descriptors = descriptors
        self.splits = splits
        self.stage_seconds: dict[str, float] = {}
        self.stage_cpu_seconds: dict[str, float] = {}
        self.simulator = Simulator(sim_config, device=device, profile=profile)
        self.device_maps = DeviceMaps(self.simulator.context, self.simulator.queue, track=self.simulator.track)
        self.host: FreshHostArrays | PinnedHostArrays = (PinnedHostArrays(self.simulator.queue) if reuse_host_memory
                                                         else FRESH)
        self.window = ScanWindow.from_sim_config(sim_config)
        self.target_context = TargetContext(self.simulator, self.window, descriptors, task.element_groups,
                                            self.device_maps, self.host)
        for name in task.targets:  # a scan that a target cannot be made on fails here, not at the first batch
            get_descriptor(name).sample_shape(self.target_context)

    def n_samples(self, split: str) -> int:
        return len(self.splits[split])

    def make_batch(self, spec: BatchSpec) -> SampleBatch:
        """Simulated, described and augmented batch for ``spec`` (shapes, dtypes, units: :class:`SampleBatch`).

        ``x`` (B, C, nx, ny, K) float32 normalised Δf (C tips, K slices far → close), or with
        ``spec.raw_df`` instead ``df`` (B, C, nx, ny, nz) Hz in ``spec.raw_df_dtype``, every simulated
        slice (or those read, ``spec.raw_df_read_slices``), for :func:`afm_ray.samples.augment_torch.augment_batch`;
        ``targets``: those of :attr:`Task.targets`, with raw Δf in ``spec.target_dtype``; ``samples`` (B,)
        int64; timings ``sim_seconds`` and ``produce_seconds``.

        A sample that cannot be simulated or described (:class:`InputError`: outside the scan
        window, too close to the probe, …) is left out rather than failing the batch: its number
        goes to ``skipped_samples`` (int64) and a line naming its molecule id, rotation and reason
        to ``skipped``, so B may be smaller than ``len(spec.samples)``, even 0.
        """
        started = time.perf_counter()
        split = self.splits.get(spec.split)
        if split is None:
            raise InputError("batch", f"this factory has no {spec.split!r} split")
        remaining = [int(sample) for sample in spec.samples]
        skipped: list[tuple[int, str]] = []
        while True:
            try:
                batch = (self._make(split, remaining, spec.seed, spec.raw_df) if remaining
                         else self._empty(spec.raw_df))
                if spec.raw_df:
                    df = read_slices(batch.df, spec.seed, self.augment_config) if spec.raw_df_read_slices \
                        else batch.df
                    batch.df = df.astype(spec.raw_df_dtype, copy=False)
                    batch.targets = {name: array.astype(spec.target_dtype, copy=False)
                                     for name, array in batch.targets.items()}
                break
            except InputError as error:
                culprit = self._culprit(split, remaining, spec.seed, error)
                if culprit is None:  # fails only together: not one sample's fault
                    raise
                skipped.append((remaining.pop(culprit[0]), culprit[1]))
        batch.skipped_samples = np.array([sample for sample, _ in skipped], dtype=np.int64)
        batch.skipped = tuple(f"{spec.split} sample {sample} ({split.describe(sample)}): {reason}"
                              for sample, reason in skipped)
        batch.produce_seconds = time.perf_counter() - started
        return batch

    def _make(self, split: "SplitSamples", samples: list[int], seed: tuple[int, ...],
              raw_df: bool = False) -> SampleBatch:
        started = time.perf_counter()
        simulator, tips = self.simulator, self.task.tips
        with self._stage("rotate molecules"):
            molecules = [split.molecule(sample) for sample in samples]
        with self._stage("pack + upload molecules"):
            loaded = simulator.load(molecules)
        # (B, C, nx, ny, n_slices): each tip's Δf is read straight to its channel, no stacking afterwards
        df = self.host.empty("df", (len(samples), len(tips), *simulator.config.scan_pixels, simulator.config.num_slices))
        with self._stage("scan draws + enqueue Δf"):
            for channel, (tip, tip_seed) in enumerate(zip(tips, tip_seeds(seed, len(tips))[0])):
                scan_params = ScanParams.draw_many(simulator.config, sample_seeds(tip_seed, samples))
                simulator.enqueue_run(loaded, tip=tip, scan_params=scan_params, df_out=df, df_channel=channel)
        targets = self._targets(loaded, molecules)
        with self._stage("wait for the device"):
            simulator.finish()
        sim_seconds = time.perf_counter() - started  # the Δf simulation and the device's descriptors
        if raw_df:
            inputs = {"df": df}
        else:
            with self._stage("augmentation"):
                inputs = {"x": augment_batch(df, seed, self.augment_config)}
        with self._stage("descriptors from the device's results"):
            targets = targets.result()
        return SampleBatch(np.asarray(samples, dtype=np.int64), **inputs, targets=targets, sim_seconds=sim_seconds)

    def _culprit(self, split: "SplitSamples", samples: list[int], seed: tuple[int, ...],
                 error: InputError) -> tuple[int, str] | None:
        """(position, reason) of the sample that ``error`` is about: found by making the suspects alone.

        Suspects are the samples of the molecule the error names (any of its rotations), else all.
        """
        named = [position for position, sample in enumerate(samples)
                 if error.where == f"molecule {split.molecule_id(sample)}"]
        for position in named or range(len(samples)):
            try:
                self._make(split, [samples[position]], seed, raw_df=True)  # a sample fails in simulation or descriptors
            except InputError as alone:
                return position, str(alone)
        return None

    def _empty(self, raw_df: bool = False) -> SampleBatch:
        """A batch of no samples (every sample skipped), with the arrays' per-sample shapes."""
        nx, ny = self.simulator.config.scan_pixels
        slices = (self.augment_config.scan_height.kept_slices if self.augment_config.scan_height.enabled
                  and not raw_df else self.simulator.config.num_slices)
        inputs = np.zeros((0, len(self.task.tips), nx, ny, slices), np.float32)
        return SampleBatch(np.zeros(0, np.int64), **{"df" if raw_df else "x": inputs},
                           targets=empty_targets(self.target_context, self.task.targets))

    def _targets(self, loaded: LoadedBatch, molecules: list[Molecule]) -> Pending[dict[str, np.ndarray]]:
        return enqueue_targets(TargetBatch(self.target_context, loaded, molecules, self._stage), self.task.targets)

    @contextmanager
    def _stage(self, name: str):
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - started
            self.stage_cpu_seconds[name] = self.stage_cpu_seconds.get(name, 0.0) + time.thread_time() - cpu_started

    def close(self) -> None:
        self.device_maps.release()
        self.simulator.release()
        if isinstance(self.host, PinnedHostArrays):
            self.host.release()
