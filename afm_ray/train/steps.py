"""Model, loss and evaluation of each task (DSH, ES, xyz), shared by training, tuning and prediction."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from afm_ray.batches import MODEL_TARGETS
from afm_ray.elements import ELEMENT_TABLE
from afm_ray.losses import FocalPositionLoss, LossOutput, WeightedMSELoss
from afm_ray.metrics import ImageMetricsAccumulator, XYZEvaluator
from afm_ray.models import build_model as build_network
from afm_ray.models import class_names
from afm_ray.train.config import TrainConfig

# Objective metrics comparable across loss settings (used by Ray Tune and to pick the best checkpoint).
IMAGE_OBJECTIVE = "val_mse_mean"
XYZ_OBJECTIVE = "val_atom_f1"


def model_element_classes(config: TrainConfig) -> list[list[str]] | None:
    """The xyz model's classes: the configured groups plus one for every other element.

    The xyz descriptor puts elements in no group into a final "other" class; the network needs the
    same channels.
    """
    groups = config.model.element_classes
    if groups is None:
        return None
    grouped = {symbol for group in groups for symbol in group}
    others = [ELEMENT_TABLE.symbols[z] for z in ELEMENT_TABLE.known_numbers if ELEMENT_TABLE.symbols[z] not in grouped]
    return [list(group) for group in groups] + [others]


def build_model(config: TrainConfig) -> nn.Module:
    options: dict = {"n_slices": config.input_slices, "padding_mode": config.model.padding}
    if config.model.name == "xyz":
        options["element_classes"] = model_element_classes(config)
    else:
        options["skip_connections"] = config.model.skip_connections
    return build_network(config.model.name, **options)


def build_loss(config: TrainConfig) -> nn.Module:
    loss = config.loss
    if config.model.name == "dsh":
        return WeightedMSELoss(loss.dsh_weights, MODEL_TARGETS["dsh"])
    if config.model.name == "es":
        return WeightedMSELoss(loss.es_weights, MODEL_TARGETS["es"])
    return FocalPositionLoss(loss.gamma, loss.alpha_n, loss.beta_pl, loss.z_min_angstrom)


def to_tensors(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The float arrays of a batch as tensors on ``device`` (``samples`` and timings stay behind).

    Arrays fetched from Ray's object store are read-only views of shared memory; those are copied
    so that no tensor aliases memory torch may not write.
    """
    return {name: torch.from_numpy(value if value.flags.writeable else value.copy()).to(device, non_blocking=True)
            for name, value in batch.items() if isinstance(value, np.ndarray) and value.dtype.kind == "f"}


def compute_loss(model_name: str, loss_fn: nn.Module, outputs, tensors: dict[str, torch.Tensor]) -> LossOutput:
    """Loss of ``outputs`` (the model's forward result) against the batch's targets."""
    targets = [tensors[name] for name in MODEL_TARGETS[model_name]]
    if model_name == "xyz":
        class_probabilities, offsets = outputs
        return loss_fn(class_probabilities, offsets, *targets)
    return loss_fn(list(outputs), targets)


