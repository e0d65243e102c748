"""Every descriptor a model can train on, by name: how to make it for a simulated batch.

A model's spec names its targets (``ModelSpec.targets``); the batch maker looks each name up here and
calls its function, so a new target is one function::

    @register_descriptor("top_height")
    def top_height(batch: TargetBatch) -> np.ndarray:
        ...  # (B, nx, ny) float32 for batch.molecules on batch.context.window

A descriptor function gets the :class:`TargetBatch` (the molecules, the batch the simulator has loaded,
the stage configuration) and returns the batch's descriptor as a float32 array ``(B, *sample_shape)``, or
a :class:`~afm_ray.sim.buffers.Pending` of it whose ``result()`` is read after the simulator's queue has
finished (device work is enqueued, not waited for). ``sample_shape`` is the map ``(nx, ny)`` of the scan
unless the registration says otherwise. Descriptors computed together (Atomic Disks and vdW Spheres in
one kernel, the Height and ES Maps from one search, the xyz classes and offsets from one encoding) share
that work through :meth:`TargetBatch.shared`.

A descriptor registered twice by the same module (a re-import) is replaced; by another module, refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

import numpy as np

from afm_ray.descriptors.config import DescriptorsConfig
from afm_ray.descriptors.device_maps import DeviceMaps
from afm_ray.descriptors.disks import atomic_disks
from afm_ray.descriptors.geometry import ScanWindow
from afm_ray.descriptors.height_es import HeightEsMaps, enqueue_height_and_es_maps
from afm_ray.descriptors.spheres import vdw_spheres
from afm_ray.descriptors.xyz_codec import XyzGrid, XyzTargets
from afm_ray.errors import InputError
from afm_ray.sim import Simulator
from afm_ray.sim.buffers import FRESH, FreshHostArrays, Pending, PinnedHostArrays
from afm_ray.sim.simulator import LoadedBatch

T = TypeVar("T")


@dataclass
class TargetContext:
    """What every batch's descriptors are made with: one per batch maker (its simulator and buffers).

    Attributes:
        simulator: its OpenCL queue runs the device's descriptors; its config gives the scan's pixels.
        window: the descriptors' scan window (Å).
        descriptors: each descriptor's convention.
        element_groups: xyz element classes as atomic-number groups (:mod:`afm_ray.descriptors.xyz_classes`).
        device_maps: draws vdW Spheres and Atomic Disks on the device; ``None``: NumPy (same values).
        host: where the device's maps are read to.
    """

    simulator: Simulator
    window: ScanWindow
    descriptors: DescriptorsConfig
    element_groups: tuple[tuple[int, ...], ...] | None = None
    device_maps: DeviceMaps | None = None
    host: FreshHostArrays | PinnedHostArrays = FRESH

    @cached_property
    def xyz_grid(self) -> XyzGrid:
        """The xyz descriptor's grid on :attr:`window` (:class:`InputError` for a window of no whole boxes)."""
        return XyzGrid(window=self.window, element_groups=self.element_groups)

    @property
    def map_shape(self) -> tuple[int, int]:
        """``(nx, ny)`` pixels of a map."""
        return tuple(self.simulator.config.scan_pixels)


@dataclass
class TargetBatch:
    """One batch whose descriptors are being made: ``molecules`` (in order) as ``loaded`` by the simulator."""

    context: TargetContext
    loaded: LoadedBatch
    molecules: Sequence
    stage: Callable[[str], AbstractContextManager] = lambda name: nullcontext()
    _shared: dict[str, Pending] = field(default_factory=dict)

    def shared(self, name: str, enqueue: Callable[[], Pending[T] | T]) -> Pending[T]:
        """``enqueue()`` once per batch, timed as stage ``name``, for work several descriptors read; its result
        is built once, whoever asks."""
        if name not in self._shared:
            with self.stage(name):
                made = enqueue()
            results: list = []

            def build():
                if not results:
                    results.append(made.result() if isinstance(made, Pending) else made)
                return results[0]

            self._shared[name] = Pending([], build)
        return self._shared[name]


DescriptorFunction = Callable[[TargetBatch], "np.ndarray | Pending[np.ndarray]"]


@dataclass(frozen=True)
class Descriptor:
    """A registered descriptor: its function and the shape of one sample's array."""

    name: str
    make: DescriptorFunction
    sample_shape: Callable[[TargetContext], tuple[int, ...]]
    module: str


_REGISTRY: dict[str, Descriptor] = {}


def _map_shape(context: TargetContext) -> tuple[int, ...]:
    return context.map_shape


def register_descriptor(name: str, sample_shape: Callable[[TargetContext], tuple[int, ...]] = _map_shape
                        ) -> Callable[[DescriptorFunction], DescriptorFunction]:
    """Decorator: register the function as the descriptor ``name`` (one sample's array: ``sample_shape(context)``,
    default the map ``(nx, ny)``)."""

    def register(function: DescriptorFunction) -> DescriptorFunction:
        known = _REGISTRY.get(name)
        if known is not None and known.module != function.__module__:
            raise ValueError(f"descriptor {name!r} is already registered by {known.module}")
        _REGISTRY[name] = Descriptor(name, function, sample_shape, function.__module__)
        return function

    return register


