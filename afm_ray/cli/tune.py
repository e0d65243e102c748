"""``afm-ray tune``: hyperparameter sweeps with Ray Tune (ASHA + Optuna), tracked in MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from afm_ray.console import VERBOSE_HELP, configure_console

DESCRIPTION = """\
Search the loss hyperparameters the thesis tuned by hand — γ, αn, βPL of the xyz focal/position
loss, the DSH/ES loss weights, the learning rate — with Ray Tune. Every trial runs the same Ray
Train loop as `afm-ray train`, sharing one pool of simulation actors; ASHA stops bad trials early
and Optuna proposes the next; a grid mode reproduces the thesis' γ study. Trials are compared on a
metric that means the same across loss settings (atom F1 for xyz, unweighted MSE for DSH/ES). The
sweep is an MLflow parent run with a child run per trial, a trial table and a plot of the objective
against each hyperparameter; the best trial's model is registered as NAME@champion.

examples:
  afm-ray tune --config tune/xyz.yaml
  afm-ray tune --config tune/xyz_gamma_grid.yaml            # thesis: γ ∈ {1.0, …, 2.0}
  afm-ray tune --config tune/dsh.yaml budget.num_samples=20 max_concurrent_trials=2
  afm-ray tune --config tune/xyz.yaml --resume             # continue an interrupted sweep
  afm-ray tune --config tune/xyz.yaml --resume-if-exists   # continue it, or start it (a RayJob)

Resuming never runs a finished trial again; a finished sweep only reports its champion again. A sweep
is resumed with the config it was started with: a changed search space, budget, scheduler or training
config is refused with the list of changed fields (choose another sweep name).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("tune", help="hyperparameter sweep (Ray Tune + MLflow parent/child runs)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="sweep YAML or preset name (tune/*.yaml: afm-ray configs list --kind tune; tune/README.md)")
    parser.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE", help="override sweep fields")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name")
    resume.add_argument("--resume-if-exists", action="store_true",
                        help="continue the sweep of this name if there is one, else start it (re-created RayJobs)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.set_defaults(handler=_tune)


def _tune(args) -> int:
    configure_console(verbose=args.verbose)
    from afm_ray.sweep import load_sweep_config, run_sweep

    outcome = run_sweep(load_sweep_config(args.config, args.overrides), resume=args.resume,
                        resume_if_exists=args.resume_if_exists)
    print(f"done: best {outcome.best_params} → {outcome.model_uri}")
    return 0
