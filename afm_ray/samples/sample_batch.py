"""The batch a simulation actor returns: one typed object, the same from every producer. No Ray, no torch.

Every batch maker (:class:`~afm_ray.samples.batches.BatchFactory`, the match command's rotation simulator,
the benchmarks' stand-in actors) returns a :class:`SampleBatch`; the pipeline, the fixed sets and the
trainer read its attributes. Ray serialises it like the dict it replaced: its NumPy arrays travel as
out-of-band buffers (pickle protocol 5), zero-copy from the object store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class MadeBy(NamedTuple):
    """Which process made a batch, and when (wall clock, ``time.time()`` s): a benchmark sees when actors idle."""

    pid: int
    started_s: float
    finished_s: float


def _no_samples() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass
class SampleBatch:
    """One batch of samples: the network's input (or the raw Δf it is made from), the targets and bookkeeping.

    Arrays (B samples, the first axis of each):

    * ``samples`` (B,) int64: the sample numbers of the split (:class:`~afm_ray.samples.batches.SplitSamples`).
    * ``x`` (B, C, nx, ny, K) float32: the augmented, normalised Δf the network reads (C probe tips in
      :attr:`~afm_ray.samples.batches.Task.tips` order, K slices far → close; dimensionless); or
    * ``df`` (B, C, nx, ny, nz) Δf in Hz, dtype ``BatchSpec.raw_df_dtype`` (float32 or float16): every
      simulated slice, or only those the augmentation reads (``BatchSpec.raw_df_read_slices``), for the
      trainer to augment (:func:`afm_ray.samples.augment_torch.augment_batch`). Exactly one of ``x`` and
      ``df`` is set.
    * ``targets`` by descriptor name (:mod:`afm_ray.descriptors.registry`), float32 (float16 with
      ``BatchSpec.target_dtype``): maps (B, nx, ny) in Å (``es_map``: V; Atomic Disks in ppafm's mode:
      dimensionless), or ``xyz_classes`` (B, n_classes, gx, gy) one-hot and ``xyz_offsets`` (B, 3, gx, gy) Å.

    Bookkeeping:

    * ``skipped_samples`` (S,) int64: samples of the request left out because they could not be
      simulated or described, and ``skipped`` one line per such sample (molecule id, rotation, reason).
      B + S is the number of samples asked for.
    * ``sim_seconds``: the simulation and device descriptors; ``produce_seconds``: the whole batch, as
      the maker measured it (0 where it does not); ``made_by``: the process and its wall-clock
      interval, set by :meth:`afm_ray.pipeline.dispatch.BatchMaker.produce` (None before).
    """

    samples: np.ndarray
    x: np.ndarray | None = None
    df: np.ndarray | None = None
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    skipped_samples: np.ndarray = field(default_factory=_no_samples)
    skipped: tuple[str, ...] = ()
    sim_seconds: float = 0.0
    produce_seconds: float = 0.0
    made_by: MadeBy | None = None

    def __post_init__(self):
        if (self.x is None) == (self.df is None):
            given = "both" if self.x is not None else "neither"
            raise ValueError(f"a SampleBatch holds exactly one of x (augmented input) and df (raw Δf), got {given}")
        self.samples = np.asarray(self.samples, dtype=np.int64)
        self.skipped_samples = np.asarray(self.skipped_samples, dtype=np.int64)
        self.skipped = tuple(self.skipped)
        for name, array in self.float_arrays().items():
            if len(array) != len(self.samples):
                raise ValueError(f"SampleBatch: {name} has {len(array)} samples along its first axis, "
                                 f"samples has {len(self.samples)}")

    def __len__(self) -> int:
        """B, the samples made (fewer than asked for when some were skipped; may be 0)."""
        return len(self.samples)

    @property
    def input_name(self) -> str:
        """``"x"`` or ``"df"``: which input the batch holds."""
        return "x" if self.x is not None else "df"

    @property
    def inputs(self) -> np.ndarray:
        """``x`` or ``df``, whichever is set."""
        return self.x if self.x is not None else self.df

    def float_arrays(self) -> dict[str, np.ndarray]:
        """``{"x" or "df": inputs, **targets}``: what goes to the training device."""
        return {self.input_name: self.inputs, **self.targets}

    @property
    def nbytes(self) -> int:
        """Bytes of all the batch's arrays: what it takes in the object store, less a little metadata."""
        return (sum(array.nbytes for array in self.float_arrays().values()) + self.samples.nbytes
                + self.skipped_samples.nbytes)

    def head(self, count: int) -> SampleBatch:
        """The first ``count`` samples (views of these arrays); the skipped samples and timings stay behind."""
        return SampleBatch(self.samples[:count], **self._inputs_of(self.inputs[:count]),
                           targets={name: array[:count] for name, array in self.targets.items()})

    @staticmethod
    def concatenate(batches: Sequence[SampleBatch]) -> SampleBatch:
        """The samples of ``batches`` one after another (all holding the same input and targets), their skipped
        samples and lines joined and their timings added up; ``made_by`` is not kept."""
        if not batches:
            raise ValueError("SampleBatch.concatenate needs at least one batch")
        first = batches[0]
        if any(batch.input_name != first.input_name or batch.targets.keys() != first.targets.keys()
               for batch in batches):
            raise ValueError("SampleBatch.concatenate: the batches hold different inputs or targets")
        return SampleBatch(
            np.concatenate([batch.samples for batch in batches]),
            **first._inputs_of(np.concatenate([batch.inputs for batch in batches])),
            targets={name: np.concatenate([batch.targets[name] for batch in batches]) for name in first.targets},
            skipped_samples=np.concatenate([batch.skipped_samples for batch in batches]),
            skipped=tuple(line for batch in batches for line in batch.skipped),
            sim_seconds=sum(batch.sim_seconds for batch in batches),
            produce_seconds=sum(batch.produce_seconds for batch in batches))

    def _inputs_of(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: inputs}
