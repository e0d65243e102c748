"""Figures of predictions (thesis Figs. 16, 18, 19) and of experiment ↔ simulation matches (Fig. 17).

Matplotlib object API with the Agg canvas (no pyplot state). Maps are drawn as in
:mod:`afm_ray.figures.scans`: arrays ``[i, j]`` with i along x, ``origin="lower"`` over the window's
extent in Å (window centred on (0, 0)).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from afm_ray.descriptors.geometry import ScanWindow, prepare_atoms
from afm_ray.descriptors.xyz_codec import Atoms
from afm_ray.figures.scans import DESCRIPTOR_STYLE, draw_map, draw_molecule, label_axes, save_figure

INPUT_SLICES_SHOWN = 3  # far, middle, close — as thesis Fig. 17


def _shown_slices(n_slices: int, count: int = INPUT_SLICES_SHOWN) -> list[int]:
    return sorted(set(np.linspace(0, n_slices - 1, min(count, n_slices)).round().astype(int).tolist()))


def draw_atoms(axes, atoms: Atoms, window: ScanWindow, threshold: float, title: str = "xyz prediction") -> None:
    """Atoms as circles sized by depth (top atom largest) and faded by confidence (thesis Fig. 19).

    ``atoms`` positions: x, y in the window's frame (Å), z relative to the top atom (≤ 0).
    """
    keep = atoms.confidence >= threshold
    shown = atoms.select(keep)
    depth = shown.positions[:, 2]
    colours = np.zeros((len(shown), 4))
    colours[:, 2] = 0.8
    colours[:, 3] = np.clip(shown.confidence, 0.05, 1.0)
    order = np.argsort(depth)  # deepest first, so higher atoms are drawn on top
    axes.scatter(shown.positions[order, 0], shown.positions[order, 1],
                 s=260 * np.clip(1 + depth[order] / 1.4, 0.2, 1.0) ** 2, c=colours[order],
                 edgecolors="black", linewidths=0.5)
    axes.set_xlim(window.extent[0], window.extent[1])
    axes.set_ylim(window.extent[2], window.extent[3])
    label_axes(axes, f"{title}: {len(shown)} atoms ≥ {threshold:g}")


def plot_prediction(path: str | Path, x: np.ndarray, outputs: dict[str, np.ndarray], atoms: Atoms | None,
                    window: ScanWindow, threshold: float, title: str | None = None) -> Path:
    """Input slices (far, middle, close of the first channel; the closest of the others), then every
    output map; xyz: the atom confidence per box and the decoded atoms.

    Args:
        x: (C, nx, ny, K) the normalised network input, slices far → close.
        outputs: output name → the model's output for this stack: maps (nx, ny); xyz ``xyz_classes``
            (n_classes, gx, gy), background first.
        atoms: the atoms decoded from an xyz model's outputs (window-centred x, y in Å), None for map models.
        window: the scan window the maps cover.
        threshold: the confidence atoms were decoded with (shown in the title).
    """
    path = Path(path)
    panels: list[tuple[str, object]] = [("slice", (0, k)) for k in _shown_slices(x.shape[3])]
    panels += [("slice", (c, x.shape[3] - 1)) for c in range(1, x.shape[0])]
    if atoms is not None:
        panels += [("confidence", None), ("atoms", None)]
    else:
        panels += [("map", name) for name in outputs]
    figure = Figure(figsize=(3.7 * len(panels), 3.4), layout="constrained")
    axes_row = np.atleast_1d(figure.subplots(1, len(panels)))
    for axes, (kind, item) in zip(axes_row, panels):
        if kind == "slice":
            channel, k = item
            draw_map(figure, axes, x[channel, :, :, k], window,
                      f"input ch {channel}, slice {k + 1}/{x.shape[3]}", "normalised Δf", "gray")
        elif kind == "map":
            label, unit, cmap = DESCRIPTOR_STYLE.get(item, (item, "", "viridis"))
            draw_map(figure, axes, outputs[item], window, f"{label} (predicted)", unit, cmap,
                      symmetric=item == "es_map")
        elif kind == "confidence":
            confidence = 1.0 - outputs["xyz_classes"][0]
            shown = axes.imshow(confidence.T, origin="lower", extent=window.extent, cmap="magma", vmin=0, vmax=1)
            figure.colorbar(shown, ax=axes, label="1 − p(background)", shrink=0.85)
            label_axes(axes, "atom confidence per box")
        else:
            draw_atoms(axes, atoms, window, threshold)
    if title:
        figure.suptitle(title, fontsize="small")
    return save_figure(figure, path, dpi=90)


def plot_match_rows(path: str | Path, rows: Sequence[dict], window: ScanWindow) -> Path:
    """Thesis Fig. 17: one row per experiment.

    Each row dict holds ``name``; ``experiment_x`` and ``simulation_x`` (nx, ny, K) normalised
    inputs (first channel; None in descriptor mode); ``experiment_map`` and ``simulation_map``
    (nx, ny) vdW Spheres (Å); ``molecule`` (the best-matching rotated molecule); ``label``
    (rotation, score). Columns: experiment far / middle / close, experiment vdW Spheres, matched
    simulation vdW Spheres, its geometry, simulation far / middle / close.
    """
    path = Path(path)
    with_slices = rows[0]["experiment_x"] is not None
    n_columns = 3 + (2 * INPUT_SLICES_SHOWN if with_slices else 0)
    figure = Figure(figsize=(2.9 * n_columns, 2.7 * len(rows) + 0.4), layout="constrained")
    grid = np.atleast_2d(figure.subplots(len(rows), n_columns))
    style = DESCRIPTOR_STYLE["vdw_spheres"]
    for axes, row in zip(grid, rows):
        columns = iter(axes)
        if with_slices:
            for k in _shown_slices(row["experiment_x"].shape[2]):
                draw_map(figure, next(columns), row["experiment_x"][:, :, k], window,
                          f"{row['name']}: slice {k + 1}", "normalised Δf", "gray")
        draw_map(figure, next(columns), row["experiment_map"], window, f"{row['name']}: vdW Spheres", style[1], style[2])
        draw_map(figure, next(columns), row["simulation_map"], window, f"match: {row['label']}", style[1], style[2])
        draw_molecule(figure, next(columns), prepare_atoms(row["molecule"]), window)
        if with_slices:
            for k in _shown_slices(row["simulation_x"].shape[2]):
                draw_map(figure, next(columns), row["simulation_x"][:, :, k], window,
                          f"simulation: slice {k + 1}", "normalised Δf", "gray")
        for unused in columns:
            unused.set_visible(False)
    return save_figure(figure, path, dpi=90)
