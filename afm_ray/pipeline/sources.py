"""Which molecules and rotations a run uses, built the same way by the driver and every actor."""

from __future__ import annotations

from afm_ray.samples.batches import SplitSamples, Task
from afm_ray.descriptors.xyz_classes import element_groups
from afm_ray.errors import InputError
from afm_ray.molecules.database import SPLIT_PREFIX, read_database, select, split_names, table_to_molecules
from afm_ray.pipeline.settings import SampleSettings

SUBSETS = ("train", "val", "test")


def task_of(settings: SampleSettings) -> Task:
    """The :class:`Task` of the samples: the model's tips and targets; xyz element classes as atomic-number groups."""
    spec = settings.model_spec
    return Task(spec.tips, spec.targets, element_groups(settings.element_classes))


def load_split_samples(settings: SampleSettings, subsets: tuple[str, ...] = SUBSETS) -> dict[str, SplitSamples]:
    """Molecules of each subset of ``settings.data.split`` (capped as configured) with their rotations.

    Raises :class:`InputError` for a missing database or split, or an empty subset.
    """
    data = settings.data
    table = read_database(data.database)
    if SPLIT_PREFIX + data.split not in table.column_names:
        raise InputError(f"{data.database}", f"has no split {data.split!r} (available: "
                                             f"{split_names(table) or 'none'}); create it with `afm-ray molecules split`")
    out = {}
    for subset in subsets:
        rows = select(table, split=data.split, subset=subset, where=str(data.database))
        limit = data.max_train_molecules if subset == "train" else data.max_eval_molecules
        if limit is not None:
            rows = rows.slice(0, limit)
        if rows.num_rows == 0:
            raise InputError(f"{data.database}", f"split {data.split!r} has no {subset} molecules")
        rotations = settings.train_rotations_per_molecule if subset == "train" else settings.eval_rotations_per_molecule
        out[subset] = SplitSamples.of(table_to_molecules(rows), rotations, data.rotation_candidates,
                                      data.rotation_beta_per_angstrom)
    return out
