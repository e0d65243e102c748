"""The network a training rank trains: built with the run's seed, channels-last where it measures faster,
DDP-wrapped by Ray Train where there are ranks, compiled where ``run.compile``."""

from __future__ import annotations

import torch

from afm_ray.errors import InputError
from afm_ray.models.memory_format import channels_last_is_faster, to_channels_last
from afm_ray.recipe import TrainConfig
from afm_ray.train.configured_model import gathered_from_ranks


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside torch.compile's and DDP's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model


def prepare_network(config: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """(the model to train: the network on ``device``, DDP-wrapped where there are ranks, compiled where
    ``run.compile``; whether it is channels-last). ``run.channels_last: auto`` measures this device."""
    import ray.train.torch  # here, not above: the benchmarks use compiled() on GPU machines that have no Ray

    last = config.run.channels_last
    if last == "auto":  # rank 0's measurement for all: DDP needs the same parameter strides on every rank
        sample = torch.randn(2, len(config.model.spec.tips), *config.sim.scan_pixels, config.input_slices,
                             device=device)
        last = gathered_from_ranks(channels_last_is_faster(config.build_network, sample))[0]
    torch.manual_seed(config.run.seed)  # the same initial weights whatever the measurement drew
    network = config.build_network()
    model = ray.train.torch.prepare_model(to_channels_last(network) if last else network)
    return compiled(model, config), last


def compiled(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """``model`` inside ``torch.compile`` with ``run.compile_backend`` where ``run.compile``, else itself."""
    if not config.run.compile:
        return model
    check_compile_backend(config)
    return torch.compile(model, backend=config.run.compile_backend)


def check_compile_backend(config: TrainConfig) -> None:
    """Refuses a ``run.compile_backend`` torch does not know (checked by the driver before any work)."""
    if not config.run.compile:
        return
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if config.run.compile_backend not in known:
        raise InputError("run.compile_backend", f"{config.run.compile_backend!r} is not a torch.compile backend "
                                                f"(known: {', '.join(sorted(known))})")
