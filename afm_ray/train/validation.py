"""Validation on a rank: what it validates on (its shard of the fixed set, kept on the device where it fits)
and the evaluation of the model on it."""

from __future__ import annotations

import torch

from afm_ray.pipeline.fixed_sets import FixedSet
from afm_ray.recipe import TrainConfig
from afm_ray.train.configured_model import Evaluation, compute_loss, evaluation_for, forward, to_tensors
from afm_ray.train.device_shard import DeviceShard, free_device_bytes
from afm_ray.train.network import unwrap


def validation_source(val_set: FixedSet, config: TrainConfig, device: torch.device, rank: int, world_size: int,
                      ranks_on_node: int) -> FixedSet | DeviceShard:
    """What a rank validates on: its shard kept on ``device`` where ``run.val_shard_on_device`` (auto: CUDA),
    within ``run.val_shard_on_device_fraction`` of the memory free now; else the fixed set itself."""
    wanted = config.run.val_shard_on_device
    if wanted is False or (wanted == "auto" and device.type != "cuda"):
        return val_set
    budget = int(config.run.val_shard_on_device_fraction * free_device_bytes(device, ranks_on_node))
    return DeviceShard(val_set, device, rank, world_size, budget)


def evaluate(model: torch.nn.Module, loss_fn, config: TrainConfig, fixed_set: FixedSet | DeviceShard, device,
             rank: int = 0, world_size: int = 1, thesis_loss_fn=None) -> Evaluation:
    """Loss and task metrics of ``model`` on shards ``rank::world_size`` of a fixed set (no gradient), or on
    a :class:`DeviceShard` (which names its own shards); with ``thesis_loss_fn``
    (:func:`~afm_ray.train.configured_model.build_thesis_loss`) also the loss as Table 6 weighs it."""
    network = unwrap(model)
    network.eval()
    evaluation = evaluation_for(config)
    batches = (fixed_set.batches() if isinstance(fixed_set, DeviceShard)
               else (to_tensors(batch, device) for batch in fixed_set.batches(rank, world_size)))
    with torch.no_grad():
        for tensors in batches:
            outputs = forward(network, tensors["x"], config)
            thesis_loss = (None if thesis_loss_fn is None
                           else compute_loss(config.model.spec, thesis_loss_fn, outputs, tensors))
            evaluation.update(outputs, tensors, compute_loss(config.model.spec, loss_fn, outputs, tensors), thesis_loss)
    network.train()
    return evaluation
