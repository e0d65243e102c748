"""``afm-ray bench predict``: predictions per second, and the time to match an experiment over N rotations.

Model: ``--model`` (``models:/NAME@ALIAS``, ``runs:/…``, a folder), or an untrained network built from
``--config`` (default: the thesis DSH, 128 × 128 px over 16 × 16 Å, 10 of 20 slices). Throughput
does not depend on the weights, so no trained model is needed.

Prediction: ``--stacks`` random Δf stacks of the model's shape (C tips, its pixels, ``sim.num_slices``
slices) go through :func:`afm_ray.predict.prepare_stack` (slice choice and per-slice normalisation)
and the network in batches of ``--batch-size`` on ``--device``, in this process (no Ray). Printed:
preparation ms per stack, network stacks/s, and end-to-end predictions/s, each the median of
``--repeats`` timed passes after one untimed pass.

Matching (DSH models; ``--no-match`` skips it): an ASE g2 molecule (``--molecule``, simple partial
charges as in ``afm-ray bench sim``) is simulated at one of the candidate rotations, untilted, with
the thesis noise (uniform, c = 0.1), as the "experiment"; :func:`afm_ray.predict.match_experiments`
then simulates ``--rotations`` evenly spread rotations on this machine's OpenCL device
(``--opencl-device``), predicts their vdW Spheres and ranks them. Printed: seconds simulating,
predicting and ranking, the total, and where the true rotation ranked (a sanity check: 1).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from afm_ray.errors import InputError


def register(subparsers) -> None:
    from afm_ray.cli.common import add_model_trust_options

    parser = subparsers.add_parser(
        "predict", help="predictions/s of a model on CPU (or GPU), and matching time for N rotations",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a trained model: models:/NAME@ALIAS, runs:/RUN_ID/model or a folder")
    source.add_argument("--config", metavar="TRAIN.yaml",
                        help="build an untrained network from this training config (default: thesis DSH)")
    add_model_trust_options(parser)
    parser.add_argument("--tracking-uri", help="MLflow store for --model (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    parser.add_argument("--stacks", type=int, default=64, help="stacks predicted per timed pass (default 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="stacks per forward pass (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the median is reported (default 3)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device of the network (default cpu)")
    parser.add_argument("--rotations", type=int, default=500, help="rotations matched (default 500, as the thesis)")
    parser.add_argument("--molecule", default="C5H5N", help="ASE g2 molecule matched (default C5H5N, pyridine)")
    parser.add_argument("--opencl-device", help="OpenCL device of the simulator: auto | cpu | gpu | index | name")
    parser.add_argument("--no-match", action="store_true", help="only time predictions")
    parser.set_defaults(handler=run)


def _loaded_model(args):
    from afm_ray.models.packed import PackedOutputs
    from afm_ray.registry.loading import LoadedModel, load_model
    from afm_ray.recipe import TrainConfig, load_train_config

    if args.model:
        return load_model(args.model, args.tracking_uri, trust_pickle=args.trust_pickle, allowed_modules=args.allow_module)
    config = load_train_config(args.config) if args.config else TrainConfig()
    torch.manual_seed(0)
    network = config.build_network()
    packed = PackedOutputs(network, config.model.spec.output_names, config.model.name).eval()
    return LoadedModel(packed, config, f"untrained {config.model.name} ({args.config or 'thesis defaults'})")


def _median(call, repeats: int) -> float:
    call()  # warm-up: allocations, thread pools, kernel builds
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_predictions(predictor, n_stacks: int, repeats: int) -> None:
    from afm_ray.predict.inputs import AfmStack
    from afm_ray.predict.preprocess import prepare_stack

    model_input = predictor.model_input
    sim = predictor.model.config.sim
    rng = np.random.default_rng(0)
    shape = (len(model_input.tips), *sim.scan_pixels, sim.num_slices)
    stacks = [AfmStack(f"random {i}", rng.normal(size=shape).astype(np.float32), model_input.tips,
                       tuple(sim.scan_size_angstrom), "bench") for i in range(n_stacks)]
    prepared = [prepare_stack(stack, model_input) for stack in stacks]
    x = np.stack([p.x for p in prepared])
    prepare_seconds = _median(lambda: [prepare_stack(stack, model_input) for stack in stacks], repeats)
    network_seconds = _median(lambda: predictor.predict_arrays(x), repeats)
    total_seconds = _median(lambda: predictor.predict([prepare_stack(stack, model_input) for stack in stacks]), repeats)
    print(f"prediction: {n_stacks} stacks {shape[0]}×{shape[1]}×{shape[2]}×{shape[3]} → {model_input.n_slices} slices, "
          f"batch {predictor.batch_size}, device {predictor.device}")
    print(f"  preparation   {1e3 * prepare_seconds / n_stacks:8.2f} ms/stack")
    print(f"  network       {n_stacks / network_seconds:8.1f} stacks/s")
    print(f"  end to end    {n_stacks / total_seconds:8.1f} predictions/s", flush=True)


def g2_molecule(name: str):
    """The ASE g2 molecule ``name`` with the simple partial charges of ``afm-ray bench sim``."""
    from afm_ray.bench.sim import benchmark_molecules
    from afm_ray.molecules.molecule import Molecule

    try:
        (atoms,) = benchmark_molecules([name])
    except KeyError:
        raise InputError("--molecule", f"{name!r} is not in ASE's g2 set (e.g. C6H6, C5H5N, CH3COOH)") from None
    return Molecule.create(name, atoms.numbers, atoms.positions, atoms.get_initial_charges(), source="ase g2")


def bench_match(predictor, molecule, n_rotations: int, opencl_device: str | None) -> None:
    from afm_ray.samples.augment import AugmentConfig, augment
    from afm_ray.predict.inputs import AfmStack
    from afm_ray.predict.match import MatchSettings, evenly_spread_rotations, match_experiments, matching_sim_config
    from afm_ray.sim import ScanParams, Simulator

    rotations = evenly_spread_rotations(n_rotations)
    truth = n_rotations // 3
    sim_config = matching_sim_config(predictor.model.config.sim)
    simulator = Simulator(sim_config, device=opencl_device)
    df = simulator.simulate([molecule.rotated(rotations.rotations[truth])], tip=predictor.model.tips[0],
                            scan_params=[ScanParams.fixed(sim_config)])
    simulator.release()
    only_noise = AugmentConfig.model_validate({step: {"enabled": False}
                                               for step in ("scan_height", "normalization", "shift", "cutout")})
    noisy = augment(df, 0, only_noise).stacks
    experiment = AfmStack("experiment", noisy, predictor.model.tips[:1], tuple(sim_config.scan_size_angstrom), "bench")
    started = time.perf_counter()
    result = match_experiments(molecule, rotations, predictor, [experiment],
                               settings=MatchSettings(opencl_device=opencl_device))
    total = time.perf_counter() - started
    place = int(np.nonzero(result.rankings[0].order == truth)[0][0]) + 1
    print(f"matching: {molecule.id} ({molecule.n_atoms} atoms), {n_rotations} rotations, "
          f"{sim_config.scan_pixels[0]}×{sim_config.scan_pixels[1]} px × {sim_config.num_slices} slices, this process")
    print(f"  simulation    {result.simulation_seconds:8.2f} s  ({n_rotations / max(result.simulation_seconds, 1e-9):.1f} rotations/s)")
    print(f"  prediction    {result.prediction_seconds:8.2f} s  ({n_rotations / max(result.prediction_seconds, 1e-9):.1f} rotations/s)")
    print(f"  ranking       {result.ranking_seconds:8.2f} s")
    print(f"  total         {total:8.2f} s  (true rotation ranked {place} of {n_rotations})", flush=True)


def run(args: argparse.Namespace) -> int:
    from afm_ray.predict.predictor import Predictor

    for option in ("stacks", "batch_size", "repeats", "rotations"):
        if getattr(args, option) < 1:
            raise InputError(f"--{option.replace('_', '-')}", f"must be ≥ 1, got {getattr(args, option)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda requested but torch.cuda.is_available() is False")
    molecule = None if args.no_match else g2_molecule(args.molecule)
    model = _loaded_model(args)
    predictor = Predictor(model, device=args.device, batch_size=args.batch_size, use_ray=False)
    threads = f"{torch.get_num_threads()} torch threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"model {model.describe()}; {threads}, torch {torch.__version__}")
    bench_predictions(predictor, args.stacks, args.repeats)
    if args.no_match:
        return 0
    if "vdw_spheres" not in model.output_names:
        print(f"matching skipped: a {model.model_name} model predicts no vdW Spheres")
        return 0
    bench_match(predictor, molecule, args.rotations, args.opencl_device)
    return 0
