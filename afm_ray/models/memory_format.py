"""Channels-last memory format for the networks' weights and inputs.

On CPU the 3D/2D convolutions of DSH, ES and xyz run 1.3–1.4× faster forward + backward with
channels-last tensors (``afm-ray bench models --channels-last``); values are unchanged, only strides.
Other devices (and cuDNN versions) differ, so a training worker measures which format is faster on
its own device (:func:`channels_last_is_faster`) unless ``run.channels_last`` says.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """A 5-D (B, C, X, Y, Z) or 4-D (B, C, X, Y) tensor in channels-last order; other ranks as they are."""
    if tensor.dim() == 5:
        return tensor.contiguous(memory_format=torch.channels_last_3d)
    if tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store every 4-D/5-D parameter (conv weights) of ``model`` channels-last, in place; returns it."""
    for parameter in model.parameters():
        parameter.data = channels_last(parameter.data)
    return model


def channels_last_is_faster(build_network: Callable[[], torch.nn.Module], sample: torch.Tensor,
                            repeats: int = 3) -> bool:
    """Whether forward + backward of a fresh ``build_network()`` on ``sample`` (a small input batch on the
    target device) is faster channels-last: the best of ``repeats`` timed passes each way, after one warm-up."""
    def best_seconds(last: bool) -> float:
        network = build_network().to(sample.device)
        x = channels_last(sample) if last else sample
        if last:
            to_channels_last(network)
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            sum(output.float().sum() for output in network(x)).backward()
            if sample.device.type == "cuda":
                torch.cuda.synchronize(sample.device)
            times.append(time.perf_counter() - started)
        return min(times[1:])

    return best_seconds(True) < best_seconds(False)
