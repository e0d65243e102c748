"""``afm-ray evaluate``: any registered model on the fixed validation or test set of a config.

The set is simulated once by the config's simulation actors and cached like training's fixed sets
(same content hash, so a training run with the same data settings shares it). The model's own
training config says what input it expects; the evaluation config says how the data are made
(geometry, descriptor conventions, augmentation) and weighs the loss. So one model can be scored
on several data settings, e.g. the published ASD-AFM weights on ``configs/published_asdafm.yaml``
and on the thesis defaults.

Figures per model: DSH/ES per-descriptor MSE beside the Pearson correlation (pooled over all pixels
of all samples); xyz precision/recall curves, F1 and position error. The loss twice: weighted as the
evaluation config says (``{subset}_loss``) and with the thesis' settings (``{subset}_loss_thesis_weights``,
:func:`~afm_ray.train.configured_model.build_thesis_loss`), the one comparable with Table 6 whatever weights a
model was trained with. Everything is logged as one MLflow *evaluation run* (tag ``afm_ray.evaluates``)
with figures, and printed beside the thesis' Table 6 loss for that model.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from afm_ray.errors import InputError
from afm_ray.figures.metrics import write_xyz_figures
from afm_ray.recipe import TrainConfig, with_absolute_paths

EVALUATION_TAG = "afm_ray.evaluates"


@dataclass
class EvaluationReport:
    """One evaluation: what was scored on which data, its figures, and the MLflow run holding them."""

    model_reference: str
    model_name: str
    split: str
    subset: str
    n_samples: int
    metrics: dict[str, float]
    run_id: str
    clean: bool = False
    thesis_loss: dict[str, float] = field(default_factory=dict)
    loss_settings: str = ""
    thesis_loss_settings: str = ""

    def lines(self) -> list[str]:
        """The report as printed: metrics, per-descriptor MSE beside correlation, then the loss with the
        config's and with the thesis' settings beside the thesis' Table 6 loss."""
        scans = "clean " if self.clean else ""
        out = [f"{self.model_reference} on {self.n_samples} {scans}{self.subset} samples of split {self.split!r} "
               f"(MLflow run {self.run_id}):"]
        mse_prefix, corr_prefix = f"{self.subset}_mse_", f"{self.subset}_corr_"
        descriptors = [name.removeprefix(corr_prefix) for name in self.metrics if name.startswith(corr_prefix)]
        beside = {f"{mse_prefix}{name}" for name in descriptors} | {f"{corr_prefix}{name}" for name in descriptors}
        out += [f"  {name:<34} {value:.4g}" for name, value in self.metrics.items() if name not in beside]
        if descriptors:
            out.append(f"  {'descriptor':<34} {'MSE':>10} {'correlation':>12}")
            out += [f"  {name:<34} {self.metrics[mse_prefix + name]:>10.4g} {self.metrics[corr_prefix + name]:>12.4f}"
                    for name in descriptors]
        ours = self.metrics.get(f"{self.subset}_loss")
        thesis_weighted = self.metrics.get(f"{self.subset}_loss_thesis_weights")
        for dataset, loss in self.thesis_loss.items():
            out.append(f"  {'loss vs thesis Table 6':<34} ours {ours:.3g} ({self.loss_settings}), "
                       f"{thesis_weighted:.3g} ({self.thesis_loss_settings}, the thesis')  "
                       f"thesis {self.model_name} {dataset} {self.subset} {loss:.3g}")
        return out


def check_compatible(model_config: TrainConfig, config: TrainConfig, reference: str) -> None:
    """The evaluation data must be what the network reads: same model, tips, slices, pixels, classes."""
    expected = {"model.name": (model_config.model.name, config.model.name),
                "input slices": (model_config.input_slices, config.input_slices),
                "sim.scan_pixels": (tuple(model_config.sim.scan_pixels), tuple(config.sim.scan_pixels)),
                "model.element_classes": (model_config.model.element_classes, config.model.element_classes)}
    for what, (model_value, data_value) in expected.items():
        if model_value != data_value:
            raise InputError("evaluate --config", f"{reference} expects {what} = {model_value!r}, but the config "
                                                  f"makes {data_value!r}; use a config of the model's kind")


def data_differences(model_config: TrainConfig, config: TrainConfig) -> list[str]:
    """``section.field: model's → evaluation's`` for every data setting that differs from the model's training."""
    before = model_config.sample_settings.eval_identity()
    after = config.sample_settings.eval_identity()
    return [f"{key}: {before_value!r} → {after_value!r}" for key, before_value, after_value in _flat_diff(before, after)]


def _flat_diff(before, after, prefix: str = ""):
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            yield from _flat_diff(before.get(key), after.get(key), f"{prefix}{key}.")
    elif before != after:
        yield prefix.rstrip("."), before, after


def loss_descriptions(config: TrainConfig) -> tuple[str, str]:
    """One line each of the config's loss settings and the thesis' (e.g. ``weights 20, 0.2, 0.1``)."""
    return config.loss.describe(), config.model.spec.loss_settings().describe()


def clean_scans(config: TrainConfig) -> TrainConfig:
    """``config`` without the training randomisation that corrupts a scan: no probe tilt, no start-distance
    jitter, no noise, shifts or cutouts. Slice choice and normalisation stay: they are what the model reads."""
    augment = config.augment.model_copy(update={
        step: getattr(config.augment, step).model_copy(update={"enabled": False}) for step in ("noise", "shift", "cutout")})
    return config.model_copy(update={"sim": config.sim.without_randomness(), "augment": augment})


