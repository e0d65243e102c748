"""One-tensor model outputs for the MLflow registry, and the registered (exported) form of them.

MLflow's PyTorch flavour (and ``mlflow models serve``) expects a model to return one tensor; the
networks return a tuple of maps. :class:`PackedOutputs` wraps a network and concatenates its
outputs along the channel axis; :meth:`PackedOutputs.unpack` splits them again by name.

A registered model is a ``torch.export`` program of a :class:`PackedOutputs` (MLflow's ``pt2``
format, :mod:`afm_ray.registry.registration`): a graph and raw weight bytes, no pickle. Loaded, it is a
``torch.fx.GraphModule`` that knows nothing of output names, so :class:`ExportedPackedOutputs`
puts back what prediction and evaluation use — ``forward``, ``unpack``, ``output_names``,
``network`` — from the :class:`PackedSpec` kept in the model's MLflow metadata.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import torch
from torch import nn

from afm_ray.models.spec import get_model_spec

PACKED_SPEC_METADATA_KEY = "afm_ray_packed_outputs"
"""Key of :meth:`PackedSpec.to_json` in a registered model's MLflow metadata."""


@dataclass(frozen=True)
class PackedSpec:
    """How to read the packed tensor of a model.

    Attributes:
        model_name: a registered model (its :class:`~afm_ray.models.ModelSpec` says which outputs are maps).
        output_names: one name per output, in forward order.
        output_channels: channels of each output in the packed tensor (maps 1; xyz classes, 3 offsets).
    """

    model_name: str
    output_names: tuple[str, ...]
    output_channels: tuple[int, ...]

    def to_json(self) -> dict:
        return {"model_name": self.model_name, "output_names": list(self.output_names),
                "output_channels": list(self.output_channels)}

    @classmethod
    def from_json(cls, data: dict) -> PackedSpec:
        """Raises ValueError (naming the field) for metadata that does not describe a packed model."""
        try:
            spec = cls(str(data["model_name"]), tuple(str(n) for n in data["output_names"]),
                       tuple(int(c) for c in data["output_channels"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{PACKED_SPEC_METADATA_KEY} is not {{model_name, output_names, output_channels}}: "
                             f"{exc}") from None
        if len(spec.output_names) != len(spec.output_channels) or min(spec.output_channels, default=0) < 1:
            raise ValueError(f"{PACKED_SPEC_METADATA_KEY}: {len(spec.output_names)} names for channels "
                             f"{list(spec.output_channels)}")
        return spec


def unpack_outputs(packed: torch.Tensor, spec: PackedSpec) -> dict[str, torch.Tensor]:
    """``{name: output}`` with the shapes the network returns ((B, X, Y) maps; xyz (B, C, gx, gy))."""
    pieces = torch.split(packed, list(spec.output_channels), dim=1)
    model = get_model_spec(spec.model_name)
    return {name: piece.squeeze(1) if model.output(name).shape == "map" else piece
            for name, piece in zip(spec.output_names, pieces)}


class PackedOutputs(nn.Module):
    """``forward(x) -> (B, sum of channels, X', Y')``: the network's outputs concatenated.

    Args:
        network: the network of a registered model, e.g. a DSH, ES or XYZ.
        output_names: one name per output, in forward order: the spec's ``output_names``.
        model_name: the registered model; its spec says how many channels each output takes.
    """

    def __init__(self, network: nn.Module, output_names: tuple[str, ...], model_name: str):
        super().__init__()
        spec = get_model_spec(model_name)
        if tuple(output_names) != spec.output_names:
            raise ValueError(f"a {model_name} network's outputs are {list(spec.output_names)}, not {list(output_names)}")
        self.network = network
        self.output_names = spec.output_names
        self.model_name = model_name
        self.output_channels = spec.packed_channels(network)

    @property
    def spec(self) -> PackedSpec:
        return PackedSpec(self.model_name, self.output_names, tuple(self.output_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.network(x)
        return torch.cat([output if output.dim() == 4 else output.unsqueeze(1) for output in outputs], dim=1)

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: output}`` with the shapes the network returns ((B, X, Y) maps; xyz (B, C, gx, gy))."""
        return unpack_outputs(packed, self.spec)


@functools.lru_cache(maxsize=4)
def _program_from_archive(archive: bytes) -> torch.export.ExportedProgram:
    # A Ray worker receives the same archive for every batch of a prediction: load it once per process.
    return torch.export.load(io.BytesIO(archive))


class ExportedPackedOutputs(nn.Module):
    """A registered model as loaded: the exported graph of a :class:`PackedOutputs`, read like one.

    ``forward(x)``: x (B, C, X, Y, K) float32, any B ≥ 1 → (B, sum of channels, X', Y'), the same
    numbers as the eager :class:`PackedOutputs` it was exported from. The graph was exported in
    eval mode and stays there: :meth:`train` and :meth:`eval` change nothing. :meth:`to` moves
    it between devices (``torch.export``'s device pass), float32 only.

    Args:
        archive: the ``.pt2`` file's bytes, already checked to be free of pickle payloads (the
            registry does that before calling :meth:`from_archive`).
        spec: output names and channels, from the model's metadata.

    Sent to Ray tasks as the archive bytes and the spec (:meth:`__reduce__`): a GraphModule of
    ``torch.export`` cannot be pickled, and the worker rebuilds it from the same bytes.
    """

    def __init__(self, program: torch.export.ExportedProgram, archive: bytes, spec: PackedSpec,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self._program = program
        self._archive = archive
        self._spec = spec
        self._device = torch.device(device)
        self.graph = program.module()

    @classmethod
    def from_archive(cls, archive: bytes, spec: PackedSpec, device: torch.device | str = "cpu"
                     ) -> ExportedPackedOutputs:
        module = cls(_program_from_archive(archive), archive, spec)
        return module.to(device)

    def __reduce__(self):
        return ExportedPackedOutputs.from_archive, (self._archive, self._spec, str(self._device))

    @property
    def spec(self) -> PackedSpec:
        return self._spec

    @property
    def model_name(self) -> str:
        return self._spec.model_name

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._spec.output_names

    @property
    def output_channels(self) -> tuple[int, ...]:
        return self._spec.output_channels

    @property
    def network(self) -> UnpackedNetwork:
        """The model as the eager network behaves: ``forward(x)`` returns the tuple of outputs."""
        return UnpackedNetwork(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: output}`` with the shapes the network returns ((B, X, Y) maps; xyz (B, C, gx, gy))."""
        return unpack_outputs(packed, self._spec)

    def train(self, mode: bool = True) -> ExportedPackedOutputs:
        # an exported graph refuses train()/eval(); it is fixed in inference mode (batch statistics frozen)
        return self

    def to(self, *args, **kwargs) -> ExportedPackedOutputs:
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype != torch.float32:
            raise ValueError(f"an exported afm-ray model runs in float32, not {dtype}")
        if device is not None and torch.device(device) != self._device:
            from torch.export.passes import move_to_device_pass

            # the pass moves a program in place: move a fresh copy, never the one shared through the cache
            self._program = move_to_device_pass(torch.export.load(io.BytesIO(self._archive)), device)
            self._device = torch.device(device)
            self.graph = self._program.module()
        return self


class UnpackedNetwork(nn.Module):
    """An :class:`ExportedPackedOutputs` that returns the network's tuple of outputs, as
    :func:`afm_ray.train.validation.evaluate` and the figures expect of a DSH, ES or XYZ network."""

    def __init__(self, packed: ExportedPackedOutputs):
        super().__init__()
        self.packed = packed

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.packed.unpack(self.packed(x)).values())

    def to(self, *args, **kwargs) -> UnpackedNetwork:
        self.packed.to(*args, **kwargs)
        return self
