"""``afm-ray train``: train a model on simulated data with Ray Train, tracked and registered in MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from afm_ray.console import VERBOSE_HELP, configure_console

DESCRIPTION = """\
Train DSH, ES or xyz on AFM stacks simulated on the fly by simulation actors (one OpenCL
simulator each, on GPUs when the config asks for them, on the CPU otherwise) and streamed through
Ray's object store to Ray Train workers (DDP). Every epoch re-simulates the training split with
fresh tilts, heights and noise; validation/test sets are simulated once and cached as Parquet.
Each run is an MLflow run (params, per-epoch metrics, figures) and ends with the model registered
as models:/NAME@ALIAS. Running the same config again resumes from the last checkpoint, in the same
MLflow run; only run.epochs, failure/figure settings, mlflow.alias and the pipeline's placement and
throughput settings may differ. Any other change is refused with the list of changed fields: use a
new run.name, or --allow-changed to continue the checkpoint in a new MLflow run linked to the old one.

Runs on a local Ray instance, or on a cluster through `ray job submit`; on a cluster of several nodes
give absolute paths on shared storage (relative ones are refused):
  ray job submit --address http://HEAD:8265 --working-dir . -- afm-ray train --config configs/dsh.yaml \
      data.database=/shared/qm9.parquet data.fixed_set_dir=/shared/fixed_sets run.storage_path=/shared/runs

examples:
  afm-ray train --config configs/quickstart.yaml
  afm-ray train --config configs/xyz.yaml run.epochs=10 pipeline.num_sim_actors=4 scaling.num_workers=2
  afm-ray train --config configs/dsh.yaml data.split=dataset2 data.database=data/dataset2.parquet
  afm-ray train --config configs/quickstart.yaml run.epochs=6 'loss.dsh_weights=[10, 0.3, 0.2]' --allow-changed
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model (Ray Train + simulation actors + MLflow)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="training config: a YAML file or a preset name (quickstart, dsh, …: afm-ray configs list); defaults = thesis values")
    parser.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE",
                        help="override config fields, e.g. run.epochs=3 optimizer.learning_rate=5e-4")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--allow-changed", action="store_true",
                        help="resume a run folder started with another config: its checkpoint continues in a new "
                             "MLflow run tagged afm_ray.resumed_from=<old run id> (default: refuse, listing the "
                             "changed fields)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.set_defaults(handler=_train)


def _train(args) -> int:
    from afm_ray.recipe import load_train_config

    configure_console(verbose=args.verbose)
    config = load_train_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        return 0
    from afm_ray.train.trainer import run_training

    print(summary_line(config), flush=True)
    outcome = run_training(config, allow_changed=args.allow_changed)
    print(f"done: {outcome.model_uri}  checkpoint {outcome.checkpoint_path}")
    return 0


def summary_line(config) -> str:
    """One line: what will be trained, on what, for how long, with how many actors and workers."""
    sim, actors, workers = config.sim, config.pipeline.num_sim_actors, config.scaling.num_workers
    return (f"training {config.model.name} on split {config.data.split}: {config.run.epochs} epochs × "
            f"batch {config.run.batch_size}, {'+'.join(config.model.spec.tips)} scans {sim.scan_pixels[0]}×"
            f"{sim.scan_pixels[1]} px × {config.input_slices} slices, {actors} simulation "
            f"actor{'s' * (actors != 1)} → {workers} training worker{'s' * (workers != 1)}")