@dataclass
class Evaluation:
    """Accumulates loss and task metrics over batches; :meth:`result` gives flat ``val_…`` figures."""

    model_name: str
    class_names: tuple[str, ...] = ("background", "atom")
    _loss_sum: dict[str, float] = field(default_factory=dict)
    _samples: float = 0.0
    _images: ImageMetricsAccumulator | None = None
    _xyz: XYZEvaluator | None = None

    def __post_init__(self):
        if self.model_name == "xyz":
            self._xyz = XYZEvaluator(class_names=self.class_names)
        else:
            self._images = ImageMetricsAccumulator(MODEL_TARGETS[self.model_name])

    def update(self, outputs, tensors: dict[str, torch.Tensor], loss: LossOutput) -> None:
        weight = float(loss.n_samples)
        for name, value in loss.detached().items():
            if name != "n_samples":
                self._loss_sum[name] = self._loss_sum.get(name, 0.0) + value * weight
        self._samples += weight
        targets = [tensors[name] for name in MODEL_TARGETS[self.model_name]]
        if self._xyz is not None:
            self._xyz.update(outputs[0].detach().cpu(), outputs[1].detach().cpu(), *[t.cpu() for t in targets])
        else:
            self._images.update([o.detach().cpu() for o in outputs], [t.cpu() for t in targets])

    def merge(self, other: "Evaluation") -> None:
        """Add another rank's evaluation of its shard of the same set."""
        for name, value in other._loss_sum.items():
            self._loss_sum[name] = self._loss_sum.get(name, 0.0) + value
        self._samples += other._samples
        if self._xyz is not None:
            self._xyz.merge(other._xyz)
        else:
            self._images.merge(other._images)

    def combined_over_ranks(self) -> "Evaluation":
        """The evaluation of the whole set when every DDP rank evaluated its shard (a collective call).

        Each rank's sums and xyz detections are gathered to every rank and added in rank order, so
        the result equals one rank evaluating every shard, up to float summation order.
        """
        shares = gathered_from_ranks(self)
        if len(shares) == 1:
            return self
        combined = Evaluation(self.model_name, self.class_names)
        for share in shares:
            combined.merge(share)
        return combined

    def result(self, prefix: str = "val") -> dict[str, float]:
        samples = max(self._samples, 1.0)
        figures = {f"{prefix}_loss" if name == "total" else f"{prefix}_loss_{name}": value / samples
                   for name, value in self._loss_sum.items()}
        if self._xyz is not None:
            summary = self._xyz.result().summary()
            figures.update({f"{prefix}_{name}": value for name, value in summary.items()})
            precision, recall = summary["atom_precision"], summary["atom_recall"]
            figures[f"{prefix}_atom_f1"] = (2 * precision * recall / (precision + recall)
                                            if precision + recall > 0 else 0.0)
        else:
            mse = self._images.result()
            figures.update({f"{prefix}_mse_{name}": value for name, value in mse.items()})
            figures[f"{prefix}_mse_mean"] = float(np.mean(list(mse.values())))
            figures.update({f"{prefix}_corr_{name}": value for name, value in self._images.correlations().items()})
        return figures

    def xyz_metrics(self):
        return self._xyz.result() if self._xyz is not None else None


def gathered_from_ranks(value) -> list:
    """``value`` of every DDP rank, in rank order (a collective call); ``[value]`` outside DDP."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, value)
    return shares


def evaluation_for(config: TrainConfig) -> Evaluation:
    groups = config.model.element_classes
    names = class_names(groups) + (("other",) if groups is not None else ())
    return Evaluation(config.model.name, names)


def objective(config: TrainConfig) -> tuple[str, str]:
    """(metric, mode) that means the same across loss settings: atom F1 (xyz) or unweighted MSE."""
    return (XYZ_OBJECTIVE, "max") if config.model.name == "xyz" else (IMAGE_OBJECTIVE, "min")


EPOCH_METRICS = ("epochs_completed", "train_loss", "train_samples_per_s", "data_wait_fraction",
                 "sim_stacks_per_s_per_actor", "samples_trained", "sim_actors_used", "batches_resent",
                 "batches_timed_out", "batches_dropped", "samples_skipped", "learning_rate", "epoch_seconds",
                 "validation_seconds")


def reported_metrics(config: TrainConfig) -> set[str]:
    """Names of the metrics an epoch reports, found by evaluating the real model once on a tiny input."""
    from afm_ray.batches import MODEL_TIPS

    model = build_model(config).eval()
    x = torch.zeros(1, len(MODEL_TIPS[config.model.name]), 32, 32, config.input_slices)
    with torch.no_grad():
        outputs = model(x)
    tensors = {"x": x}
    if config.model.name == "xyz":
        classes = torch.zeros_like(outputs[0])
        classes[:, 0] = 1.0
        classes[0, 0, 0, 0], classes[0, 1, 0, 0] = 0.0, 1.0
        tensors.update(xyz_classes=classes, xyz_offsets=torch.zeros_like(outputs[1]))
    else:
        tensors.update({name: torch.zeros_like(output) for name, output in zip(MODEL_TARGETS[config.model.name], outputs)})
    loss_fn = build_loss(config)
    loss = compute_loss(config.model.name, loss_fn, outputs, tensors)
    evaluation = evaluation_for(config)
    evaluation.update(outputs, tensors, loss)
    terms = {f"train_loss_{name}" for name in loss.terms}
    return set(EPOCH_METRICS) | terms | set(evaluation.result("val"))
