"""The xyz descriptor's class layout, read by the descriptor (:mod:`afm_ray.descriptors.xyz_codec`), the xyz
network (:mod:`afm_ray.models.xyz`) and its evaluation.

Channel 0 of the class grid is ``background``. Without element classes (the thesis) channel 1 is ``atom``.
With element classes, groups of element symbols (``model.element_classes``, e.g. ``[[H], [C], [N, O, F]]``),
channel ``1 + g`` is group ``g`` (named by its symbols, ``"N,O,F"``) and one last channel ``other`` holds
every element in no group: ``2 + G`` channels in all.
"""

from __future__ import annotations

from collections.abc import Sequence

from afm_ray.elements import ELEMENT_TABLE

BACKGROUND_CLASS = "background"
ATOM_CLASS = "atom"
OTHER_CLASS = "other"

DEFAULT_ELEMENT_CLASSES: tuple[tuple[str, ...], ...] = (
    ("H",), ("C",), ("N", "O", "F"), ("Si", "P", "S", "Cl", "Br"))
"""Light-set elements get their own class where the chemistry differs most visibly in AFM (H vs C), N/O/F share
the electronegative class, and the heavy set (Si, P, S, Cl, Br) is one class."""

ELEMENT_GROUPS_H_C_NOF: tuple[tuple[int, ...], ...] = ((1,), (6,), (7, 8, 9))
"""Element classes H / C / N,O,F as atomic numbers; every other element falls into the "other" class."""


def check_element_classes(element_classes) -> tuple[tuple[str, ...], ...] | None:
    """Element groups as tuples of symbols; ``ValueError`` unless non-empty groups with no symbol in two groups."""
    if element_classes is None:
        return None
    if isinstance(element_classes, str):
        raise ValueError("element_classes must be a sequence of element groups, e.g. [['H'], ['C'], ['N', 'O']]")
    groups = tuple(tuple(group) if not isinstance(group, str) else (group,) for group in element_classes)
    if not groups or any(not group for group in groups):
        raise ValueError(f"element_classes needs at least one non-empty group, got {element_classes!r}")
    seen: set[str] = set()
    for group in groups:
        for symbol in group:
            if symbol in seen:
                raise ValueError(f"element {symbol!r} appears in more than one element class")
            seen.add(symbol)
    return groups


def class_names(element_classes: Sequence[Sequence[str]] | None) -> tuple[str, ...]:
    """Names of the class channels: ``("background", "atom")`` or ``("background", "H", "C", "N,O,F", "other")``."""
    if element_classes is None:
        return BACKGROUND_CLASS, ATOM_CLASS
    return (BACKGROUND_CLASS, *(",".join(group) for group in element_classes), OTHER_CLASS)


def element_groups(element_classes: Sequence[Sequence[str]] | None,
                   where: str = "model.element_classes") -> tuple[tuple[int, ...], ...] | None:
    """The groups' atomic numbers (what :class:`~afm_ray.descriptors.XyzGrid` takes); :class:`InputError` for an
    unknown symbol."""
    if element_classes is None:
        return None
    return tuple(tuple(int(ELEMENT_TABLE.number(symbol, where=where)) for symbol in group)
                 for group in element_classes)


def element_symbols(groups: Sequence[Sequence[int]] | None) -> tuple[tuple[str, ...], ...] | None:
    """The groups' element symbols (the inverse of :func:`element_groups`)."""
    if groups is None:
        return None
    return tuple(tuple(ELEMENT_TABLE.symbols[int(number)] for number in group) for group in groups)