def get_descriptor(name: str) -> Descriptor:
    """The registered descriptor ``name``; :class:`InputError` naming the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError("targets", f"unknown descriptor {name!r}; registered: {', '.join(descriptor_names())}") from None


def descriptor_names() -> tuple[str, ...]:
    """Every registered descriptor, by name."""
    return tuple(sorted(_REGISTRY))


def enqueue_targets(batch: TargetBatch, targets: Sequence[str]) -> Pending[dict[str, np.ndarray]]:
    """The descriptors named ``targets`` for ``batch``: the device's enqueued, the host's computed meanwhile;
    ``.result()`` after ``simulator.finish()`` gives ``{name: (B, *sample_shape) float32}``."""
    made = {name: get_descriptor(name).make(batch) for name in targets}
    return Pending([], lambda: {name: value.result() if isinstance(value, Pending) else value
                                for name, value in made.items()})


def describe(molecules: Sequence, targets: Sequence[str], context: TargetContext,
             stage: Callable[[str], AbstractContextManager] | None = None) -> dict[str, np.ndarray]:
    """The descriptors named ``targets`` of ``molecules`` (anything :meth:`Simulator.load` takes), made on
    ``context``'s simulator: ``{name: (B, *sample_shape) float32}``. ``stage(name)``, a context manager, times
    each group of descriptors."""
    batch = TargetBatch(context, context.simulator.load(molecules), molecules, stage or (lambda name: nullcontext()))
    pending = enqueue_targets(batch, targets)
    context.simulator.finish()
    return pending.result()


def empty_targets(context: TargetContext, targets: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays of no samples for ``targets``, with each descriptor's per-sample shape."""
    return {name: np.zeros((0, *get_descriptor(name).sample_shape(context)), np.float32) for name in targets}


# -- afm-ray's descriptors (thesis 3.2) --------------------------------------------------------------------
def _spheres_and_disks(batch: TargetBatch, name: str) -> np.ndarray | Pending[np.ndarray]:
    context = batch.context
    radii, disks_mode = context.descriptors.vdw_spheres.radii, context.descriptors.atomic_disks.mode
    if context.device_maps is None:
        with batch.stage("vdW Spheres + Atomic Disks"):
            if name == "atomic_disks":
                return atomic_disks(batch.molecules, context.window, mode=disks_mode)
            return vdw_spheres(batch.molecules, context.window, radii=radii)
    maps = batch.shared("vdW Spheres + Atomic Disks", lambda: context.device_maps.enqueue_maps(
        batch.loaded, context.window, radii=radii, disks_mode=disks_mode, host=context.host))
    return Pending([], lambda: maps.result()[name])


@register_descriptor("atomic_disks")
def atomic_disks_target(batch: TargetBatch) -> np.ndarray | Pending[np.ndarray]:
    """Atomic Disks (B, nx, ny): Å, or dimensionless in ppafm's mode."""
    return _spheres_and_disks(batch, "atomic_disks")


@register_descriptor("vdw_spheres")
def vdw_spheres_target(batch: TargetBatch) -> np.ndarray | Pending[np.ndarray]:
    """vdW Spheres (B, nx, ny) Å."""
    return _spheres_and_disks(batch, "vdw_spheres")


def _height_and_es(batch: TargetBatch) -> Pending[HeightEsMaps]:
    context = batch.context
    return batch.shared("Height + ES Map", lambda: enqueue_height_and_es_maps(
        batch.loaded, context.simulator, context.descriptors.height_map, context.descriptors.es_map, context.host))


@register_descriptor("height_map")
def height_map_target(batch: TargetBatch) -> Pending[np.ndarray]:
    """Height Map (B, nx, ny) Å."""
    maps = _height_and_es(batch)
    return Pending([], lambda: maps.result().height)


@register_descriptor("es_map")
def es_map_target(batch: TargetBatch) -> Pending[np.ndarray]:
    """Electrostatic Map (B, nx, ny): V (or V/Å for the field) on the Height-Map surface."""
    maps = _height_and_es(batch)
    return Pending([], lambda: maps.result().es)


def _xyz(batch: TargetBatch) -> Pending[XyzTargets]:
    return batch.shared("xyz encode", lambda: batch.context.xyz_grid.encode(batch.molecules))


@register_descriptor("xyz_classes", sample_shape=lambda context: (context.xyz_grid.n_classes,
                                                                   *context.xyz_grid.grid_shape))
def xyz_classes_target(batch: TargetBatch) -> np.ndarray:
    """xyz classes (B, n_classes, gx, gy): float32 one-hot, channel 0 background."""
    return _xyz(batch).result().classes


@register_descriptor("xyz_offsets", sample_shape=lambda context: (3, *context.xyz_grid.grid_shape))
def xyz_offsets_target(batch: TargetBatch) -> np.ndarray:
    """xyz offsets (B, 3, gx, gy) Å from the box centre and the top nucleus."""
    return _xyz(batch).result().offsets
