"""Which molecules and rotations a training run uses, built the same way by the driver and every actor."""

from __future__ import annotations

from afm_ray.batches import SplitSamples, Task
from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError
from afm_ray.molecules.database import SPLIT_PREFIX, read_database, select, split_names, table_to_molecules
from afm_ray.train.config import TrainConfig

SUBSETS = ("train", "val", "test")


def task_of(config: TrainConfig) -> Task:
    """The :class:`Task` of a config; xyz element classes become atomic-number groups."""
    groups = None
    if config.model.element_classes is not None:
        groups = tuple(tuple(int(ELEMENT_TABLE.number(symbol, where="model.element_classes")) for symbol in group)
                       for group in config.model.element_classes)
    return Task(config.model.name, groups)


def load_split_samples(config: TrainConfig, subsets: tuple[str, ...] = SUBSETS) -> dict[str, SplitSamples]:
    """Molecules of each subset of ``config.data.split`` (capped as configured) with their rotations.

    Raises :class:`InputError` for a missing database or split, or an empty subset.
    """
    data = config.data
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
        rotations = config.rotations_per_molecule if subset == "train" else data.eval_rotations_per_molecule
        out[subset] = SplitSamples.of(table_to_molecules(rows), rotations, data.rotation_candidates,
                                      data.rotation_beta_per_angstrom)
    return out
