"""One registry for every model: what a network reads, predicts, is trained and judged by.

In the style of torchvision's ``register_model``: each model's module (``models/dsh.py``, ``es.py``,
``xyz.py``) defines its network and its loss settings (a :class:`LossSettings` subclass: the
``loss:`` section of a training config naming the model), builds one :class:`ModelSpec` and calls
:func:`register_model` at import, and ``afm_ray.models`` imports them. Training, prediction, packing,
figures and the configs read the spec, so adding a model is one file and one registration (plus one
function in :mod:`afm_ray.descriptors.registry` for a target no model had before).

A model from another package is registered by its own module; the training config names that
module (``model.module``) so that every process — Ray Train workers and simulation actors
included — imports it before looking the name up (:func:`get_model_spec`). A config read from an
artifact (a registered model, a checkpoint) never chooses code: :func:`refuse_untrusted_module` refuses
its ``model.module`` before validation unless the user named it (``--allow-module NAME`` or
``$AFM_RAY_TRUSTED_MODULES``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from torch import nn

from afm_ray.config import StrictModel, shown_value
from afm_ray.errors import InputError
from afm_ray.models.losses import WeightedMSELoss


class LossSettings(StrictModel):
    """A model's loss hyperparameters: the ``loss:`` section of a training config, what Ray Tune searches.

    Each model subclasses it in its own module (defaults: the thesis' values; units in the field
    descriptions) and names the subclass in its spec (:attr:`ModelSpec.loss_settings`); the config's
    ``loss:`` section is validated against the chosen model's type. This base has no fields: a model
    whose loss takes no settings.
    """

    def describe(self) -> str:
        """One short line of the settings (model listings, evaluation reports): ``name value, …``."""
        return ", ".join(f"{name} {_shown(value)}" for name, value in self) or "no settings"


class MapWeightsLossSettings(LossSettings):
    """Loss settings of a weighted-MSE map model (:func:`weighted_mse_map_model`): one field, the weights."""

    def describe(self) -> str:
        return "weights " + ", ".join(_shown(weights) for _, weights in self)


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(_shown(item) for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class OutputSpec:
    """One network output.

    Attributes:
        name: the output's name, also the key of its term in the loss and of its packed slice.
        activation: the last layer's activation (``"relu"``, ``"softmax"``), ``None`` for unbounded.
        units: of its values (``"Å"``, ``"V"``, ``"probability"``, …).
        shape: ``"map"``: ``(B, X, Y)`` at the input's resolution (one packed channel);
            ``"grid"``: ``(B, C, X/8, Y/8)``, C = ``channels``.
        channels: channels of a grid output; ``None``: the network's ``n_classes`` (xyz classes).
    """

    name: str
    activation: str | None
    units: str
    shape: Literal["map", "grid"] = "map"
    channels: int | None = 1


@dataclass(frozen=True)
class Objective:
    """The validation metric that ranks checkpoints and trials, comparable across loss settings."""

    metric: str
    mode: Literal["min", "max"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything afm-ray needs to know about one model.

    Attributes:
        name: the model's name (``model.name`` in the config, ``afm-<name>`` registered).
        description: one line for listings and the config's help.
        tips: probe tip of each input channel, in channel order (``("CO", "Xe")``: channel 0 CO).
        outputs: the network's outputs, in forward order.
        targets: descriptor the batch carries for each output, in the same order (the loss pairs them): names
            registered in :mod:`afm_ray.descriptors.registry`.
        build_network: ``(model, input_slices)`` → untrained ``nn.Module``, where ``model`` is the config's
            :class:`~afm_ray.models.settings.ModelSettings` and ``input_slices`` the z-slices the network reads;
            its forward takes ``(B, len(tips), X, Y, input_slices)`` and returns one tensor per output.
        loss_settings: the model's :class:`LossSettings` subclass (the config's ``loss:`` section).
        build_loss: an instance of ``loss_settings`` → a module called ``loss(outputs, targets)`` (tuples in
            output order) returning :class:`afm_ray.models.losses.LossOutput`.
        objective: metric and direction that pick the best checkpoint and rank sweep trials.
        metrics: ``"maps"``: per-output MSE and correlation; ``"atoms"``: the outputs are the xyz
            grid (``xyz_classes``, ``xyz_offsets``), judged by decoded-atom precision, recall and F1.
        figure_maps: what the prediction figures draw beside the input: output names drawn as
            reference / prediction maps, or ``"atoms"`` for the decoded atoms of the xyz outputs.
        rotations_per_molecule: training rotations per molecule when ``data.rotations_per_molecule`` is unset.
        input_slices: slices the network reads when fixed by the architecture; ``None``: any,
            ``config.input_slices`` (scan-height window, else all simulated slices).
        uses_element_classes: the model accepts ``model.element_classes``.
        published_losses: its published loss after the last epoch (its weighted training loss), by
            dataset and subset (``{"dataset1": {"train": …, "val": …, "test": …}}``; thesis Table 6),
            shown beside ``afm-ray evaluate``'s figures.
        check_scan: ``(scan_pixels, scan_size_angstrom)`` (x, y) → raises ``ValueError`` (one line) for a scan
            geometry this model cannot train on.
        thesis_parameters: trainable parameters at the thesis input (128 × 128 px, 10 slices) with
            default options, as the thesis' architecture table gives them (``None``: not a thesis model).
        module: the registering module (``__name__``): a reload replaces the spec, another module's is a clash.
    """

    name: str
    description: str
    tips: tuple[str, ...]
    outputs: tuple[OutputSpec, ...]
    targets: tuple[str, ...]
    build_network: Callable[..., nn.Module]
    build_loss: Callable[[LossSettings], nn.Module]
    objective: Objective
    loss_settings: type[LossSettings] = LossSettings
    metrics: Literal["maps", "atoms"] = "maps"
    figure_maps: tuple[str, ...] = ()
    rotations_per_molecule: int = 20
    input_slices: int | None = None
    uses_element_classes: bool = False
    check_scan: Callable[[tuple[int, int], tuple[float, float]], None] | None = None
    published_losses: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    thesis_parameters: int | None = None
    module: str = ""

    def __post_init__(self):
        if len(self.targets) != len(self.outputs):
            raise ValueError(f"model {self.name!r}: {len(self.outputs)} outputs but {len(self.targets)} targets")
        if self.metrics == "atoms" and self.output_names != ("xyz_classes", "xyz_offsets"):
            raise ValueError(f"model {self.name!r}: atom metrics need the outputs xyz_classes, xyz_offsets")
        unknown = set(self.figure_maps) - set(self.output_names) - {"atoms"}
        if unknown:
            raise ValueError(f"model {self.name!r}: figure_maps {sorted(unknown)} are not outputs")
        if not (isinstance(self.loss_settings, type) and issubclass(self.loss_settings, LossSettings)):
            raise ValueError(f"model {self.name!r}: loss_settings must be a LossSettings subclass")
        object.__setattr__(self, "published_losses", MappingProxyType(
            {dataset: MappingProxyType(dict(losses)) for dataset, losses in self.published_losses.items()}))

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(output.name for output in self.outputs)

    @property
    def predicts_atoms(self) -> bool:
        """Outputs are the xyz grid (``xyz_classes``, ``xyz_offsets``) that decodes into atoms."""
        return self.metrics == "atoms"

    def output(self, name: str) -> OutputSpec:
        for output in self.outputs:
            if output.name == name:
                return output
        raise KeyError(f"model {self.name!r} has no output {name!r}")

    def packed_channels(self, network: nn.Module) -> tuple[int, ...]:
        """Channels of each output in the one-tensor (packed) form of ``network``'s outputs."""
        return tuple(1 if output.shape == "map" else output.channels or int(network.n_classes)
                     for output in self.outputs)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (a second registration of the same name from the same module,
    e.g. a re-import, replaces it; from another module it is an error)."""
    known = _REGISTRY.get(spec.name)
    if known is not None and known.module != spec.module:
        raise ValueError(f"model {spec.name!r} is already registered by {known.module}")
    _REGISTRY[spec.name] = spec
    return spec


def get_model_spec(name: str, module: str | None = None) -> ModelSpec:
    """The registered spec of ``name``, importing ``module`` (the plugin that registers it) first if given.

    Raises :class:`InputError` (``model.name``) naming the registered models for an unknown name,
    or (``model.module``) for a module that cannot be imported.
    """
    if name not in _REGISTRY and module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise InputError("model.module", f"cannot import {module!r} (it must be importable on every node): "
                                             f"{exc}") from None
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = f" ({module} registers no such model)" if module else ""
        raise InputError("model.name", f"unknown model {name!r}{hint}; registered: "
                                       f"{', '.join(sorted(_REGISTRY))}") from None


TRUSTED_MODULES_ENV = "AFM_RAY_TRUSTED_MODULES"  # comma-separated model modules an artifact may name


def refuse_untrusted_module(config_data, where: str, allowed_modules: Collection[str] = ()) -> None:
    """Raise :class:`InputError` when the config ``config_data`` (a training config as plain data, read from
    an artifact) names a ``model.module`` that neither ``allowed_modules`` (``--allow-module``) nor
    ``$AFM_RAY_TRUSTED_MODULES`` lists; call it before validating, which would import that module."""
    model = config_data.get("model") if isinstance(config_data, Mapping) else None
    module = model.get("module") if isinstance(model, Mapping) else None
    if module in (None, ""):  # validation imports nothing then
        return
    trusted = set(allowed_modules) | {name.strip() for name in os.environ.get(TRUSTED_MODULES_ENV, "").split(",")}
    if not isinstance(module, str) or module not in trusted - {""}:
        name = module if isinstance(module, str) and len(module) <= 100 else "NAME"
        raise InputError(where, f"refused: model.module {shown_value(module)} would be imported, and an artifact "
                                f"never chooses code; if you trust it, pass --allow-module {name} "
                                f"(or list it in ${TRUSTED_MODULES_ENV})")


def validated_model_spec(name: str, module: str | None = None) -> ModelSpec:
    """:func:`get_model_spec` for pydantic validators: its error as a ValueError, which pydantic reports
    with the config field's location."""
    try:
        return get_model_spec(name, module)
    except InputError as error:
        raise ValueError(error.what) from None


