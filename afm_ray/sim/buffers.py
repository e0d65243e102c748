"""Device buffers that an OpenCL object reuses across calls, and the work-size rounding its kernels share."""

from __future__ import annotations

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


def round_up(value: int, multiple: int = LOCAL_SIZE) -> int:
    return (value + multiple - 1) // multiple * multiple
