"""Model, loss and evaluation of the configured model (its :class:`~afm_ray.models.ModelSpec`), shared by
training, tuning and prediction."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from afm_ray.descriptors.xyz_classes import ATOM_CLASS, BACKGROUND_CLASS, class_names
from afm_ray.models.losses import LossOutput
from afm_ray.models.metrics import ImageMetricsAccumulator, XYZEvaluator
from afm_ray.models import ModelSpec, get_model_spec
from afm_ray.recipe import TrainConfig
from afm_ray.samples.sample_batch import SampleBatch


def build_loss(config: TrainConfig) -> nn.Module:
    """The loss of ``config.model`` with ``config.loss``'s settings, called ``loss(outputs, targets)``."""
    return config.model.spec.build_loss(config.loss)


def build_thesis_loss(config: TrainConfig) -> nn.Module:
    """The loss of ``config.model`` with its spec's default settings, the thesis' (DSH weights 20, 0.3, 0.2;
    ES 1, 0.1; xyz γ 1.25, αn 0.3, βPL 0.15), whatever ``config.loss`` says: the loss Table 6 reports."""
    spec = config.model.spec
    return spec.build_loss(spec.loss_settings())


def to_tensors(batch: SampleBatch, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's :meth:`~SampleBatch.float_arrays` as tensors on ``device``, by name: ``x`` (``df`` for raw Δf)
    and the targets (``samples`` and timings stay behind).

    Arrays fetched from Ray's object store are read-only views of shared memory; those are copied
    so that no tensor aliases memory torch may not write.
    """
    return {name: torch.from_numpy(value if value.flags.writeable else value.copy()).to(device, non_blocking=True)
            for name, value in batch.float_arrays().items()}


def forward(model: nn.Module, x: torch.Tensor, config: TrainConfig) -> tuple[torch.Tensor, ...]:
    """The network's outputs for ``x`` (B, C, nx, ny, K) under ``run.precision``, as float32 tensors.

    bf16 runs the forward pass in autocast (bfloat16 convolutions); the outputs are promoted, so losses,
    metrics and gradients into the float32 weights are computed as in fp32.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=config.run.precision == "bf16"):
        outputs = model(x)
    return tuple(output.float() for output in outputs)


def compute_loss(spec: ModelSpec, loss_fn: nn.Module, outputs, tensors: dict[str, torch.Tensor]) -> LossOutput:
    """Loss of ``outputs`` (the model's forward result) against the batch's targets of ``spec``."""
    return loss_fn(list(outputs), [tensors[name] for name in spec.targets])


@dataclass
class Evaluation:
    """Accumulates loss and the spec's metrics over batches; :meth:`result` gives flat ``val_…`` figures.

    Holds the model's name, not its spec: DDP ranks exchange evaluations by pickling them.
    """

    model_name: str
    class_names: tuple[str, ...] = (BACKGROUND_CLASS, ATOM_CLASS)
    _loss_sum: dict[str, float] = field(default_factory=dict)
    _samples: float = 0.0
    _thesis_loss_sum: float = 0.0
    _thesis_samples: float = 0.0
    _images: ImageMetricsAccumulator | None = None
    _xyz: XYZEvaluator | None = None

    @property
    def spec(self) -> ModelSpec:
        return get_model_spec(self.model_name)

    def __post_init__(self):
        if self.spec.metrics == "atoms":
            self._xyz = XYZEvaluator(class_names=self.class_names)
        else:
            self._images = ImageMetricsAccumulator(self.spec.targets)

    def update(self, outputs, tensors: dict[str, torch.Tensor], loss: LossOutput,
               thesis_loss: LossOutput | None = None) -> None:
        """Add one batch: its outputs, tensors, loss and, where given, its loss with the thesis' settings."""
        weight = float(loss.n_samples)
        for name, value in loss.detached().items():
            if name != "n_samples":
                self._loss_sum[name] = self._loss_sum.get(name, 0.0) + value * weight
        self._samples += weight
        if thesis_loss is not None:
            thesis_weight = float(thesis_loss.n_samples)
            self._thesis_loss_sum += float(thesis_loss.total.detach()) * thesis_weight
            self._thesis_samples += thesis_weight
        targets = [tensors[name] for name in self.spec.targets]
        if self._xyz is not None:
            self._xyz.update(outputs[0].detach().cpu(), outputs[1].detach().cpu(), *[t.cpu() for t in targets])
        else:
            self._images.update([o.detach().cpu() for o in outputs], [t.cpu() for t in targets])

    def merge(self, other: "Evaluation") -> None:
        """Add another rank's evaluation of its shard of the same set."""
        for name, value in other._loss_sum.items():
            self._loss_sum[name] = self._loss_sum.get(name, 0.0) + value
        self._samples += other._samples
        self._thesis_loss_sum += other._thesis_loss_sum
        self._thesis_samples += other._thesis_samples
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
        return self if len(shares) == 1 else Evaluation.combined(shares)

    @staticmethod
    def combined(shares: list["Evaluation"]) -> "Evaluation":
        """One evaluation of the whole set from the evaluations of its shards (added in the given order)."""
        whole = Evaluation(shares[0].model_name, shares[0].class_names)
        for share in shares:
            whole.merge(share)
        return whole

    def result(self, prefix: str = "val") -> dict[str, float]:
        samples = max(self._samples, 1.0)
        figures = {f"{prefix}_loss" if name == "total" else f"{prefix}_loss_{name}": value / samples
                   for name, value in self._loss_sum.items()}
        if self._thesis_samples > 0:
            figures[f"{prefix}_loss_thesis_weights"] = self._thesis_loss_sum / self._thesis_samples
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
    return Evaluation(config.model.spec.name, class_names(config.model.element_classes))


def objective(config: TrainConfig) -> tuple[str, str]:
    """(metric, mode) of the model's spec, meaning the same across loss settings (e.g. unweighted MSE, atom F1)."""
    chosen = config.model.spec.objective
    return chosen.metric, chosen.mode


EPOCH_METRICS = ("epochs_completed", "train_loss", "train_samples_per_s", "data_wait_fraction",
                 "sim_stacks_per_s_per_actor", "samples_trained", "sim_actors_used", "batches_resent",
                 "batches_timed_out", "batches_dropped", "samples_skipped", "learning_rate", "samples_seen", "stream_wait_fraction",
                 "global_batch_size", "epoch_seconds", "validation_seconds")


def reported_metrics(config: TrainConfig) -> set[str]:
    """Names of the metrics an epoch reports, found by evaluating the real model once on a tiny input."""
    spec = config.model.spec
    model = config.build_network().eval()
    x = torch.zeros(1, len(spec.tips), 32, 32, config.input_slices)
    with torch.no_grad():
        outputs = model(x)
    tensors = {"x": x}
    for output, target, value in zip(spec.outputs, spec.targets, outputs):
        tensors[target] = torch.zeros_like(value)
        if output.activation == "softmax":  # one-hot classes: background everywhere, one box of class 1
            tensors[target][:, 0] = 1.0
            tensors[target][0, 0, 0, 0], tensors[target][0, 1, 0, 0] = 0.0, 1.0
    loss_fn = build_loss(config)
    loss = compute_loss(spec, loss_fn, outputs, tensors)
    evaluation = evaluation_for(config)
    evaluation.update(outputs, tensors, loss)
    terms = {f"train_loss_{name}" for name in loss.terms}
    return set(EPOCH_METRICS) | terms | set(evaluation.result("val"))