def list_model_specs() -> tuple[ModelSpec, ...]:
    """Every registered spec, by name."""
    return tuple(_REGISTRY[name] for name in sorted(_REGISTRY))


def weighted_mse_map_model(*, name: str, description: str, tips: tuple[str, ...], outputs: tuple[OutputSpec, ...],
                           network: Callable[..., nn.Module], loss_settings: type[MapWeightsLossSettings],
                           weights_field: str,
                           published_losses: Mapping[str, Mapping[str, float]], thesis_parameters: int | None,
                           module: str) -> ModelSpec:
    """The spec of a model that predicts descriptor maps (each output's target is the descriptor of the
    same name) and trains on a weighted sum of per-map MSEs (thesis 3.4), ranked by the unweighted mean.

    ``network(n_slices=, skip_connections=, padding_mode=)`` builds it from the input slices and the
    model settings; ``weights_field`` names the field of ``loss_settings`` holding its MSE weights
    (one per output, dimensionless).
    """
    names = tuple(output.name for output in outputs)
    default_weights = getattr(loss_settings(), weights_field)
    if len(default_weights) != len(names):
        raise ValueError(f"model {name!r}: {len(default_weights)} default weights for {len(names)} outputs")

    def build_network(model, input_slices: int) -> nn.Module:
        return network(n_slices=input_slices, skip_connections=model.skip_connections, padding_mode=model.padding)

    def build_loss(loss: LossSettings) -> nn.Module:
        return WeightedMSELoss(getattr(loss, weights_field), names)

    return ModelSpec(name=name, description=description, tips=tips, outputs=outputs, targets=names,
                     build_network=build_network, build_loss=build_loss, loss_settings=loss_settings,
                     objective=Objective("val_mse_mean", "min"),  # unweighted: comparable across loss weights
                     metrics="maps", figure_maps=names, rotations_per_molecule=20,
                     published_losses=published_losses, thesis_parameters=thesis_parameters, module=module)
