"""``afm-ray predict`` and ``afm-ray match``: using trained models (``afm-ray models``: :mod:`afm_ray.cli.models`).

See :mod:`afm_ray.predict` for the library behind these commands.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from afm_ray.cli.common import TRACKING_HELP, add_model_trust_options, show_warnings
from afm_ray.errors import InputError

MODEL_HELP = ("models:/NAME@ALIAS (e.g. models:/afm-dsh@current), models:/NAME/VERSION, runs:/RUN_ID/model, "
              "or a local MLflow model / training checkpoint folder")
SLICES_HELP = ("which K slices (the model's count) to feed, z far → close: auto (default: K evenly spaced among "
               "the closest W, W = the training window, thesis 15), closest (the last K), even (K evenly "
               "spaced over the stack), or indices like 0,2,4,6,8,10")

PREDICT_EPILOG = """\
inputs (each --input is one file, or a comma-joined group making one stack):
  .npz   key df or stack: (nx, ny, nz), (N, nx, ny, nz) or (N, C, nx, ny, nz), z far → close;
         optional scan_size_angstrom (2,), tip / tips, ids. `afm-ray simulate` output works as is.
  .npy   the array alone (tip CO, scan = the model's window assumed)
  .3ds   Nanonis grid of Δf(z) curves (sweep Z); scan size from the header
  .sxm   Nanonis constant-height Δf images, one per slice: far.sxm,mid.sxm,close.sxm
  ES models take CO and Xe: a .npz with tips [CO, Xe], or co.npz,xe.npz (each with its tip).

preprocessing (as training, minus noise/shifts/cutouts): slice choice (--slices), xy resampling to
the model's pixel size (refused beyond --max-resample, default 2×) with centre crop/pad to its
window, per-slice normalisation.

outputs in --out: NAME.npz (every output map, the network input, slice indices), NAME.png, and for
xyz models NAME.xyz (extended xyz, per-atom confidence; x, y from the window centre, z from the
top atom, Å); summary.json.

examples:
  afm-ray predict --model models:/afm-dsh@current --input stacks.npz --out predictions/
  afm-ray predict --model models:/afm-xyz@current --input exp/z_grid.3ds --threshold 0.3 --out xyz/
  afm-ray predict --model runs/dsh-dataset1/checkpoint_000049 --input a.npz b.npy --slices closest --out p/
"""

MATCH_EPILOG = """\
How it works (thesis 4.1, Fig. 17): --rotations viewing directions spread evenly on a sphere (each
turned --azimuths times about the tip axis) are simulated with the model's simulator settings
(no tilt), the DSH model predicts vdW Spheres for them and for each experiment, and rotations are
ranked by normalised cross-correlation, the simulation allowed to slide by up to --max-shift Å.

Descriptor mode (--model descriptor): no simulation and no network; simulated rotations get their
exact vdW Spheres and each --experiment is a molecule file (.xyz) whose vdW Spheres are computed
directly. Only meaningful for synthetic checks of the rotation search; the window comes from
--sim-config.

outputs in --out: ranking.csv (every rotation per experiment, best first, with NCC, shift in Å,
direction and angle to the best), NAME_best.xyz (the best-matching geometry, scan frame, Å, with
charges), match.png (experiment slices, predictions, best simulation and its geometry),
rotations.npz (rotations and simulated vdW Spheres, for reuse).

examples:
  afm-ray match --molecule camphor.xyz --experiment exp1.npz exp2.npz --model models:/afm-dsh@current --out match/
  afm-ray match --molecule camphor.xyz --experiment e.3ds --model models:/afm-dsh@current --rotations 200 --azimuths 12 --out m/
"""


def register(subparsers) -> None:
    _register_predict(subparsers)
    _register_match(subparsers)


def _add_input_options(parser) -> None:
    parser.add_argument("--slices", default="auto", metavar="auto|closest|even|I,J,…", help=SLICES_HELP)
    parser.add_argument("--max-resample", type=float, default=2.0, metavar="FACTOR",
                        help="largest xy rescaling to the model's pixel size, either way (default 2)")
    parser.add_argument("--channel", help="Nanonis channel holding Δf (default: the first with unit Hz or 'Freq' in its name)")
    parser.add_argument("--tracking-uri", help=TRACKING_HELP)
    parser.add_argument("--device", default="cpu", help="torch device of the network here: cpu (default) or cuda")
    add_model_trust_options(parser)


def _add_ray_options(parser, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--ray", action="store_true",
                       help=f"connect to Ray ($RAY_ADDRESS or a local instance) and run {what} there")
    group.add_argument("--local", action="store_true", help="never use Ray, even when it is already connected")


def _register_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="predict descriptors / atoms from AFM stacks (simulated or experimental) with a trained model",
        description="Load a trained model from the MLflow registry (or a folder), read AFM stacks, preprocess them "
                    "as in training, predict, and write maps (.npz), atoms (.xyz, xyz models) and figures (.png).",
        epilog=PREDICT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--input", required=True, nargs="+", metavar="FILE", help=".npz, .npy, .3ds, or .sxm[,…] (see below)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    _add_input_options(parser)
    parser.add_argument("--threshold", type=float, default=0.5, help="xyz: atom confidence threshold 0–1 (default 0.5)")
    parser.add_argument("--nms-radius", type=float, default=0.5, help="xyz: non-maximum suppression radius in Å (default 0.5; 0 = off)")
    parser.add_argument("--batch-size", type=int, default=16, help="stacks per forward pass (default 16)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures (faster for many stacks)")
    _add_ray_options(parser, "batches as Ray tasks (one GPU each when the cluster has GPUs)")
    parser.set_defaults(handler=run_predict)


def _register_match(subparsers) -> None:
    parser = subparsers.add_parser(
        "match", help="find the orientation of a known molecule in experiments: simulate rotations, compare predicted vdW Spheres",
        description="Rank evenly spread rotations of a known molecule against experimental AFM stacks by the "
                    "cross-correlation of predicted vdW Spheres (thesis Fig. 17).",
        epilog=MATCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecule", required=True, metavar="FILE.xyz",
                        help="the imaged molecule: xyz with a charge column (or extended xyz / SDF with charges)")
    parser.add_argument("--charges", choices=("gasteiger", "mmff"), help="compute charges with RDKit when the file has none")
    parser.add_argument("--experiment", required=True, nargs="+", metavar="FILE",
                        help="experimental stacks, as predict --input (descriptor mode: molecule files)")
    parser.add_argument("--model", required=True, help=MODEL_HELP + ", or 'descriptor' (see below)")
    parser.add_argument("--rotations", type=int, default=500, help="viewing directions on a Fibonacci sphere (default 500)")
    parser.add_argument("--azimuths", type=int, default=1, help="turns about the tip axis per direction (default 1 = none)")
    parser.add_argument("--max-shift", type=float, default=2.0, metavar="ANGSTROM",
                        help="largest lateral offset between experiment and simulation tried, Å (default 2)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--top", type=int, default=5, help="best rotations printed per experiment (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="rotations per simulator call (default 32)")
    parser.add_argument("--actors", type=int, help="simulation actors when Ray is used (default: the model's pipeline.num_sim_actors)")
    parser.add_argument("--sim-config", metavar="sim.yaml", help="descriptor mode: simulator config giving the window (default thesis)")
    parser.add_argument("--opencl-device", help="OpenCL device of the local simulator (auto | cpu | gpu | index | name)")
    _add_input_options(parser)
    _add_ray_options(parser, "the simulations on simulation actors")
    parser.set_defaults(handler=run_match)


# -- helpers --------------------------------------------------------------------------------------
def _ray_choice(args) -> bool | None:
    """``--local``: False (never Ray). ``--ray``: connect ($RAY_ADDRESS or a local instance), then None.
    Default None: Ray is used only when it is already connected (and for predict, only for more than one batch)."""
    if args.local:
        return False
    if args.ray:
        from afm_ray.pipeline.cluster import ensure_ray

        ensure_ray()
    return None


def _read_inputs(items, channel) -> list:
    from afm_ray.predict.inputs import read_stacks, with_name

    stacks, seen = [], {}
    for item in items:
        for stack in read_stacks(item, channel):
            count = seen.get(stack.name, 0)
            seen[stack.name] = count + 1
            stacks.append(with_name(stack, f"{stack.name}_{count + 1}") if count else stack)
    return stacks


def _check_output_folder(out: str) -> Path:
    """``--out`` as a folder that can be created: refused up front when it or a parent is a file, so that
    a run never fails after its work with a partial output."""
    path = Path(out)
    existing = next((folder for folder in (path, *path.parents) if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        raise InputError("--out", f"{existing} exists and is not a folder")
    return path


def _prepare_settings(args):
    from afm_ray.predict.preprocess import PrepareSettings, parse_slice_choice

    if args.max_resample < 1:
        raise InputError("--max-resample", f"must be ≥ 1 (a factor either way), got {args.max_resample}")
    return PrepareSettings(slices=parse_slice_choice(args.slices), max_resample=args.max_resample)


def _load_model(args):
    """``--model`` loaded; a pickled model only with ``--trust-pickle`` (and then with a warning), a plugin
    model only with ``--allow-module``."""
    from afm_ray.registry.loading import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(args.model, args.tracking_uri, trust_pickle=args.trust_pickle,
                           allowed_modules=args.allow_module)
    show_warnings(caught, "warning")
    return model


# -- predict --------------------------------------------------------------------------------------
def run_predict(args: argparse.Namespace) -> int:
    from afm_ray.predict.predictor import Predictor, write_prediction, write_summary
    from afm_ray.predict.preprocess import ModelInput, prepare_stack

    out = _check_output_folder(args.out)
    prepare = _prepare_settings(args)
    stacks = _read_inputs(args.input, args.channel)  # unreadable input fails before the model loads
    model = _load_model(args)
    print(f"model {model.describe()}", flush=True)
    predictor = Predictor(model, device=args.device, batch_size=args.batch_size, threshold=args.threshold,
                          nms_radius=args.nms_radius, use_ray=_ray_choice(args))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model_input = ModelInput.from_config(model.config)
        prepared = [prepare_stack(stack, model_input, prepare) for stack in stacks]
    show_warnings(caught)
    started = time.perf_counter()
    predictions = predictor.predict(prepared)
    seconds = time.perf_counter() - started
    records = []
    for prediction, stack in zip(predictions, stacks):
        written = write_prediction(prediction, out, predictor, figure=not args.no_figures)
        record = {"name": stack.name, "source": stack.source, "slice_indices": prediction.stack.slice_indices.tolist(),
                  "scan_size_angstrom": prediction.stack.source_scan_size_angstrom, "zoom": list(prediction.stack.zoom),
                  "files": {k: str(v) for k, v in written.items()}}
        if prediction.atoms is not None:
            record["atoms"] = len(prediction.atoms)
        records.append(record)
        zoom = prediction.stack.zoom
        resampled = f", resampled ×{zoom[0]:.3g}, ×{zoom[1]:.3g}" if zoom != (1.0, 1.0) else ""
        atoms = f", {len(prediction.atoms)} atoms ≥ {args.threshold:g}" if prediction.atoms is not None else ""
        print(f"{stack.name}: slices {prediction.stack.slice_indices.tolist()}{resampled}{atoms} → {written['npz']}")
    write_summary(out / "summary.json", predictor, records)
    print(f"predicted {len(predictions)} stack(s) in {seconds:.2f} s; results in {out}")
    return 0


# -- match ----------------------------------------------------------------------------------------
def run_match(args: argparse.Namespace) -> int:
    from afm_ray.descriptors.geometry import ScanWindow
    from afm_ray.molecules.io import read_molecule_file
    from afm_ray.predict.match import (MatchSettings, evenly_spread_rotations, match_experiments, ranked_rotations,
                                       simulation_actors, write_match_outputs)
    from afm_ray.predict.predictor import Predictor
    from afm_ray.sim import SimConfig

    for option in ("rotations", "azimuths", "batch_size", "top"):
        if getattr(args, option) < 1:
            raise InputError(f"--{option.replace('_', '-')}", f"must be ≥ 1, got {getattr(args, option)}")
    if args.actors is not None and args.actors < 1:
        raise InputError("--actors", f"must be ≥ 1, got {args.actors}")
    if args.max_shift < 0:
        raise InputError("--max-shift", f"must be ≥ 0 Å, got {args.max_shift}")
    _check_output_folder(args.out)
    prepare = _prepare_settings(args)
    molecule = _single_molecule(read_molecule_file(args.molecule, charges=args.charges), args.molecule)
    rotations = evenly_spread_rotations(args.rotations, args.azimuths)
    predictor, window, actors = None, None, 0
    stacks, experiment_molecules = [], []
    if args.model.strip().lower() == "descriptor":
        sim_config = SimConfig.from_yaml(args.sim_config) if args.sim_config else SimConfig()
        window = ScanWindow.from_sim_config(sim_config)
        experiment_molecules = [_single_molecule(read_molecule_file(path, charges=args.charges), path)
                                for path in args.experiment]
        print(f"descriptor mode: exact vdW Spheres on {window.width:g}×{window.height:g} Å, {window.nx}×{window.ny} px")
    else:
        if args.sim_config:
            raise InputError("--sim-config", "only applies with --model descriptor (a model brings its simulator settings)")
        stacks = _read_inputs(args.experiment, args.channel)
        model = _load_model(args)
        print(f"model {model.describe()}", flush=True)
        use_ray = _ray_choice(args)
        predictor = Predictor(model, device=args.device, use_ray=use_ray)
        actors = simulation_actors(predictor, args.actors, use_ray)
    settings = MatchSettings(max_shift_angstrom=args.max_shift, batch_size=args.batch_size, actors=actors,
                             opencl_device=args.opencl_device, prepare=prepare)
    where = f"{actors} simulation actor(s)" if actors else "this machine"
    print(f"matching {len(stacks) or len(experiment_molecules)} experiment(s) against {len(rotations)} rotations "
          f"({args.rotations} directions × {args.azimuths} azimuths) of {molecule.id} ({molecule.n_atoms} atoms) on {where}",
          flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = match_experiments(molecule, rotations, predictor, stacks, experiment_molecules, window, settings)
    show_warnings(caught)
    written = write_match_outputs(args.out, molecule, result, predictor, settings)

    for ranking in result.rankings:
        print(f"\n{ranking.name}: best rotations (rank, rotation, ncc, shift x/y Å, direction facing the tip)")
        for row in ranked_rotations(result, ranking, args.top):
            direction = ", ".join(f"{v:+.2f}" for v in row.direction)
            print(f"  {row.place:>3}  {row.rotation:>5}  {row.ncc:.4f}  {row.shift_angstrom[0]:+.2f} "
                  f"{row.shift_angstrom[1]:+.2f}  ({direction})"
                  + (f" azimuth {row.azimuth_deg:g}°" if args.azimuths > 1 else ""))
    print(f"\nsimulated {len(rotations)} rotations in {result.simulation_seconds:.1f} s, predicted in "
          f"{result.prediction_seconds:.1f} s, ranked in {result.ranking_seconds:.2f} s; "
          f"wrote {written.ranking}, {written.figure}")
    return 0


def _single_molecule(molecules: list, path) -> object:
    if len(molecules) != 1:
        raise InputError(str(path), f"expected one molecule, found {len(molecules)}")
    return molecules[0]
