"""Planning the work of an epoch: which (molecule, rotation) samples go into which batch, on which rank.

A *sample* is one rotation of one molecule of a split, numbered ``sample = molecule * R + rotation``
with ``R`` rotations per molecule. Each epoch shuffles all samples with a generator seeded by
``(run_seed, epoch)`` (every seed: :mod:`afm_ray.samples.seeds`), cuts them into batches and deals the batches round-robin to the DDP ranks.
Incomplete batches and the batches that would leave ranks unequal are dropped, so every rank
runs the same number of steps (DDP would hang otherwise). Plans are pure functions of their
inputs: a resumed run, a restarted actor or another trial re-creates exactly the same batches.

Training plans *global* batches (``run.batch_size`` samples per optimiser step, all ranks together):
:func:`micro_batches_for_rank` cuts each into the pieces one rank trains on for that step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from afm_ray.samples.seeds import batch_seed, epoch_order, piece_seed


@dataclass(frozen=True)
class BatchSpec:
    """One batch of work for a simulation actor.

    Attributes:
        split: ``train``, ``val`` or ``test``.
        epoch: epoch number (0-based); fixed sets use 0.
        index: batch index within the epoch (over all ranks).
        samples: (B,) int64 sample numbers (``molecule * R + rotation``).
        seed: entropy for every random draw of the batch (tilts, heights, noise, shifts, cutouts).
        raw_df: ship the raw Δf of every simulated slice (``df``) instead of the augmented input
            (``x``); the consumer augments it with the same draws (:mod:`afm_ray.samples.augment_torch`).
        raw_df_dtype: ``float32`` or ``float16`` (half the bytes) for ``df``.
        raw_df_read_slices: ship in ``df`` only the slices the augmentation reads (the seeded scan-height
            choice, :func:`afm_ray.samples.augment.read_slices`) rather than every simulated one.
        target_dtype: ``float32`` or ``float16`` for the targets that come with raw Δf.
    """

    split: str
    epoch: int
    index: int
    samples: np.ndarray
    seed: tuple[int, ...]
    raw_df: bool = False
    raw_df_dtype: str = "float32"
    raw_df_read_slices: bool = False
    target_dtype: str = "float32"

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.split, self.epoch, self.index)


def plan_epoch(n_samples: int, batch_size: int, run_seed: int, epoch: int, split: str = "train",
               shuffle: bool = True, drop_last: bool = True) -> list[BatchSpec]:
    """All batches of one epoch over ``n_samples`` samples (shuffled with ``(run_seed, epoch)``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    order = epoch_order(n_samples, run_seed, epoch) if shuffle else np.arange(n_samples, dtype=np.int64)
    n_batches = n_samples // batch_size if drop_last else -(-n_samples // batch_size)
    return [BatchSpec(split, epoch, index, order[index * batch_size:(index + 1) * batch_size],
                      batch_seed(run_seed, epoch, index, split))
            for index in range(n_batches)]


def micro_batches_for_rank(batches: list[BatchSpec], rank: int, world_size: int,
                           micro_batches: int = 1) -> list[list[BatchSpec]]:
    """Rank ``rank``'s micro batches of every global batch (one optimiser step each).

    Each global batch is cut into ``P = world_size × micro_batches`` pieces of sizes that differ by at most
    one; rank ``r`` gets pieces ``r·M … r·M + M − 1``. A piece's index is ``batch index × P + piece`` and its
    seed the batch's with the piece appended, so a piece, and every draw made for it, depends on the plan and
    ``P`` only: W = 1 with 2 micro batches and W = 2 with one train on identical pieces. Empty pieces (a
    global batch smaller than ``P``) are left out. ``P = 1`` keeps the batch as planned.
    """
    pieces = world_size * micro_batches
    if pieces == 1:
        return [[batch] for batch in batches]
    mine = range(rank * micro_batches, (rank + 1) * micro_batches)
    steps = []
    for batch in batches:
        parts = np.array_split(batch.samples, pieces)
        steps.append([replace(batch, index=batch.index * pieces + piece, samples=parts[piece],
                                   seed=piece_seed(batch.seed, piece))
                      for piece in mine if len(parts[piece])])
    return steps


def batches_for_rank(batches: list[BatchSpec], rank: int, world_size: int) -> list[BatchSpec]:
    """Rank ``rank``'s share: batches ``rank, rank + W, …`` of an equal-length cut for all ranks."""
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]
