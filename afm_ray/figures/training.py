"""Training figures logged to MLflow: loss curves (thesis Fig. 15) and predictions on fixed samples (Figs. 16, 19)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from afm_ray.descriptors.geometry import ScanWindow
from afm_ray.descriptors.xyz_codec import decode_xyz
from afm_ray.models import get_model_spec
from afm_ray.figures.scans import DESCRIPTOR_STYLE, draw_map, label_axes, save_figure
from afm_ray.samples.sample_batch import SampleBatch

FIGURE_DPI = 100


def plot_loss_curves(history: list[dict], path: str | Path) -> Path:
    """Train and validation loss per epoch (log scale) and the validation metrics beside them."""
    path = Path(path)
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, metric_axes = figure.subplots(1, 2)
    epochs = [h["epoch"] + 1 for h in history]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_axes.plot(epochs, [h[key] for h in history], marker="o", label=label)
    loss_axes.set_yscale("log")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_axes.legend()
    for key in sorted(k for k in (history[0] if history else {}) if k.startswith("val_") and k != "val_loss"
                      and ("mse" in k or "precision" in k or "recall" in k or "f1" in k)):
        metric_axes.plot(epochs, [h[key] for h in history], marker=".", label=key[4:])
    metric_axes.set(xlabel="epoch", title="validation metrics")
    if metric_axes.get_legend_handles_labels()[0]:
        metric_axes.legend(fontsize="small")
    return save_figure(figure, path, dpi=FIGURE_DPI)


def plot_predictions(model_name: str, samples: SampleBatch, outputs, path: str | Path, sim_config) -> Path:
    """Rows of samples: the closest AFM slice, then reference and prediction of each of the model's
    ``figure_maps`` (an output map, or the atoms decoded from the xyz outputs).

    ``samples``: a batch with ``x`` (B, C, nx, ny, K) and the model's targets (e.g. ``FixedSet.first``);
    ``outputs``: the model's outputs for it, in its spec's order, (B, …) arrays or CPU tensors.
    """
    path = Path(path)
    window = ScanWindow.from_sim_config(sim_config)
    n_rows = len(samples)
    spec = get_model_spec(model_name)
    n_columns = 1 + 2 * len(spec.figure_maps)
    figure = Figure(figsize=(3.6 * n_columns, 3.2 * n_rows), layout="constrained")
    axes = np.atleast_2d(figure.subplots(n_rows, n_columns))
    for row in range(n_rows):
        draw_map(figure, axes[row, 0], samples.x[row, 0, :, :, -1], window, "AFM, closest slice",
                  "normalised Δf", "gray")
        predicted = dict(zip(spec.output_names, outputs))
        for index, name in enumerate(spec.figure_maps):
            reference_axes, prediction_axes = axes[row, 1 + 2 * index], axes[row, 2 + 2 * index]
            if name == "atoms":
                _draw_atoms(reference_axes, samples.targets["xyz_classes"][row], samples.targets["xyz_offsets"][row],
                            window, "reference")
                _draw_atoms(prediction_axes, np.asarray(predicted["xyz_classes"][row]),
                            np.asarray(predicted["xyz_offsets"][row]), window, "prediction")
                continue
            target = spec.targets[spec.output_names.index(name)]
            title, unit, cmap = DESCRIPTOR_STYLE.get(name, (name, "", "viridis"))
            symmetric = name == "es_map"
            draw_map(figure, reference_axes, samples.targets[target][row], window, f"{title}: reference", unit, cmap,
                     symmetric)
            draw_map(figure, prediction_axes, np.asarray(predicted[name][row]), window, f"{title}: prediction", unit,
                      cmap, symmetric)
    return save_figure(figure, path, dpi=FIGURE_DPI)


def _draw_atoms(axes, classes: np.ndarray, offsets: np.ndarray, window: ScanWindow, title: str) -> None:
    """Atoms as circles sized by height and faded by confidence (thesis Fig. 19)."""
    (atoms,) = decode_xyz(classes[None], offsets[None], threshold=0.1)
    x = atoms.positions[:, 0] + window.x_min
    y = atoms.positions[:, 1] + window.y_min
    depth = atoms.positions[:, 2]
    colours = np.zeros((len(atoms), 4))
    colours[:, 2] = 0.8
    colours[:, 3] = np.clip(atoms.confidence, 0.05, 1.0)
    axes.scatter(x, y, s=200 * np.clip(1 + depth / 1.4, 0.2, 1.0) ** 2, c=colours, edgecolors="black", linewidths=0.5)
    axes.set_xlim(window.extent[0], window.extent[1])
    axes.set_ylim(window.extent[2], window.extent[3])
    label_axes(axes, f"xyz {title} ({int((atoms.confidence >= 0.5).sum())} atoms ≥ 0.5)")
