"""The sweep's summary artifacts: a trial table (CSV) and the objective against each hyperparameter (PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure

from afm_ray.figures.scans import save_figure


def write_summary(trials: list[dict], hyperparameters: list[str], metric: str, mode: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "trials.csv"
    columns = ["trial_id", *hyperparameters, metric, "epochs", "error"]
    ranked = sorted(trials, key=lambda t: (t[metric] is None, -(t[metric] or 0) if mode == "max" else (t[metric] or 0)))
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(ranked)

    figure = Figure(figsize=(4.2 * len(hyperparameters), 3.6), layout="constrained")
    axes_list = figure.subplots(1, len(hyperparameters), squeeze=False)[0]
    done = [t for t in trials if t[metric] is not None]
    for axes, name in zip(axes_list, hyperparameters):
        values = [t[name] for t in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numeric:  # choices of lists, strings or booleans: one column per distinct value
            labels = sorted({str(v) for v in values})
            axes.set_xticks(range(len(labels)), labels, rotation=20, fontsize="small")
            values = [labels.index(str(v)) for v in values]
        shown = axes.scatter(values, [t[metric] for t in done], c=[t["epochs"] for t in done],
                             cmap="viridis", edgecolors="black")
        axes.set(xlabel=name, ylabel=metric, title=f"{metric} ({mode}) vs {name}")
        if numeric and name.endswith(("beta_pl", "learning_rate")) and done and min(values) > 0:
            axes.set_xscale("log")
    figure.colorbar(shown, ax=axes_list[-1], label="epochs run (ASHA stops early)")
    plot = folder / "objective_vs_hyperparameters.png"
    save_figure(figure, plot, dpi=100)
    return [table, plot]
