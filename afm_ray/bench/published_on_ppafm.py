"""``afm-ray bench published-on-ppafm``: the published ASD-AFM weights on ppafm's own data, scored by afm-ray's
evaluation code: the baseline row of the README's published-model table.

    afm-ray bench published-on-ppafm --model models:/asdafm-dsh-light@published \\
        --tracking-uri sqlite:///mlruns.db data.max_eval_molecules=48 data.eval_rotations_per_molecule=2 [--augmented]

The molecules and views are those ``afm-ray evaluate --split val --config configs/published_asdafm.yaml`` with
the same overrides scores (the split's first val molecules, thesis Eq. 25 rotations). The scans and
descriptors are ppafm's (ppafm >= 0.4, a test dependency): its OpenCL ``AFMulator`` and ``ml.AuxMap``
driven by its ``InverseAFMtrainer`` with the published generator's settings (ASD-AFM ``generate_data.py``:
CO quadrupole tip, probe 4.0 Å below the tip, 10 slices of 19 heights at 10 Δf steps, 0.1 Å apart,
distAbove 5.0 Å, 128 × 128 px over 16 × 16 Å; Atomic Disks ``diskMode='sphere'``, zmin = zmax_s = −1.2,
vdW Spheres Rpp −0.5, zmin −1.5, Height Map iso 0.1 eV/Å, zmin −2). ``--augmented`` adds the generator's
tilt (0.5 Å) and distance jitter (± 0.25 Å) through ppafm's own ``randomize_tip`` / ``randomize_distance``
and afm-ray's noise, shifts and cutouts of the preset; without it the scans are clean, as ``--clean``.

ppafm's vdW Spheres have their zero at the molecule's top, the published model's output (a ReLU) 1.5 Å
below it: the maps are shifted by the 1.5 Å cut depth, as ``afm_ray.descriptors.spheres`` documents
(``tests/unit/descriptors/test_descriptors_vs_ppafm.py`` checks all three conventions against ppafm).

Then exactly what ``afm-ray evaluate`` does after simulating: each slice normalised to mean 0, std 1,
the network's forward pass, and :class:`afm_ray.train.configured_model.Evaluation` (per-descriptor MSE beside
correlation, the loss with the config's weights and with the thesis'). Nothing is logged to MLflow.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from afm_ray.bench.ppafm_reference import init_ppafm

VDW_SPHERES_CUT_DEPTH_ANGSTROM = 1.5
PROBE_LENGTH_ANGSTROM = 4.0
DIST_ABOVE_ANGSTROM = 5.0


def ppafm_generator(molecules: list[np.ndarray], augmented: bool, seed: int):
    """ppafm's InverseAFMtrainer over ``molecules`` ((N, 5) arrays: x, y, z Å, charge e, Z), one sample a batch."""
    AFMulator = init_ppafm()
    from ppafm.ml.AuxMap import AtomicDisks, HeightMap, vdwSpheres
    from ppafm.ml.Generator import InverseAFMtrainer

    np.random.seed(seed)  # ppafm's randomize_tip / randomize_distance draw from NumPy's global state
    afmulator = AFMulator(pixPerAngstrome=10, scan_dim=(128, 128, 19), scan_window=((2.0, 2.0, 5.0), (18.0, 18.0, 6.9)),
                          iZPP=8, df_steps=10, tipR0=[0.0, 0.0, PROBE_LENGTH_ANGSTROM], npbc=(0, 0, 0))
    window = ((2.0, 2.0), (18.0, 18.0))
    aux_maps = [AtomicDisks(scan_dim=(128, 128), scan_window=window, zmin=-1.2, zmax_s=-1.2, Rpp=-0.5,
                            diskMode="sphere"),
                vdwSpheres(scan_dim=(128, 128), scan_window=window, zmin=-1.5, Rpp=-0.5),
                HeightMap(afmulator.scanner, zmin=-2.0, iso=0.1)]

    class Trainer(InverseAFMtrainer):
        def on_sample_start(self):
            if augmented:
                self.randomize_tip(max_tilt=0.5)
                self.randomize_distance(delta=0.25)

    trainer = Trainer(afmulator, aux_maps, paths=[], batch_size=1, distAbove=DIST_ABOVE_ANGSTROM)
    trainer.molecules = molecules
    return trainer


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "published-on-ppafm", help="the published ASD-AFM weights scored on ppafm's own data",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/asdafm-dsh-light@published")
    parser.add_argument("--config", type=Path, default=Path("configs/published_asdafm.yaml"),
                        help="the data preset the scores use (default configs/published_asdafm.yaml)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--augmented", action="store_true", help="tilt, distance jitter, noise, shifts, cutouts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore")

    import torch

    from afm_ray.samples.augment import augment
    from afm_ray.pipeline.sources import load_split_samples
    from afm_ray.registry.loading import load_model
    from afm_ray.recipe import load_train_config
    from afm_ray.evaluation.registered import EvaluationReport, check_compatible, clean_scans, loss_descriptions
    from afm_ray.train.configured_model import build_loss, build_thesis_loss, compute_loss, evaluation_for

    config = load_train_config(args.config, args.overrides)
    loaded = load_model(args.model, args.tracking_uri or config.mlflow.tracking_uri)
    check_compatible(loaded.config, config, args.model)
    augment_config = (config if args.augmented else clean_scans(config)).augment
    samples = load_split_samples(config.sample_settings, (args.split,))[args.split]
    views = [samples.molecule(index) for index in range(len(samples))]
    trainer = ppafm_generator([np.column_stack([view.positions, view.charges, view.numbers]) for view in views],
                              args.augmented, args.seed)

    spec, network = config.model.spec, loaded.packed.network.eval()
    loss, thesis_loss = build_loss(config), build_thesis_loss(config)
    evaluation = evaluation_for(config)
    started = time.perf_counter()
    for index, (afm, maps, _) in enumerate(trainer):
        stacks = augment(afm[0].astype(np.float32), (args.seed, index), augment_config).stacks  # (1, 128, 128, 10)
        disks, spheres, heights = (np.asarray(one, dtype=np.float32) for one in maps)
        targets = {"atomic_disks": disks, "vdw_spheres": spheres + VDW_SPHERES_CUT_DEPTH_ANGSTROM, "height_map": heights}
        tensors = {name: torch.from_numpy(targets[name]) for name in spec.targets}
        with torch.no_grad():
            outputs = tuple(output.float() for output in network(torch.from_numpy(stacks)[:, None]))
        evaluation.update(outputs, tensors, compute_loss(spec, loss, outputs, tensors),
                          compute_loss(spec, thesis_loss, outputs, tensors))
    metrics = {f"{args.split}_samples": float(len(views)), **evaluation.result(args.split)}
    report = EvaluationReport(args.model, config.model.name, config.data.split, args.split, len(views), metrics,
                              "none (not logged)", not args.augmented, {}, *loss_descriptions(config))
    print(f"ppafm's data ({'augmented' if args.augmented else 'clean'}), {time.perf_counter() - started:.0f} s:")
    print("\n".join(report.lines()))
    print(f"  loss {metrics[f'{args.split}_loss']:.4g} ({report.loss_settings}), "
          f"{metrics[f'{args.split}_loss_thesis_weights']:.4g} ({report.thesis_loss_settings}, the thesis')")
    return 0

