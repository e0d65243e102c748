"""``afm-ray evaluate``: score a registered model on a config's fixed validation or test set."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Evaluate any model (registered, a run's model, or a folder) on the fixed validation or test set
of a training config: the set is simulated once by the config's simulation actors (cached like
training's fixed sets), the model predicts it, and the figures are logged to MLflow as an
evaluation run with prediction figures and printed beside the thesis' Table 6 loss.

By default the set is made like training's validation set, with the config's probe tilt, height
jitter, noise, shifts and cutouts; --clean leaves those out (ideal scans).

DSH / ES: per-descriptor MSE beside the Pearson correlation of prediction and reference (all
pixels of all samples). xyz: precision/recall curves, F1 and position error. Every model: the loss
twice, weighted as the config says (<split>_loss) and with the thesis' settings
(<split>_loss_thesis_weights, e.g. DSH 20, 0.3, 0.2): only the latter compares with Table 6 when
the config's weights differ (configs/published_asdafm.yaml: ASD-AFM's 20, 0.2, 0.1).

The model's own config says what input it needs (model, slices, pixels); the evaluation config
says how the data are made, so one model can be scored on other data settings (lines starting
"data differs" list what changed).

examples:
  afm-ray evaluate --model models:/afm-dsh@current --config configs/dsh.yaml
  afm-ray evaluate --model models:/asdafm-dsh-light@published --config configs/published_asdafm.yaml --split val \\
      --clean data.max_eval_molecules=12 data.eval_rotations_per_molecule=2
"""


def register(subparsers) -> None:
    from afm_ray.cli.common import add_model_trust_options

    parser = subparsers.add_parser("evaluate", help="score a registered model on a config's fixed val/test set",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, or a model folder")
    parser.add_argument("--config", type=Path, required=True, help="training config whose data to evaluate on: a YAML file or a preset name")
    parser.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE",
                        help="override config fields, e.g. data.max_eval_molecules=50")
    parser.add_argument("--split", default="test", choices=("val", "test"),
                        help="which fixed set of the config's data split (default test)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the config's, $MLFLOW_TRACKING_URI, "
                                               "else sqlite:///mlruns.db)")
    parser.add_argument("--clean", action="store_true",
                        help="score on clean scans: no probe tilt or start-distance jitter, no noise, shifts or "
                             "cutouts (slice choice and normalisation stay)")
    parser.add_argument("--device", default="cpu", help="torch device of the network: cpu (default) or cuda")
    add_model_trust_options(parser)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    from afm_ray.recipe import load_train_config
    from afm_ray.evaluation import evaluate_registered

    config = load_train_config(args.config, args.overrides)
    report = evaluate_registered(args.model, config, args.split, args.tracking_uri, args.device, clean=args.clean,
                                 trust_pickle=args.trust_pickle, allowed_modules=args.allow_module)
    print("\n".join(report.lines()))
    return 0
