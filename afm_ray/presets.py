"""The configs afm-ray ships, found by preset name: ``afm-ray train --config quickstart`` from any directory.

The repository's ``configs/`` (training recipes and the simulator's settings) and ``tune/`` (sweeps)
are the presets. They ship inside the package as ``afm_ray/presets_data/configs`` and
``afm_ray/presets_data/tune``: in the source tree these are links to the top-level folders, in a
wheel copies of them (package data), so a checkout, ``pip install -e .``, ``pip install .`` and an
installed wheel all read the same files, and a sweep's ``train_config: ../configs/xyz.yaml`` holds
in both places.

Kinds: ``train`` (``configs/*.yaml``), ``sim`` (``configs/sim.yaml``: a simulator preset is named
``sim``), ``tune`` (``tune/*.yaml``). :func:`find_config` turns what a user typed after ``--config``
into a file: an existing path as it is; a preset name (``quickstart``, ``quickstart.yaml``); or a
documented path such as ``configs/dsh.yaml`` or ``tune/xyz.yaml`` that does not exist where the
command runs (the shipped file of that name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from afm_ray.errors import InputError

PRESETS_DIR = Path(__file__).parent / "presets_data"
"""Where the shipped configs are: ``configs/`` and ``tune/`` below it."""
KIND_FOLDERS = {"train": "configs", "sim": "configs", "tune": "tune"}
"""Each kind of preset and the folder that holds it."""
SIM_PRESET_NAMES = ("sim",)


@dataclass(frozen=True)
class Preset:
    """One shipped config: its kind (train, sim, tune), name (file name without ``.yaml``), file and the
    first line of its header comment."""

    kind: str
    name: str
    path: Path
    summary: str


def _kind_of(folder: str, name: str) -> str:
    if folder == "tune":
        return "tune"
    return "sim" if name in SIM_PRESET_NAMES else "train"


def _summary(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def list_presets(kind: str | None = None) -> list[Preset]:
    """The shipped configs of ``kind`` (every kind when ``None``), sorted by kind and name."""
    _check_kind(kind)
    presets = []
    for folder in sorted(set(KIND_FOLDERS.values())):
        for path in sorted((PRESETS_DIR / folder).glob("*.yaml")):
            preset = Preset(_kind_of(folder, path.stem), path.stem, path, _summary(path))
            if kind is None or preset.kind == kind:
                presets.append(preset)
    return sorted(presets, key=lambda preset: (list(KIND_FOLDERS).index(preset.kind), preset.name))


def get_preset(name: str, kind: str | None = None, where: str = "preset") -> Preset:
    """The shipped config called ``name`` (``.yaml`` optional) of ``kind``; with ``kind=None`` the name must
    be unique among all kinds. Raises :class:`InputError` naming the presets there are."""
    stem = name.removesuffix(".yaml").removesuffix(".yml")
    matches = [preset for preset in list_presets(kind) if preset.name == stem]
    if len(matches) == 1:
        return matches[0]
    if matches:
        kinds = [preset.kind for preset in matches]
        raise InputError(where, f"{name!r} is a {' and a '.join(kinds)} preset: choose one with "
                                   f"{' or '.join(f'--kind {kind}' for kind in kinds)}")
    known = ", ".join(preset.name for preset in list_presets(kind)) or "none"
    raise InputError(where, f"no {kind + ' ' if kind else ''}preset {name!r} (presets: {known}; "
                               "afm-ray configs list)")


def find_config(reference: str | Path, kind: str, where: str = "--config") -> Path:
    """The config file ``reference`` means for a ``kind`` config (see the module docstring).

    A path that exists is returned as it is. A bare name (no folder) that is no file here is a preset of
    ``kind`` (:class:`InputError` when there is none). A missing relative path ending in
    ``configs/NAME.yaml`` or ``tune/NAME.yaml`` is the shipped file of that name where there is one;
    any other path is returned unchanged, for the loader to report as missing.
    """
    _check_kind(kind)
    path = Path(reference)
    if path.exists() or path.is_absolute():
        return path
    if len(path.parts) == 1:
        return get_preset(path.name, kind, where).path
    shipped = PRESETS_DIR / path.parts[-2] / path.parts[-1]
    if path.parts[-2] in KIND_FOLDERS.values() and shipped.is_file():
        return shipped
    return path


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KIND_FOLDERS:
        raise InputError("--kind", f"expected one of {', '.join(KIND_FOLDERS)}, got {kind!r}")
