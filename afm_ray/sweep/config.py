"""Sweep configuration: the YAML files in ``tune/`` (``tune/xyz.yaml``, …; their search spaces: ``tune/README.md``).

A sweep names a training config, overrides for all trials, and a search space of dotted
training-config fields (an element of a tuple field by its index, e.g. ``loss.dsh_weights.1``)::

    search:
      loss.gamma:   {grid: [1.0, 1.25, 1.5, 1.75, 2.0]}
      loss.alpha_n: {uniform: [0.1, 0.5]}
      loss.beta_pl: {loguniform: [0.01, 1.0]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from afm_ray.config import StrictModel, apply_overrides, read_yaml, validate
from afm_ray.errors import InputError
from afm_ray.presets import find_config


class Dimension(StrictModel):
    """One searched hyperparameter: exactly one of the distribution keys."""

    uniform: tuple[float, float] | None = Field(None, description="[low, high] uniform")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high] log-uniform, low > 0")
    randint: tuple[int, int] | None = Field(None, description="[low, high) integers")
    choice: list | None = Field(None, description="values sampled uniformly")
    grid: list | None = Field(None, description="every value, crossed with the other grid dimensions")

    @model_validator(mode="after")
    def _one_distribution(self):
        given = [name for name in ("uniform", "loguniform", "randint", "choice", "grid") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, randint, choice, grid (got {given or 'none'})")
        kind = given[0]
        value = getattr(self, kind)
        if kind in ("choice", "grid") and not value:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint") and not value[0] < value[1]:
            raise ValueError(f"{kind} range [{value[0]}, {value[1]}] is empty or inverted")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {value[0]}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in ("uniform", "loguniform", "randint", "choice", "grid") if getattr(self, name) is not None)

    def values_to_check(self) -> list:
        """Representative values used to validate the dimension against the training config."""
        value = getattr(self, self.kind)
        return list(value) if self.kind in ("choice", "grid") else [value[0], value[1] - (1 if self.kind == "randint" else 0)]


class SchedulerSettings(StrictModel):
    """Early stopping of bad trials."""

    type: Literal["asha", "none"] = Field("asha")
    grace_period_epochs: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps the best 1/reduction_factor at each rung")


class BudgetSettings(StrictModel):
    num_samples: int = Field(8, description="trials (grid dimensions: repetitions of the whole grid)")
    time_budget_s: float | None = Field(None, description="stop starting trials after this many seconds")

    @model_validator(mode="after")
    def _positive(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be ≥ 1, got {self.num_samples}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        return self


class ObjectiveSettings(StrictModel):
    metric: str | None = Field(None, description="default: val_atom_f1 (xyz, max) or val_mse_mean (dsh/es, min)")
    mode: Literal["min", "max"] | None = None


class SweepMlflowSettings(StrictModel):
    registered_model_name: str | None = Field(None, description="default: the training config's name")
    alias: str = Field("champion", description="alias of the best trial's registered model")


class SweepConfig(StrictModel):
    """Everything ``afm-ray tune`` needs."""

    name: str = Field(description="sweep name: folder under storage_path and MLflow parent run name")
    train_config: Path = Field(description="training config YAML (relative to this file, e.g. ../configs/xyz.yaml)")
    train_overrides: dict[str, object] = Field(default_factory=dict, description="KEY.PATH: value for all trials")
    search: dict[str, Dimension]
    searcher: Literal["optuna", "random", "grid"] = Field("optuna")
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    max_concurrent_trials: int = Field(1, ge=1)
    trial_driver_cpus: float = Field(0.25, ge=0, description="CPUs reserved for each trial's driver function")
    storage_path: Path = Field(Path("runs/tune"), description="sweep state, trial checkpoints")
    mlflow: SweepMlflowSettings = Field(default_factory=SweepMlflowSettings)

    @model_validator(mode="after")
    def _consistent(self):
        if not self.search:
            raise ValueError("search: give at least one hyperparameter")
        kinds = {dimension.kind for dimension in self.search.values()}
        if self.searcher == "grid" and kinds != {"grid"}:
            raise ValueError("searcher 'grid' needs every dimension to be a grid")
        if self.searcher == "optuna" and "grid" in kinds:
            raise ValueError("grid dimensions work with searcher 'grid' or 'random', not 'optuna'")
        return self


def load_sweep_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Load and validate a sweep YAML (a file or a preset name, :func:`afm_ray.presets.find_config`);
    ``train_config`` becomes absolute (relative to the YAML)."""
    path = find_config(path, "tune")
    config = validate(SweepConfig, apply_overrides(read_yaml(path), overrides), str(path))
    train_config = config.train_config if config.train_config.is_absolute() else path.parent / config.train_config
    if not train_config.exists():  # a copied preset: its ../configs/NAME.yaml is the shipped one
        train_config = find_config(config.train_config, "train", f"{path}: train_config")
    if not train_config.exists():
        raise InputError(f"{path}: train_config", f"training config {train_config} not found")
    return config.model_copy(update={"train_config": train_config.resolve()})
