"""``afm-ray bench models``: training-step throughput of the DSH, ES and xyz networks.

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

MODEL_NAMES = ("dsh", "es", "xyz")


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
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES),
                        help="which networks (default all)")
    parser.add_argument("--size", type=int, default=128, help="scan size in pixels, X = Y (default 128)")
    parser.add_argument("--slices", type=int, default=10, help="z-slices per stack (default 10)")
    parser.set_defaults(handler=run)


def _random_batch(name: str, batch_size: int, size: int, slices: int, device: torch.device, generator):
    """Random input stack and thesis-shaped targets for one model."""
    from afm_ray.models import MODEL_INPUT_CHANNELS

    channels = MODEL_INPUT_CHANNELS[name]
    stack = torch.randn(batch_size, channels, size, size, slices, generator=generator)
    if name == "xyz":
        grid = size // 8
        is_atom = torch.rand(batch_size, grid, grid, generator=generator) < 0.05
        is_atom[:, 0, 0] = True  # every sample has Np > 0, so the whole batch is trained on
        class_target = torch.stack((~is_atom, is_atom), dim=1).float()
        offsets_target = torch.rand(batch_size, 3, grid, grid, generator=generator) - 0.5
        offsets_target[:, 2] = -0.7 * torch.rand(batch_size, grid, grid, generator=generator)
        targets = (class_target, offsets_target)
    else:
        n_outputs = 3 if name == "dsh" else 2
        targets = tuple(torch.rand(batch_size, size, size, generator=generator) for _ in range(n_outputs))
    return stack.to(device), tuple(t.to(device) for t in targets)


def _loss_fn(name: str):
    from afm_ray.losses import FocalPositionLoss, WeightedMSELoss

    if name == "xyz":
        loss = FocalPositionLoss()
        return lambda outputs, targets: loss(outputs[0], outputs[1], targets[0], targets[1]).total
    loss = WeightedMSELoss.for_dsh() if name == "dsh" else WeightedMSELoss.for_es()
    return lambda outputs, targets: loss(outputs, targets).total


def measure(name: str, args, device: torch.device) -> tuple[float, int]:
    """Median seconds per training step and the model's parameter count."""
    from afm_ray.models import build_model, count_parameters
    from afm_ray.models.memory_format import channels_last, to_channels_last

    torch.manual_seed(0)
    model = build_model(name, n_slices=args.slices).to(device)
    n_parameters = count_parameters(model)
    generator = torch.Generator().manual_seed(0)
    stack, targets = _random_batch(name, args.batch_size, args.size, args.slices, device, generator)
    if args.channels_last:
        to_channels_last(model)
        stack = channels_last(stack)
    step_model = torch.compile(model) if args.compile else model
    loss_fn = _loss_fn(name)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(step_model(stack), targets).backward()
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