def evaluate_registered(reference: str, config: TrainConfig, subset: str = "test", tracking_uri: str | None = None,
                        device: str = "cpu", progress: bool = True, clean: bool = False,
                        trust_pickle: bool = False, allowed_modules: Collection[str] = ()) -> EvaluationReport:
    """Score model ``reference`` (``models:/NAME@ALIAS``, ``runs:/…``, a folder) on ``config``'s ``subset``.

    ``clean``: on :func:`clean_scans` of the config (the model's accuracy on ideal scans rather than
    its robustness to the training randomisation). ``trust_pickle``: also load a model an older
    afm-ray registered pickled (:func:`afm_ray.registry.load_model`). ``allowed_modules``: plugin
    modules the model may name (``--allow-module``) besides the config's own ``model.module``. Raises
    :class:`InputError` for an unknown model, an incompatible config or a bad subset.
    """
    from afm_ray.pipeline.actors import create_simulation_actors, stop_actors
    from afm_ray.pipeline.fixed_sets import FixedSet, materialize
    from afm_ray.pipeline.sources import load_split_samples
    from afm_ray.registry.loading import load_model
    from afm_ray.pipeline.cluster import ensure_ray
    from afm_ray.train.validation import evaluate
    from afm_ray.train.configured_model import build_loss, build_thesis_loss

    if subset not in ("val", "test"):
        raise InputError("--split", f"expected val or test, got {subset!r}")
    if tracking_uri:
        config = config.model_copy(update={"mlflow": config.mlflow.model_copy(update={"tracking_uri": tracking_uri})})
    config = with_absolute_paths(clean_scans(config) if clean else config)
    # the user's own config already imported its model.module: the model may name it too
    trusted = (*allowed_modules, *([config.model.module] if config.model.module else []))
    loaded = load_model(reference, config.mlflow.tracking_uri, trust_pickle=trust_pickle, allowed_modules=trusted)
    check_compatible(loaded.config, config, reference)
    for line in data_differences(loaded.config, config):
        print(f"data differs from the model's training: {line}", flush=True)
    settings = config.sample_settings
    n_samples = len(load_split_samples(settings, (subset,))[subset])
    ensure_ray()
    actors = create_simulation_actors(settings, config.pipeline, name_prefix=None)
    try:
        path = materialize(settings, subset, n_samples, config.run.seed, actors, progress,
                           config.pipeline.batch_timeout_s, config.pipeline.max_attempts_per_batch)
    finally:
        stop_actors(actors)
    fixed_set = FixedSet(path)
    network = loaded.packed.network.to(device)
    evaluation = evaluate(network, build_loss(config), config, fixed_set, torch.device(device),
                          thesis_loss_fn=build_thesis_loss(config))
    metrics = {f"{subset}_samples": float(len(fixed_set)), **evaluation.result(subset)}
    run_id = _log_run(loaded, reference, config, subset, clean, metrics, evaluation, fixed_set, network)
    published = config.model.spec.published_losses
    thesis = {dataset: losses[subset] for dataset, losses in published.items()
              if config.data.split not in published or dataset == config.data.split}
    return EvaluationReport(reference, config.model.name, config.data.split, subset, len(fixed_set), metrics,
                            run_id, clean, thesis, *loss_descriptions(config))


def _log_run(loaded, reference: str, config: TrainConfig, subset: str, clean: bool, metrics: dict[str, float],
             evaluation, fixed_set, network) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from afm_ray.figures.training import plot_predictions
    from afm_ray.registry.tracking import ARCHITECTURE_TAG, create_config_run

    client = MlflowClient(config.mlflow.tracking_uri)
    label = f"{loaded.registered_name} v{loaded.version}" if loaded.registered_name else reference
    run_id = create_config_run(client, config, f"evaluate {label} on {subset}",
                               {EVALUATION_TAG: reference, ARCHITECTURE_TAG: config.model.name,
                                "afm_ray.split": config.data.split, "afm_ray.subset": subset,
                                "afm_ray.clean_scans": str(clean).lower(),
                                **dict(zip(("afm_ray.loss_settings", "afm_ray.thesis_loss_settings"),
                                           loss_descriptions(config))),
                                **({"afm_ray.model_run_id": loaded.run_id} if loaded.run_id else {})})
    client.log_batch(run_id, metrics=[Metric(name, value, int(time.time() * 1000), 0)
                                      for name, value in metrics.items() if np.isfinite(value)])
    with tempfile.TemporaryDirectory() as folder:
        samples = fixed_set.first(max(config.run.num_figure_samples, 1))
        with torch.no_grad():
            outputs = network(torch.from_numpy(samples.x).to(next(network.parameters()).device))
        outputs = tuple(output.cpu() for output in outputs)
        figures = [plot_predictions(config.model.name, samples, outputs, Path(folder) / f"{subset}_predictions.png",
                                    config.sim)]
        if evaluation.xyz_metrics() is not None:
            figures += list(write_xyz_figures(evaluation.xyz_metrics(), folder, prefix=f"{subset}_xyz").values())
        for figure in figures:
            client.log_artifact(run_id, str(figure), "figures")
        summary = Path(folder) / "evaluation.json"
        summary.write_text(json.dumps({"model": reference, "subset": subset, "metrics": metrics}, indent=2))
        client.log_artifact(run_id, str(summary))
    client.set_terminated(run_id, status="FINISHED")
    return run_id
