"""Every seed of a training sample, derived in one place from the run's seed.

The tree, top to bottom (each level a pure function of the one above, so a resumed run, a restarted
actor or another trial redraws exactly the same samples):

* run seed, epoch → the epoch's sample order (:func:`epoch_order`);
* run seed, epoch, batch index, split → the batch's seed, a tuple of ints (:func:`batch_seed`); a rank's
  piece of a global batch appends its piece number (:func:`piece_seed`);
* batch seed → per tip, one simulation and one augmentation :class:`numpy.random.SeedSequence`
  (:func:`tip_seeds`);
* simulation seed, sample numbers → one uint64 seed per sample for its tilt and start distance
  (:func:`sample_seeds`; the sample's number, not its place in the batch, so a sample made alone is the
  sample the batch had);
* augmentation seed → one generator per augmentation step, in the order scan height, noise, shifts, cutouts
  (:func:`augmentation_generators`: switching a step off does not change the others' draws).

Changing any of these changes every simulated sample: bump ``SAMPLE_DRAWS_VERSION`` in
:mod:`afm_ray.pipeline.fixed_sets` with it, so stored validation and test sets are made again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SeedLike = int | Sequence[int] | np.random.SeedSequence

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_OTHER_SPLIT_CODE = 3  # fixed sets of any other name (e.g. a benchmark's)


def epoch_order(n_samples: int, run_seed: int, epoch: int) -> np.ndarray:
    """(n_samples,) int64: the sample numbers 0 … n_samples − 1 in epoch ``epoch``'s shuffled order."""
    return np.random.default_rng([run_seed, epoch, 0]).permutation(np.arange(n_samples, dtype=np.int64))


def batch_seed(run_seed: int, epoch: int, index: int, split: str) -> tuple[int, int, int, int]:
    """The entropy of every random draw of batch ``index`` of ``split`` in ``epoch``."""
    return (run_seed, epoch, index, _SPLIT_CODES.get(split, _OTHER_SPLIT_CODE))


def piece_seed(batch: tuple[int, ...], piece: int) -> tuple[int, ...]:
    """The seed of piece ``piece`` of a global batch cut for ranks and micro batches."""
    return (*batch, piece)


def tip_seeds(batch: Sequence[int], n_tips: int) -> tuple[list[np.random.SeedSequence], list[np.random.SeedSequence]]:
    """(simulation seeds, augmentation seeds), one per tip, of a batch whose seed is ``batch``."""
    children = np.random.SeedSequence(tuple(batch)).spawn(2 * n_tips)
    return children[0::2], children[1::2]


def sample_seeds(simulation_seed: np.random.SeedSequence, samples) -> np.ndarray:
    """(B,) uint64 seeds in [0, 2⁶³) of the scan draws of ``samples`` (B,) sample numbers, for one tip."""
    # the simulator's own per-sample derivation (its run(seed=) uses it too); imported here, not at the top,
    # so that the configs reading this package's augmentation settings do not load OpenCL
    from afm_ray.sim.simulator import derived_seeds

    return derived_seeds(simulation_seed, samples)


def augmentation_generators(seed: SeedLike) -> tuple[np.random.Generator, ...]:
    """(scan height, noise, shifts, cutouts) generators of one stack batch's augmentation.

    ``seed``: an int, a tuple of ints or a :class:`~numpy.random.SeedSequence` (a tip's augmentation seed);
    equal seeds give identical generators.
    """
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return tuple(np.random.default_rng(child) for child in sequence.spawn(4))
