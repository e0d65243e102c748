"""Turning an AFM stack into model input: the deterministic part of training's augmentation.

Training (:mod:`afm_ray.samples.augment`) picks K slices from a random contiguous window, normalises every
slice, then adds noise, shifts and cutouts. Prediction does only the deterministic steps, in this
order:

1. **Tips**: channels are ordered as the model's tips (``CO``; ES: ``CO, Xe``); a stack whose tip
   names do not match is refused.
2. **Slice selection** (:func:`choose_slices`) to the model's K slices, z far → close, the same
   indices for every channel (training also picks one set of heights for both ES tips):

   * ``auto`` (default): K evenly spaced slices among the closest W, with W the training
     window (``augment.scan_height.window_slices``, thesis 15; all slices when the stack has
     fewer than W). Training draws the window anywhere in the simulated stack and K random
     slices of it, in order; ``auto`` is the draw with the window next to the sample and the
     slices spread out.
   * ``closest``: the K closest slices (the last K).
   * ``even``: K evenly spaced over the whole stack, first and last included.
   * explicit indices ``0,2,4,…`` (K increasing indices into the stack's z axis; negative
     indices count from the closest slice).

   A stack with fewer than K slices is refused.
3. **Resampling** (:func:`resample_to_window`) in xy to the model's pixel size (bilinear,
   antialiased when shrinking; torch ``interpolate``), then a centre crop or edge-replicating pad to
   the model's window (``sim.scan_pixels`` over ``sim.scan_size_angstrom``, 16 Å / 128 px in the
   thesis). The scan centre becomes the window centre. Resampling by more than
   ``max_resample`` (default 2×) either way is refused: the network was trained at one pixel
   size, and features 2× larger or smaller are out of its training distribution. Cropping or
   padding more than 10 % of the window along an axis gives a warning. Exactly matching pixels
   are not touched. The new pixel count is rounded, so the scale is exact to half a pixel over
   the scan.
4. **Per-slice normalisation**: :func:`afm_ray.samples.augment.normalize_slices` (mean 0, std 1 per
   slice), the same function training uses.

No noise, shifts or cutouts. With the same slices, a simulated stack preprocessed here equals the
training pipeline's input with noise, shifts and cutouts switched off (tests/integration/test_predict.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from afm_ray.samples.augment import normalize_slices
from afm_ray.config import StrictModel
from afm_ray.errors import InputError
from afm_ray.predict.inputs import AfmStack
from afm_ray.recipe import TrainConfig

SLICE_STRATEGIES = ("auto", "closest", "even")
PIXEL_SIZE_TOLERANCE = 1e-6  # relative: pixel sizes this close are taken as equal (no resampling)
CROP_PAD_WARNING_FRACTION = 0.1  # of the window, per axis

SliceChoice = str | tuple[int, ...]


class PrepareSettings(StrictModel):
    """How stacks are fitted to a model (``afm-ray predict`` / ``match`` options)."""

    slices: SliceChoice = Field("auto", description="auto | closest | even | explicit slice indices (far → close)")
    max_resample: float = Field(2.0, ge=1.0, description="largest xy rescaling to the model's pixel size, either way")

    @field_validator("slices")
    @classmethod
    def _known_strategy(cls, value: SliceChoice) -> SliceChoice:
        if isinstance(value, str) and value not in SLICE_STRATEGIES:
            raise ValueError(f"unknown slice choice {value!r}; use {', '.join(SLICE_STRATEGIES)} or indices")
        return value


@dataclass(frozen=True)
class ModelInput:
    """What a model expects: tips, K slices, window size (Å) and pixels, the training slice window W.

    Built from a training config with :meth:`from_config`.
    """

    tips: tuple[str, ...]
    n_slices: int
    scan_size_angstrom: tuple[float, float]
    pixels: tuple[int, int]
    window_slices: int

    @classmethod
    def from_config(cls, config: TrainConfig) -> "ModelInput":
        scan = config.augment.scan_height
        return cls(config.model.spec.tips, config.input_slices,
                   (float(config.sim.scan_size_angstrom[0]), float(config.sim.scan_size_angstrom[1])),
                   (int(config.sim.scan_pixels[0]), int(config.sim.scan_pixels[1])),
                   scan.window_slices if scan.enabled else config.sim.num_slices)

    @property
    def pixel_size_angstrom(self) -> tuple[float, float]:
        return (self.scan_size_angstrom[0] / self.pixels[0], self.scan_size_angstrom[1] / self.pixels[1])


@dataclass(frozen=True)
class PreparedStack:
    """A stack ready for the network.

    Attributes:
        name: the stack's output name.
        x: (C, nx, ny, K) float32 normalised input, channels in the model's tip order, z far → close.
        slice_indices: (K,) indices of the chosen slices in the stack's z axis.
        zoom: (fx, fy) resampling factors applied (new pixels per old pixel; 1 = untouched).
        source_scan_size_angstrom: the input's scan size, or None when assumed equal to the window.
    """

    name: str
    x: np.ndarray
    slice_indices: np.ndarray
    zoom: tuple[float, float]
    source_scan_size_angstrom: tuple[float, float] | None


def parse_slice_choice(text: str) -> SliceChoice:
    """``--slices`` value: a strategy name or comma-separated indices (``"0,2,4,6,8,9"``)."""
    text = text.strip()
    if text in SLICE_STRATEGIES:
        return text
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError("--slices", f"expected one of {', '.join(SLICE_STRATEGIES)} or comma-separated "
                                     f"slice indices, got {text!r}") from None


def choose_slices(n_available: int, n_needed: int, choice: SliceChoice = "auto",
                  window_slices: int | None = None, where: str = "stack") -> np.ndarray:
    """(K,) increasing slice indices (z far → close) picked from ``n_available`` slices.

    ``choice``: ``auto`` | ``closest`` | ``even`` | explicit indices (module docstring).
    ``window_slices``: the training window W used by ``auto`` (default: all slices).
    """
    if n_available < n_needed:
        raise InputError(where, f"has {n_available} slices but the model needs {n_needed} (z far → close on the "
                                "last axis; check the axis order)")
    if isinstance(choice, tuple):
        indices = np.asarray(choice, dtype=np.int64)
        if indices.size != n_needed:
            raise InputError("--slices", f"{indices.size} indices given, the model needs {n_needed}")
        if indices.min() < -n_available or indices.max() >= n_available:
            raise InputError("--slices", f"index out of range for {where} with {n_available} slices: {list(choice)}")
        indices = np.where(indices < 0, indices + n_available, indices)
        if np.any(np.diff(indices) <= 0):
            raise InputError("--slices", f"indices must increase (far → close) without repeats, got {list(choice)}")
        return indices
    if choice == "closest":
        return np.arange(n_available - n_needed, n_available, dtype=np.int64)
    if choice == "even":
        first = 0
    elif choice == "auto":
        window = n_available if window_slices is None else max(n_needed, min(window_slices, n_available))
        first = n_available - window
    else:
        raise InputError("--slices", f"unknown slice choice {choice!r}; use {', '.join(SLICE_STRATEGIES)} or indices")
    return np.round(np.linspace(first, n_available - 1, n_needed)).astype(np.int64)


def order_channels(stack: AfmStack, tips: Sequence[str]) -> np.ndarray:
    """``stack.df`` with channels in the order of ``tips``; (C, nx, ny, nz)."""
    n_channels = stack.df.shape[0]
    if stack.tips is None:
        if n_channels != len(tips):
            raise InputError(stack.source, f"stack {stack.name!r} has {n_channels} channel(s), the model needs "
                                           f"{len(tips)} ({', '.join(tips)})")
        return stack.df
    lower = [t.lower() for t in stack.tips]
    missing = [t for t in tips if t.lower() not in lower]
    if missing:
        raise InputError(stack.source, f"stack {stack.name!r} was recorded with tip(s) {', '.join(stack.tips)}, "
                                       f"the model needs {', '.join(tips)}")
    return stack.df[[lower.index(t.lower()) for t in tips]]


def resample_to_window(stacks: np.ndarray, source_size_angstrom: tuple[float, float], model: ModelInput,
                       max_resample: float = 2.0, where: str = "stack") -> tuple[np.ndarray, tuple[float, float]]:
    """Resample (C, nx, ny, K) slices to the model's pixel size and window; returns (array, zoom).

    ``source_size_angstrom``: the scan's (x, y) extent in Å. ``zoom`` = (fx, fy), new pixels per
    input pixel along x and y. Raises :class:`InputError` beyond ``max_resample``; warns when more
    than 10 % of the window is cropped away or padded.
    """
    channels, nx, ny, n_slices = stacks.shape
    source_pixel = (source_size_angstrom[0] / nx, source_size_angstrom[1] / ny)
    target_pixel = model.pixel_size_angstrom
    zoom = (source_pixel[0] / target_pixel[0], source_pixel[1] / target_pixel[1])
    for axis, factor in enumerate(zoom):
        if max(factor, 1.0 / factor) > max_resample:
            raise InputError(where, f"pixel size {source_pixel[axis]:.4g} Å along {'xy'[axis]} is "
                                    f"{max(factor, 1 / factor):.2f}× {'larger' if factor > 1 else 'smaller'} than the "
                                    f"model's {target_pixel[axis]:.4g} Å (limit {max_resample:g}×, --max-resample); "
                                    f"check scan_size_angstrom ({source_size_angstrom[0]:g}×{source_size_angstrom[1]:g} Å "
                                    f"over {nx}×{ny} px)")
    out = stacks.astype(np.float32, copy=False)
    if any(abs(f - 1.0) > PIXEL_SIZE_TOLERANCE for f in zoom):
        size = (max(1, round(nx * zoom[0])), max(1, round(ny * zoom[1])))
        # (C·K, nx, ny) planes as one image batch: interpolate resizes the last two axes
        planes = torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2))).reshape(1, channels * n_slices, nx, ny)
        resized = F.interpolate(planes, size=size, mode="bilinear", align_corners=False,
                                antialias=size[0] < nx or size[1] < ny)
        out = resized.reshape(channels, n_slices, *size).numpy().transpose(0, 2, 3, 1)
    for axis in (0, 1):
        change = out.shape[1 + axis] - model.pixels[axis]
        if abs(change) > CROP_PAD_WARNING_FRACTION * model.pixels[axis]:
            warnings.warn(f"{where}: the {source_size_angstrom[axis]:g} Å scan along {'xy'[axis]} is "
                          f"{'larger' if change > 0 else 'smaller'} than the model's {model.scan_size_angstrom[axis]:g} Å "
                          f"window: {abs(change)} px {'cropped from the edges' if change > 0 else 'padded by repeating the edge'}",
                          stacklevel=2)
    return _crop_or_pad(out, model.pixels), zoom


def _crop_or_pad(stacks: np.ndarray, pixels: tuple[int, int]) -> np.ndarray:
    """Centre-crop or edge-pad (C, nx, ny, K) to (C, pixels[0], pixels[1], K)."""
    for axis, target in ((1, pixels[0]), (2, pixels[1])):
        size = stacks.shape[axis]
        if size > target:
            start = (size - target) // 2
            stacks = np.take(stacks, np.arange(start, start + target), axis=axis)
        elif size < target:
            before = (target - size) // 2
            widths = [(0, 0)] * 4
            widths[axis] = (before, target - size - before)
            stacks = np.pad(stacks, widths, mode="edge")
    return np.ascontiguousarray(stacks, dtype=np.float32)


def prepare_stack(stack: AfmStack, model: ModelInput, settings: PrepareSettings = PrepareSettings()) -> PreparedStack:
    """Steps 1–4 of the module docstring for one stack.

    A stack without a scan size is taken to cover the model's window (a warning when its pixel
    count differs, since it is then resampled).
    """
    df = order_channels(stack, model.tips)
    indices = choose_slices(df.shape[3], model.n_slices, settings.slices, model.window_slices,
                            where=f"{stack.source} (stack {stack.name!r})")
    source_size = stack.scan_size_angstrom
    if source_size is None and (df.shape[1], df.shape[2]) != model.pixels:
        warnings.warn(f"{stack.source}: no scan_size_angstrom; assuming the {df.shape[1]}×{df.shape[2]} px scan "
                      f"covers the model's {model.scan_size_angstrom[0]:g}×{model.scan_size_angstrom[1]:g} Å window",
                      stacklevel=2)
    resized, zoom = resample_to_window(df[:, :, :, indices], source_size or model.scan_size_angstrom, model,
                                       settings.max_resample, stack.source)
    # channels play the role of training's batch axis: every (channel, slice) is normalised alone
    return PreparedStack(stack.name, normalize_slices(resized), indices, zoom, source_size)
