"""The training worker's input pipeline: each step's micro batches are received, copied to the device and
augmented there while earlier steps train.

A :class:`StepLoader` runs a background thread that pulls a rank's steps in plan order (the stream's
``results``), turns every micro batch into a :class:`DeviceBatch` (:func:`prepare_batch`) and keeps up
to ``depth`` steps ready, so receiving and deserialising a batch, the host → device copy and the
augmentation overlap the forward and backward passes instead of running in series with them. On CUDA
the host arrays are staged in pinned memory and copied and augmented on a side stream; the training
stream waits on an event recorded there (:meth:`DeviceBatch.wait`). On a CPU the same code runs without
pinning or streams. ``depth=0`` prepares each step in the loop, in series (for comparison:
``afm-ray bench train-step``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from afm_ray.samples.augment import AugmentConfig
from afm_ray.samples.augment_torch import augment_batch
from afm_ray.samples.plan import BatchSpec
from afm_ray.samples.sample_batch import SampleBatch

_END = object()


@dataclass
class DeviceBatch:
    """One micro batch on the training device.

    Attributes:
        spec: the plan's piece it was made for.
        tensors: ``x`` (B, C, nx, ny, K) float32 network input (augmented) and the targets by name, on the device.
        n_samples: B, the samples the actor made (a skipped sample makes it smaller than ``spec.samples``).
        ready: on CUDA, the side stream's event after the copy and augmentation; None on a CPU.
    """

    spec: BatchSpec
    tensors: dict[str, torch.Tensor]
    n_samples: int
    ready: torch.cuda.Event | None = None

    def wait(self) -> None:
        """Make the current (training) stream wait for this batch, and own its memory from now on."""
        if self.ready is None:
            return
        current = torch.cuda.current_stream(next(iter(self.tensors.values())).device)
        current.wait_event(self.ready)
        for tensor in self.tensors.values():
            tensor.record_stream(current)


@dataclass
class LoaderTimes:
    """Seconds spent per stage (host wall clock; on CUDA the copy and augmentation are only enqueued)."""

    wait_seconds: float = 0.0
    """the training loop blocked waiting for a step"""
    receive_seconds: float = 0.0
    """the stream's results: waiting for the actors, fetching and deserialising"""
    transfer_seconds: float = 0.0
    """host → device copies (pinned staging on CUDA)"""
    augment_seconds: float = 0.0
    """augmentation of raw Δf on the device"""


def _to_device(array: np.ndarray, device: torch.device, pinned: bool) -> torch.Tensor:
    if pinned:  # one copy out of the (read-only) object store into page-locked memory, then an async DMA
        staging = torch.empty(array.shape, dtype=torch.from_numpy(array[:0]).dtype, pin_memory=True)
        staging.numpy()[...] = array
        return staging.to(device, non_blocking=True)
    # arrays from Ray's object store are read-only views of shared memory: copied, torch may write tensors
    return torch.from_numpy(array if array.flags.writeable else array.copy()).to(device)


def prepare_batch(spec: BatchSpec, batch: SampleBatch | None, device: torch.device, augment_config: AugmentConfig,
                  simulated_slices: int | None = None, side_stream: torch.cuda.Stream | None = None,
                  times: LoaderTimes | None = None) -> DeviceBatch | None:
    """The float arrays of an actor's batch as device tensors, raw Δf (``df``) augmented into ``x`` with the
    batch's seed (``simulated_slices``: the slices simulated, when the actor shipped only those read,
    ``spec.raw_df_read_slices``); None for a dropped or empty batch."""
    if batch is None or len(batch) == 0:
        return None
    times = times if times is not None else LoaderTimes()
    started = time.perf_counter()
    with torch.cuda.stream(side_stream) if side_stream is not None else contextlib.nullcontext():
        tensors = {name: _to_device(value, device, side_stream is not None).float()
                   for name, value in batch.float_arrays().items()}
        copied = time.perf_counter()
        if "df" in tensors:
            tensors["x"] = augment_batch(tensors.pop("df"), spec.seed, augment_config,
                                         simulated_slices=simulated_slices if spec.raw_df_read_slices else None)
        ready = None
        if side_stream is not None:
            ready = torch.cuda.Event()
            ready.record(side_stream)
    times.transfer_seconds += copied - started
    times.augment_seconds += time.perf_counter() - copied
    return DeviceBatch(spec, tensors, len(batch), ready)


@dataclass
class StepLoader:
    """Iterates the prepared micro batches of ``steps`` (one list per optimiser step, in plan order).

    ``fetch(step)`` returns the ``(spec, batch)`` pairs of one step's specs in any order (the stream's
    ``results``); ``depth`` steps are prepared ahead by a background thread (0: in the loop);
    ``simulated_slices`` as in :func:`prepare_batch`.
    """

    fetch: Callable[[list[BatchSpec]], Iterator[tuple[BatchSpec, SampleBatch | None]]]
    steps: list[list[BatchSpec]]
    device: torch.device
    augment_config: AugmentConfig
    simulated_slices: int | None = None
    depth: int = 2
    times: LoaderTimes = field(default_factory=LoaderTimes)

    def __iter__(self) -> Iterator[list[DeviceBatch | None]]:
        if self.depth == 0:
            for step in self.steps:
                started = time.perf_counter()
                prepared = self._load(step, None)
                self.times.wait_seconds += time.perf_counter() - started
                yield prepared
            return
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def hand_over(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            side_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
            try:
                for step in self.steps:
                    if not hand_over(self._load(step, side_stream)):
                        return
                hand_over(_END)
            except BaseException as error:  # raised again in the training thread
                hand_over(error)

        thread = threading.Thread(target=work, name="afm-ray-step-loader", daemon=True)
        thread.start()
        try:
            while True:
                started = time.perf_counter()
                item = ready.get()
                self.times.wait_seconds += time.perf_counter() - started
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                for batch in item:
                    if batch is not None:
                        batch.wait()
                yield item
        finally:
            stop.set()
            thread.join()

    def _load(self, step: list[BatchSpec], side_stream) -> list[DeviceBatch | None]:
        started = time.perf_counter()
        arrived = {spec.key: batch for spec, batch in (self.fetch(step) if step else [])}
        self.times.receive_seconds += time.perf_counter() - started
        return [prepare_batch(spec, arrived[spec.key], self.device, self.augment_config, self.simulated_slices,
                              side_stream, self.times) for spec in step]
