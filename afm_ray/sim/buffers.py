"""Device and host buffers that an OpenCL object reuses across calls, pending device results, and the work-size
rounding the kernels share."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import pyopencl as cl

LOCAL_SIZE = 64
"""Work items per group along the pixel axis (global sizes are padded to a multiple): of 16–256,
64 measured fastest for the relaxation on pocl."""


class DeviceBuffers(dict):
    """Named buffers of one context (name → :class:`pyopencl.Buffer`), kept between calls.

    :meth:`at_least` hands out a buffer of the size a call needs, reallocating it (to 1.5× the need,
    within the device's largest allocation) only when the one it holds is too small.
    """

    def __init__(self, context: cl.Context):
        super().__init__()
        self.context = context
        self.largest_allocation = int(context.devices[0].max_mem_alloc_size)

    def at_least(self, name: str, nbytes: int) -> cl.Buffer:
        buffer = self.get(name)
        if buffer is None or buffer.size < nbytes:
            if buffer is not None:
                buffer.release()
            size = max(min(int(nbytes * 1.5), self.largest_allocation), nbytes, 64)
            buffer = self[name] = cl.Buffer(self.context, cl.mem_flags.READ_WRITE, size)
        return buffer

    def release(self) -> None:
        """Free every buffer now (they are otherwise freed with their owner)."""
        for buffer in self.values():
            buffer.release()
        self.clear()


class FreshHostArrays:
    """Where device results are read to: a new ``numpy.empty`` array per call, owned by the caller."""

    def empty(self, name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        return np.empty(shape, dtype)


class PinnedHostArrays:
    """Named host arrays in page-locked memory, reused across calls: reads into them run at full DMA speed.

    Each name owns one ``CL_MEM_ALLOC_HOST_PTR`` buffer of ``queue``'s context, mapped once (NVIDIA's
    way to page-locked host memory; on a CPU device it is ordinary memory) and grown to 1.5× a call's
    need when too small. :meth:`empty` returns a view of it: valid until the next call that asks for
    the same name, so whatever must outlive that is copied out (a Ray actor's return value is
    serialised into the object store before the actor's next call runs). A view kept longer stays
    valid memory (it holds the mapping, which is unmapped when the last view goes), only its values change.
    """

    def __init__(self, queue: cl.CommandQueue):
        self.queue = queue
        self._held: dict[str, tuple[cl.Buffer, np.ndarray]] = {}

    def empty(self, name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        held = self._held.get(name)
        if held is None or held[1].nbytes < nbytes:
            size = max(int(nbytes * 1.5), 64)
            buffer = cl.Buffer(self.queue.context, cl.mem_flags.READ_WRITE | cl.mem_flags.ALLOC_HOST_PTR, size)
            mapped, _ = cl.enqueue_map_buffer(self.queue, buffer, cl.map_flags.READ | cl.map_flags.WRITE, 0, (size,),
                                              np.uint8, is_blocking=True)
            held = self._held[name] = (buffer, mapped)
        return held[1][:nbytes].view(dtype).reshape(shape)

    def release(self) -> None:
        """Let go of every buffer (each is unmapped and freed when no view of it is left)."""
        self._held.clear()


def round_up(value: int, multiple: int = LOCAL_SIZE) -> int:
    return (value + multiple - 1) // multiple * multiple


FRESH = FreshHostArrays()
"""The default destination of device reads: new arrays."""

T = TypeVar("T")


class Pending(Generic[T]):
    """The result of enqueued device commands: :meth:`result` waits for its reads (instantly after the queue's
    ``finish()``: one wait serves a whole batch) and builds the value from them."""

    def __init__(self, reads: list[cl.Event], build: Callable[[], T]):
        self._reads, self._build = reads, build

    def result(self) -> T:
        if self._reads:
            cl.wait_for_events(self._reads)
            self._reads = []
        return self._build()
