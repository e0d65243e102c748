"""The training configuration (YAML: ``configs/dsh.yaml``, ``es.yaml``, ``xyz.yaml``, ``quickstart.yaml``).

One typed, validated tree; defaults are the thesis' values. ``afm-ray train --config FILE
key.path=value …`` overrides single fields. Units are in field names or descriptions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SerializeAsAny, ValidationInfo, field_validator, model_validator
from torch import nn

from afm_ray.samples.augment import AugmentConfig
from afm_ray.config import StrictModel, load_config
from afm_ray.descriptors.config import DescriptorsConfig
from afm_ray.models import LossSettings, ModelSettings
from afm_ray.pipeline.settings import DataSettings, PipelineSettings, SampleSettings
from afm_ray.presets import find_config
from afm_ray.sim.config import SimConfig

__all__ = ["DataSettings", "PipelineSettings", "TrainConfig", "load_train_config"]

SHARED_LOSS_FIELDS = frozenset({"dsh_weights", "es_weights", "gamma", "alpha_n", "beta_pl", "z_min_angstrom"})
"""The fields of the one loss section every model shared before each model had its own type: a stored config
(registered model, checkpoint) holds them all."""


class ScalingSettings(StrictModel):
    """Ray Train workers (DDP ranks)."""

    num_workers: int = Field(1, ge=1, description="DDP ranks")
    use_gpu: bool = Field(False, description="one whole GPU per rank")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per rank (Ray logical CPUs; sets its torch threads)")
    collective_timeout_s: float = Field(
        1800.0, gt=0, description="seconds a DDP collective (all-reduce) waits for every rank before the run fails "
                                  "(TorchConfig.timeout_s); at least twice pipeline.max_attempts_per_batch × "
                                  "pipeline.batch_timeout_s, so a rank gives up on a batch long before its peers do")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per rank, e.g. {train_gpu: 1}")


class OptimizerSettings(StrictModel):
    """Adam with inverse-time decay (thesis 3.3)."""

    learning_rate: float = Field(1e-3, gt=0, description="initial learning rate at the reference batch (per "
                                                          "optimiser step of reference_batch_size samples)")
    decay: float = Field(1e-5, ge=0, description="lr / (1 + decay · s / reference_batch_size) after s training samples "
                                                 "seen (all ranks): thesis 1e-5 per step of 30 samples")
    reference_batch_size: int = Field(30, ge=1, description="the global batch (samples) that learning_rate and decay "
                                                            "are stated for (thesis 30)")
    batch_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="learning rate scaled by the global batch: none, linear (× G / reference_batch_size) or "
                            "sqrt (× √(G / reference_batch_size))")
    warmup_samples: int = Field(0, ge=0, description="linear learning-rate warm-up over this many training samples "
                                                     "seen (0: none)")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam β1 (dimensionless)")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam β2 (dimensionless)")


class MlflowSettings(StrictModel):
    """Experiment tracking and the model registry."""

    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db")
    experiment: str = Field("afm-ray")
    registered_model_name: str | None = Field(None, description="default afm-<model>")
    alias: str = Field("current", pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$",
                       description="alias set on the registered version ('latest' is reserved by MLflow: "
                                   "models:/NAME/latest already means the newest version)")

    @model_validator(mode="after")
    def _alias_not_reserved(self):
        if self.alias.lower() == "latest" or (self.alias.lower().startswith("v") and self.alias[1:].isdigit()):
            raise ValueError(f"alias {self.alias!r} is reserved by MLflow; use e.g. 'current' or 'champion'")
        return self


class RunSettings(StrictModel):
    """The training run itself."""

    name: str | None = Field(None, description="run name (default <model>-<split>); same name + storage resumes")
    storage_path: Path = Field(Path("runs"), description="checkpoints and run state (shared storage on a cluster)")
    epochs: int = Field(50, ge=1, description="thesis: ~50")
    batch_size: int = Field(30, ge=1, description="the global batch: training samples per optimiser step, all ranks "
                                                  "together (each rank trains batch_size / num_workers of them)")
    micro_batch_size: int | None = Field(None, ge=1, description="most samples a rank puts through the network at "
                                                                 "once: its share of a step is cut into equal micro "
                                                                 "batches whose gradients add up (None: the whole share)")
    seed: int = Field(0, description="seeds molecules order, tilts, heights, noise: the run is reproducible")
    max_failures: int = Field(3, ge=-1, description="worker failures to recover from (−1: forever)")
    num_figure_samples: int = Field(4, ge=0, description="fixed validation samples drawn in prediction figures")
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="channels-last weights and inputs (same values, other strides): true, false, or auto = "
                            "each worker times a few training passes both ways on its device and takes the faster "
                            "(CPU: 1.3–1.4× for channels-last, `afm-ray bench models --channels-last`)")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="forward pass in float32, or bf16 autocast (bfloat16 matmuls and convolutions; weights, "
                            "gradients, optimiser and losses stay float32)")
    compile: bool = Field(False, description="torch.compile the network (compiled once per worker at its first step)")
    compile_backend: str = Field("inductor", min_length=1,
                                 description="torch.compile's backend where `compile` (inductor: generated kernels; "
                                             "aot_eager: the same graph capture and autograd without code generation, "
                                             "to check a model compiles; any name torch._dynamo.list_backends knows)")
    val_shard_on_device_fraction: float = Field(
        0.5, ge=0, le=0.9, description="share of the device memory free at the first validation (after the first "
                                       "training epoch) that a rank may fill with its validation shard as tensors, "
                                       "kept for every later epoch when the whole shard fits (0: never)")
    val_shard_on_device: bool | Literal["auto"] = Field(
        "auto", description="keep the validation shard on the device (see val_shard_on_device_fraction): true, "
                            "false, or auto = on CUDA devices only (on a CPU the fixed set's own cache already "
                            "holds it decoded)")
    loader_depth: int = Field(2, ge=0, description="optimiser steps of batches a background thread keeps received, "
                                                   "copied to the device and augmented ahead of training (0: prepared "
                                                   "in the loop, in series)")


class TrainConfig(StrictModel):
    """Everything ``afm-ray train`` needs."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    sim: SimConfig = Field(default_factory=SimConfig)
    descriptors: DescriptorsConfig = Field(default_factory=DescriptorsConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    loss: SerializeAsAny[LossSettings] = Field(
        default_factory=dict, validate_default=True,
        description="the chosen model's loss settings (its spec's loss_settings type; defaults: the thesis')")
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    run: RunSettings = Field(default_factory=RunSettings)

    @model_validator(mode="before")
    @classmethod
    def _height_map_moved(cls, data):
        # configs and registered models of afm-ray 0.1 before the descriptors section had a top-level height_map
        if isinstance(data, dict) and "height_map" in data:
            data = dict(data)
            descriptors = dict(data.get("descriptors") or {})
            descriptors.setdefault("height_map", data.pop("height_map"))
            data["descriptors"] = descriptors
        return data

    @field_validator("loss", mode="before")
    @classmethod
    def _model_loss(cls, loss, info: ValidationInfo):
        model = info.data.get("model")
        if model is None:  # model.name is invalid: that error is reported
            return LossSettings()
        settings_type = model.spec.loss_settings
        if isinstance(loss, settings_type):
            return loss
        if isinstance(loss, BaseModel):
            loss = loss.model_dump()
        if isinstance(loss, dict) and SHARED_LOSS_FIELDS <= set(loss):  # stored by afm-ray 0.1: keep the model's own
            loss = {name: value for name, value in loss.items() if name in settings_type.model_fields}
        return settings_type.model_validate(loss)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        spec = self.model.spec
        pixels = self.sim.scan_pixels
        if any(count % 8 for count in pixels):
            raise ValueError(f"sim.scan_pixels {list(pixels)}: the networks pool x and y by 8; use multiples of 8")
        scan = self.augment.scan_height
        if scan.enabled and scan.window_slices > self.sim.num_slices:
            raise ValueError(f"augment.scan_height.window_slices ({scan.window_slices}) exceeds "
                             f"sim.num_slices ({self.sim.num_slices})")
        if spec.input_slices is not None and self.input_slices != spec.input_slices:
            raise ValueError(f"the {spec.name} network reads {spec.input_slices} slices, this config gives it "
                             f"{self.input_slices} (sim.num_slices, augment.scan_height)")
        if self.scaling.collective_timeout_s < 2 * self.pipeline.retry_budget_s:
            raise ValueError(f"scaling.collective_timeout_s ({self.scaling.collective_timeout_s:g} s) must be at least "
                             f"twice pipeline.max_attempts_per_batch × pipeline.batch_timeout_s "
                             f"({self.pipeline.max_attempts_per_batch} × {self.pipeline.batch_timeout_s:g} s): a rank "
                             f"waiting that long for a batch would let its peers' all-reduce time out first")
        if self.run.batch_size < self.scaling.num_workers:
            raise ValueError(f"run.batch_size ({self.run.batch_size}) is the global batch: it must give each of the "
                             f"{self.scaling.num_workers} workers (scaling.num_workers) at least one sample")
        if spec.check_scan is not None:
            spec.check_scan(self.sim.scan_pixels, self.sim.scan_size_angstrom)
        return self

    # -- derived ---------------------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        """The untrained network of this run: the one way every command builds it from a config."""
        return self.model.build_network(self.input_slices)

    @property
    def rotations_per_molecule(self) -> int:
        return self.data.rotations_per_molecule or self.model.spec.rotations_per_molecule

    @property
    def sample_settings(self) -> SampleSettings:
        """What the simulation actors need to make this run's batches and fixed sets."""
        return SampleSettings(model=self.model.name, model_module=self.model.module, element_classes=self.model.element_classes, data=self.data,
                              train_rotations_per_molecule=self.rotations_per_molecule, sim=self.sim,
                              descriptors=self.descriptors, augment=self.augment)

    @property
    def micro_batches_per_step(self) -> int:
        """Micro batches per rank and optimiser step: its share ⌈batch_size / num_workers⌉ cut by micro_batch_size."""
        share = -(-self.run.batch_size // self.scaling.num_workers)
        return 1 if self.run.micro_batch_size is None else -(-share // self.run.micro_batch_size)

    @property
    def input_slices(self) -> int:
        """Slices the network sees: what scan-height randomisation keeps, else all simulated."""
        scan = self.augment.scan_height
        return scan.kept_slices if scan.enabled else self.sim.num_slices

    @property
    def run_name(self) -> str:
        return self.run.name or f"{self.model.name}-{self.data.split}"

    @property
    def registered_model_name(self) -> str:
        return self.mlflow.registered_model_name or f"afm-{self.model.name}"


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The recipe in ``path`` (a YAML file or a preset name, :func:`afm_ray.presets.find_config`; ``None``: the
    thesis defaults) with ``overrides`` (``key.path=value``) applied."""
    return load_config(TrainConfig, None if path is None else find_config(path, "train"), overrides)


# -- where a recipe's files and tracking store are, seen from the driver's working directory --------------
DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


def resolve_tracking_uri(configured: str | None) -> str:
    """Config value, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite store."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def relative_paths(config: TrainConfig, storage_field: str = "run.storage_path") -> dict[str, str]:
    """The config's data, run and tracking paths that are relative (field name → value as given).

    ``storage_field`` names the field that set ``run.storage_path`` (a sweep sets it from its own
    ``storage_path``).
    """
    paths = {"data.database": config.data.database, "data.fixed_set_dir": config.data.fixed_set_dir,
             storage_field: config.run.storage_path}
    relative = {field: str(path) for field, path in paths.items() if not path.is_absolute()}
    tracking_uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    if _relative_sqlite_file(tracking_uri) is not None:
        relative["mlflow.tracking_uri"] = tracking_uri
    return relative


def _relative_sqlite_file(tracking_uri: str) -> str | None:
    """The file of a ``sqlite:///relative.db`` URI (three slashes: relative to the working directory), else None."""
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        return tracking_uri[len("sqlite:///"):]
    return None


def with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """Paths resolved against the driver's working directory: Ray workers run elsewhere."""
    data = config.data.model_copy(update={"database": config.data.database.resolve(),
                                          "fixed_set_dir": config.data.fixed_set_dir.resolve()})
    run = config.run.model_copy(update={"storage_path": config.run.storage_path.resolve()})
    tracking_uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    if (relative_file := _relative_sqlite_file(tracking_uri)) is not None:
        tracking_uri = "sqlite:///" + str(Path(relative_file).resolve())
    mlflow = config.mlflow.model_copy(update={"tracking_uri": tracking_uri})
    return config.model_copy(update={"data": data, "run": run, "mlflow": mlflow})
