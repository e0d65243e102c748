"""A rank's share of a fixed set kept on its training device, so that validation reads no file, decodes
nothing and copies nothing to the device after the first epoch.

The shard is filled during the first pass over it and kept only when all of it fits in the budget
(``run.val_shard_on_device_fraction`` of the device memory free at that moment: on CUDA what
``torch.cuda.mem_get_info`` reports outside torch's own pool after the first training epoch; on a CPU
the memory available to the node's ranks). A shard that does not fit is read from the fixed set's host
cache every time (:class:`~afm_ray.pipeline.fixed_sets.FixedSet`, ``data.fixed_set_cache_mib``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from afm_ray.pipeline.fixed_sets import FixedSet, available_memory_bytes
from afm_ray.train.configured_model import to_tensors


def free_device_bytes(device: torch.device, ranks_on_node: int = 1) -> int:
    """Memory ``device`` can still give: CUDA's free bytes, or a CPU node's available memory per rank."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_memory_bytes() // max(ranks_on_node, 1)


class DeviceShard:
    """Shards ``rank::world_size`` of ``fixed_set`` as tensors on ``device`` (see the module doc).

    :meth:`batches` yields ``{name: tensor}`` of each batch's float arrays (``x`` (B, C, nx, ny, K), the
    targets by name), on ``device``.
    """

    def __init__(self, fixed_set: FixedSet, device: torch.device, rank: int, world_size: int, budget_bytes: int):
        self.fixed_set, self.device = fixed_set, device
        self.rank, self.world_size = rank, world_size
        self.budget_bytes = budget_bytes
        self.kept: list[dict[str, torch.Tensor]] | None = None  # the whole shard once it fitted

    @property
    def on_device(self) -> bool:
        return self.kept is not None

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.kept is not None:
            yield from self.kept
            return
        filling: list[dict[str, torch.Tensor]] | None = []
        used = 0
        for batch in self.fixed_set.batches(self.rank, self.world_size):
            tensors = to_tensors(batch, self.device)
            if filling is not None:
                used += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
                if used <= self.budget_bytes:
                    filling.append(tensors)
                else:
                    filling = None
            yield tensors
        self.kept = filling
