"""``afm-ray bench models``: training-step throughput of the registered networks (DSH, ES, xyz).

One step = forward, the thesis loss, backward (no optimiser update) on a random batch at the
thesis input size; the figure printed is ``batch_size / median step time`` over ``--repeats``
timed steps after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from afm_ray.errors import InputError
from afm_ray.models import list_model_specs


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="forward+backward samples/s of the DSH, ES and xyz networks",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps; the median is reported (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2; more with --compile)")
    parser.add_argument("--compile", action="store_true", help="wrap each model in torch.compile")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last memory format for weights and inputs (channels_last_3d for 3D)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    names = [spec.name for spec in list_model_specs()]
    parser.add_argument("--models", nargs="+", choices=names, default=names,
                        help="which networks (default all)")
    parser.add_argument("--size", type=int, default=128, help="scan size in pixels, X = Y (default 128)")
    parser.add_argument("--slices", type=int, default=10, help="z-slices per stack (default 10)")
    parser.set_defaults(handler=run)


def bench_config(name: str, size: int, slices: int):
    """Thesis settings of model ``name`` at ``size`` × ``size`` px (0.125 Å/px, as the thesis) and ``slices`` slices."""
    from afm_ray.recipe import TrainConfig

    return TrainConfig.model_validate({
        "model": {"name": name}, "augment": {"scan_height": {"enabled": False}},
        "sim": {"num_slices": slices, "scan_pixels": [size, size], "scan_size_angstrom": [size / 8, size / 8]}})


def _random_targets(spec, outputs: tuple[torch.Tensor, ...], generator) -> tuple[torch.Tensor, ...]:
    """Random targets shaped like ``outputs``: one-hot classes (5 % atoms, one in every sample, so the
    whole batch is trained on) for a softmax output, uniform values for the others."""
    targets = []
    for output, value in zip(spec.outputs, outputs):
        if output.activation == "softmax":
            is_atom = torch.rand(value.shape[0], *value.shape[2:], generator=generator) < 0.05
            is_atom[:, 0, 0] = True
            target = torch.zeros(value.shape)
            target[:, 0] = (~is_atom).float()
            target[:, 1] = is_atom.float()
        else:
            target = torch.rand(value.shape, generator=generator) - (0.5 if output.shape == "grid" else 0.0)
        targets.append(target)
    return tuple(targets)


def measure(name: str, args, device: torch.device) -> tuple[float, int]:
    """Median seconds per training step and the model's parameter count."""
    from afm_ray.models import count_parameters
    from afm_ray.models.memory_format import channels_last, to_channels_last

    config = bench_config(name, args.size, args.slices)
    spec = config.model.spec
    torch.manual_seed(0)
    model = config.build_network().to(device)
    n_parameters = count_parameters(model)
    generator = torch.Generator().manual_seed(0)
    stack = torch.randn(args.batch_size, len(spec.tips), args.size, args.size, args.slices, generator=generator)
    with torch.no_grad():
        shapes = tuple(output.cpu() for output in model.eval()(stack[:1].to(device)))
    model.train()
    targets = _random_targets(spec, tuple(s.expand(args.batch_size, *s.shape[1:]) for s in shapes), generator)
    stack, targets = stack.to(device), tuple(t.to(device) for t in targets)
    if args.channels_last:
        to_channels_last(model)
        stack = channels_last(stack)
    step_model = torch.compile(model) if args.compile else model
    loss_fn = spec.build_loss(config.loss)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(step_model(stack), targets).total.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), n_parameters


def run(args) -> int:
    for option in ("batch_size", "repeats", "size", "slices"):
        if getattr(args, option) < 1:
            raise InputError(f"--{option.replace('_', '-')}", f"must be >= 1, got {getattr(args, option)}")
    if args.warmup < 0:
        raise InputError("--warmup", f"must be >= 0, got {args.warmup}")
    if args.size % 8:
        raise InputError("--size", f"must be divisible by 8 (the encoder pools xy by 8), got {args.size}")
    if args.slices < 4:
        raise InputError("--slices", f"must be >= 4 (the encoder pools z by 4), got {args.slices}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda requested but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    print(f"models: forward+loss+backward, batch {args.batch_size}, input {args.size}×{args.size}×{args.slices}, "
          f"median of {args.repeats} after {args.warmup} warm-up, device {device_name}, "
          f"compile={args.compile}, channels_last={args.channels_last}, torch {torch.__version__}")
    print(f"{'model':<6} {'parameters':>11} {'ms/step':>10} {'samples/s':>10}")
    for name in args.models:
        seconds, n_parameters = measure(name, args, device)
        print(f"{name:<6} {n_parameters:>11,} {1000 * seconds:>10.1f} {args.batch_size / seconds:>10.2f}", flush=True)
    return 0
