"""Training figures logged to MLflow: loss curves (thesis Fig. 15) and predictions on fixed samples (Figs. 16, 19)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from afm_ray.batches import MODEL_TARGETS
from afm_ray.descriptors.geometry import ScanWindow
from afm_ray.metrics import decode_xyz
from afm_ray.plots import DESCRIPTOR_STYLE, _draw_map, _label_axes


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
    return path


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
    return _save(figure, path)


def plot_predictions(model_name: str, samples: dict, outputs, path: str | Path, sim_config) -> Path:
    """Rows of samples: the closest AFM slice, then reference and prediction of every output."""
    path = Path(path)
    window = ScanWindow.from_sim_config(sim_config)
    n_rows = len(samples["x"])
    targets = MODEL_TARGETS[model_name]
    n_columns = 1 + (2 if model_name == "xyz" else 2 * len(targets))
    figure = Figure(figsize=(3.6 * n_columns, 3.2 * n_rows), layout="constrained")
    axes = np.atleast_2d(figure.subplots(n_rows, n_columns))
    for row in range(n_rows):
        _draw_map(figure, axes[row, 0], samples["x"][row, 0, :, :, -1], window, "AFM, closest slice",
                  "normalised Δf", "gray")
        if model_name == "xyz":
            _draw_atoms(axes[row, 1], samples["xyz_classes"][row], samples["xyz_offsets"][row], window, "reference")
            _draw_atoms(axes[row, 2], outputs[0][row].numpy(), outputs[1][row].numpy(), window, "prediction")
            continue
        for index, name in enumerate(targets):
            title, unit, cmap = DESCRIPTOR_STYLE.get(name, (name, "", "viridis"))
            reference, predicted = samples[name][row], outputs[index][row].numpy()
            symmetric = name == "es_map"
            _draw_map(figure, axes[row, 1 + 2 * index], reference, window, f"{title}: reference", unit, cmap, symmetric)
            _draw_map(figure, axes[row, 2 + 2 * index], predicted, window, f"{title}: prediction", unit, cmap, symmetric)
    return _save(figure, path)


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
    _label_axes(axes, f"xyz {title} ({int((atoms.confidence >= 0.5).sum())} atoms ≥ 0.5)")
