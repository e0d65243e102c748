"""A figure of one training sample: AFM slices, descriptors, and the molecule seen from above
(thesis Figs. 10, 11, 14).

Uses Matplotlib's object API with the Agg canvas (no pyplot state, safe in worker processes)::

    from afm_ray.figures.scans import plot_sample
    plot_sample("sample.png", stack=stack[0], descriptors={"vdw_spheres": spheres[0]},
                molecule=(positions, numbers))

Map conventions are those of :mod:`afm_ray.descriptors.geometry`: arrays ``[i, j]`` with i along
x, drawn with ``origin="lower"`` over the window's extent in Å, molecule-centred frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from afm_ray.descriptors.geometry import DEFAULT_WINDOW, AtomBatch, ScanWindow, prepare_atoms
from afm_ray.elements import ELEMENT_TABLE
from afm_ray.files import atomic_file

DESCRIPTOR_STYLE: dict[str, tuple[str, str, str]] = {
    # key: (title, colour-bar label, colormap)
    "atomic_disks": ("Atomic Disks", "height above cut (Å)", "viridis"),
    "vdw_spheres": ("vdW Spheres", "height above cut (Å)", "viridis"),
    "height_map": ("Height Map", "height above cut (Å)", "viridis"),
    "es_map": ("Electrostatic Map", "potential (V)", "coolwarm"),
}
"""How known descriptor names are drawn; other names get their key as title and no unit."""

ELEMENT_COLOURS: dict[int, str] = {
    1: "#ffffff", 6: "#808080", 7: "#3050f8", 8: "#ff0d0d", 9: "#90e050", 14: "#f0c8a0",
    15: "#ff8000", 16: "#e6c800", 17: "#1ff01f", 35: "#a62929",
}
"""CPK-like colours by atomic number; other elements are pink."""


def plot_sample(path: str | Path, *, stack: np.ndarray | None = None,
                descriptors: Mapping[str, np.ndarray] | None = None, molecule: Any = None,
                xyz_classes: np.ndarray | None = None, xyz_offsets: np.ndarray | None = None,
                window: ScanWindow = DEFAULT_WINDOW, n_slices: int = 4, stack_label: str = "Δf (Hz)",
                title: str | None = None, dpi: int = 100) -> Path:
    """Write a PNG of one sample and return its path.

    Args:
        path: output file (parent directories are created).
        stack: (nx, ny, nz) AFM stack, z far → close; ``n_slices`` evenly spaced slices are drawn.
        descriptors: name → (nx, ny) map; names in :data:`DESCRIPTOR_STYLE` get titles and units.
        molecule: one molecule (anything :func:`afm_ray.descriptors.as_atom_batch` takes); drawn
            from above, coloured by element, larger and on top when higher, centred like the maps.
        xyz_classes, xyz_offsets: one sample's xyz descriptor ((n_classes, gx, gy), (3, gx, gy));
            drawn as the box grid with the assigned atoms (size by height), as in thesis Fig. 11.
        window: the maps' scan window.
        stack_label: colour-bar label of the AFM slices (e.g. "normalised Δf" after augmentation).
    """
    panels: list[tuple[str, Any]] = []
    if stack is not None:
        stack = np.asarray(stack)
        picks = np.unique(np.linspace(0, stack.shape[2] - 1, min(n_slices, stack.shape[2])).round().astype(int))
        panels += [("slice", (int(k), stack.shape[2])) for k in picks]
    for name in (descriptors or {}):
        panels.append(("descriptor", name))
    if xyz_classes is not None and xyz_offsets is not None:
        panels.append(("xyz", None))
    if molecule is not None:
        panels.append(("molecule", None))
    if not panels:
        raise ValueError("plot_sample: nothing to draw (give a stack, descriptors, xyz or a molecule)")

    n_columns = min(len(panels), 4)
    n_rows = -(-len(panels) // n_columns)
    figure = Figure(figsize=(4.2 * n_columns, 3.6 * n_rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    atoms = prepare_atoms(molecule) if molecule is not None else None
    for index, (kind, item) in enumerate(panels):
        axes = figure.add_subplot(n_rows, n_columns, index + 1)
        if kind == "slice":
            k, n_total = item
            draw_map(figure, axes, stack[:, :, k], window, f"AFM slice {k + 1}/{n_total} (far → close)",
                      stack_label, "afmhot")
        elif kind == "descriptor":
            title_, unit, cmap = DESCRIPTOR_STYLE.get(item, (item, "", "viridis"))
            draw_map(figure, axes, np.asarray(descriptors[item]), window, title_, unit, cmap,
                      symmetric=cmap == "coolwarm")
        elif kind == "xyz":
            _draw_xyz(axes, np.asarray(xyz_classes), np.asarray(xyz_offsets), window)
        else:
            draw_molecule(figure, axes, atoms, window)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def save_figure(figure: Figure, path: str | Path, *, dpi: float | str = "figure") -> Path:
    """Write ``figure`` to ``path`` (format from the suffix, PNG when there is none) and return the path.

    Creates the parent folder, renders on the Agg canvas (no pyplot state, safe in worker
    processes) through :func:`afm_ray.files.atomic_file`, so a reader (MLflow's artifact upload, a
    browser) never sees half a file.
    The figure is cleared afterwards to free its artists; it must not be drawn again.

    Args:
        dpi: dots per inch, or ``"figure"`` for the figure's own.
    """
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_file(path) as stream:
        figure.savefig(stream, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
    figure.clear()
    return path


def draw_map(figure: Figure, axes: Axes, image: np.ndarray, window: ScanWindow, title: str, unit: str, cmap: str,
             symmetric: bool = False) -> None:
    """Draw an (nx, ny) map ``[i, j]`` (i along x) over the window's extent in Å with a colour bar
    labelled ``unit``; ``symmetric`` centres the colour scale on 0 (for signed maps such as ES)."""
    limits = {}
    if symmetric:
        bound = float(np.abs(image).max()) or 1.0
        limits = {"vmin": -bound, "vmax": bound}
    shown = axes.imshow(image.T, origin="lower", extent=window.extent, cmap=cmap, **limits)
    figure.colorbar(shown, ax=axes, label=unit, shrink=0.85)
    label_axes(axes, title)


def label_axes(axes: Axes, title: str) -> None:
    """Title, x/y labels in Å and equal aspect: the frame of every map panel."""
    axes.set_title(title)
    axes.set_xlabel("x (Å)")
    axes.set_ylabel("y (Å)")
    axes.set_aspect("equal")


def draw_molecule(figure: Figure, axes: Axes, atoms: AtomBatch, window: ScanWindow) -> None:
    """Draw the first molecule of ``atoms`` from above: CPK colours, marker size by vdW radius and
    depth (higher atoms larger and on top), the scan window dashed, an element legend."""
    positions, numbers, _ = atoms.molecule(0)
    depth = positions[:, 2] - positions[:, 2].max()  # ≤ 0, 0 at the top nucleus
    order = np.argsort(depth)  # deepest first so higher atoms are drawn on top
    radii = ELEMENT_TABLE.vdw_radius(numbers)
    # marker area grows with the vdW radius and shrinks with depth (atoms 3 Å down are half size)
    sizes = 90.0 * radii**2 * np.clip(1.0 + depth / 6.0, 0.25, 1.0) ** 2
    colours = [ELEMENT_COLOURS.get(int(z), "#ff69b4") for z in numbers]
    axes.scatter(positions[order, 0], positions[order, 1], s=sizes[order], c=[colours[i] for i in order],
                 edgecolors="black", linewidths=0.6, zorder=2)
    axes.add_patch(Rectangle((window.x_min, window.y_min), window.width, window.height, fill=False,
                             linestyle="--", edgecolor="0.5", zorder=1))
    present = sorted(set(int(z) for z in numbers))
    axes.legend(handles=[Line2D([], [], marker="o", linestyle="", markerfacecolor=ELEMENT_COLOURS.get(z, "#ff69b4"),
                                markeredgecolor="black", label=ELEMENT_TABLE.symbols[z]) for z in present],
                loc="upper right", fontsize="small", title="size ∝ height", title_fontsize="x-small")
    axes.set_xlim(window.extent[0], window.extent[1])
    axes.set_ylim(window.extent[2], window.extent[3])
    label_axes(axes, f"molecule from above ({len(numbers)} atoms)")


def _draw_xyz(axes: Axes, classes: np.ndarray, offsets: np.ndarray, window: ScanWindow) -> None:
    gx, gy = classes.shape[1:]
    box_x, box_y = window.width / gx, window.height / gy
    for i in range(gx + 1):
        axes.axvline(window.x_min + i * box_x, color="0.85", linewidth=0.5)
    for j in range(gy + 1):
        axes.axhline(window.y_min + j * box_y, color="0.85", linewidth=0.5)
    centre_x = window.x_min + (np.arange(gx) + 0.5) * box_x
    centre_y = window.y_min + (np.arange(gy) + 0.5) * box_y
    grid_x, grid_y = np.meshgrid(centre_x, centre_y, indexing="ij")
    axes.scatter(grid_x.ravel(), grid_y.ravel(), s=2, color="0.6")
    i, j = np.nonzero(classes[0] < 0.5)
    z = offsets[2, i, j]
    # circle area by height: the top atom (z = 0) largest, atoms at the −0.7 Å cut about a third
    shown = axes.scatter(centre_x[i] + offsets[0, i, j], centre_y[j] + offsets[1, i, j], s=60 * (1 + z / 1.0) ** 2 + 8,
                         c=z, cmap="viridis", vmin=min(-0.7, float(z.min(initial=0))), vmax=0.0,
                         edgecolors="black", linewidths=0.5, zorder=2)
    axes.figure.colorbar(shown, ax=axes, label="z rel. top nucleus (Å)", shrink=0.85)
    axes.set_xlim(window.extent[0], window.extent[1])
    axes.set_ylim(window.extent[2], window.extent[3])
    label_axes(axes, f"xyz descriptor ({len(i)} atoms in {gx}×{gy} boxes)")

