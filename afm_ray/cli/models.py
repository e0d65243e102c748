"""``afm-ray models list|show|import-asdafm|reregister``: the MLflow model registry that training fills.

See :mod:`afm_ray.registry` for the library behind these commands.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from afm_ray.cli.common import TRACKING_HELP, add_model_trust_options, show_warnings

MODELS_EPILOG = """\
examples:
  afm-ray models list
  afm-ray models show afm-dsh --tracking-uri sqlite:///mlruns.db
  afm-ray models import-asdafm ../shared/asd-afm/model_light.h5 --name asdafm-dsh-light
  afm-ray models reregister models:/afm-dsh@current --trust-pickle   # a model an older afm-ray pickled
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list registered models, or show one's versions, aliases, training config and metrics",
        description="Browse the MLflow model registry that afm-ray train registers into, or import published weights.",
        epilog=MODELS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    listing = actions.add_parser("list", help="registered models: architecture, versions, aliases")
    listing.add_argument("--tracking-uri", help=TRACKING_HELP)
    listing.set_defaults(handler=run_models_list)
    show = actions.add_parser("show", help="one model: every version with aliases, training config summary and run metrics")
    show.add_argument("name", help="registered model name (e.g. afm-dsh)")
    show.add_argument("--tracking-uri", help=TRACKING_HELP)
    show.set_defaults(handler=run_models_show)
    imported = actions.add_parser(
        "import-asdafm", help="register the published ASD-AFM DSH weights (Keras .h5) as an afm-ray model",
        description="Read the published ASD-AFM DSH Keras weights (model_light.h5 / model_heavy.h5, MIT) into "
                    "afm-ray's DSH network (replicate padding), log it to MLflow with its signature, the data "
                    "preset it expects as its config, its preprocessing and provenance, and register it as "
                    "models:/NAME@ALIAS. predict, match, evaluate and models show then use it like a trained model.",
        epilog="example:\n  afm-ray models import-asdafm ../shared/asd-afm/model_light.h5 --name asdafm-dsh-light\n"
               "  afm-ray evaluate --model models:/asdafm-dsh-light@published --config configs/published_asdafm.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    imported.add_argument("file", metavar="FILE.h5", help="Keras HDF5 weights of the ASD-AFM DSH model")
    imported.add_argument("--name", required=True, help="registered model name")
    imported.add_argument("--alias", default="published", help="alias set on the new version (default published)")
    imported.add_argument("--config", type=Path, default=Path("published_asdafm"),
                          help="the data preset the model expects, recorded as its config: a YAML file or a "
                               "preset name (default published_asdafm, shipped: afm-ray configs show published_asdafm)")
    imported.add_argument("--tracking-uri", help=TRACKING_HELP)
    imported.set_defaults(handler=run_models_import_asdafm)

    reregister = actions.add_parser(
        "reregister", help="register a model that an older afm-ray pickled again, in the safe format (new version)",
        description="Load a pickled registered model (this runs code stored in its artifact: --trust-pickle says "
                    "you trust its source) and register it again as a new version of the same name in MLflow's "
                    "pt2 format, which loads without unpickling. Aliases of the old version move to the new one.")
    reregister.add_argument("model", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    add_model_trust_options(reregister)
    reregister.add_argument("--tracking-uri", help=TRACKING_HELP)
    reregister.set_defaults(handler=run_models_reregister)
    parser.set_defaults(handler=lambda args: parser.print_help() or 1)


def run_models_list(args: argparse.Namespace) -> int:
    from afm_ray.recipe import resolve_tracking_uri
    from afm_ray.registry.catalog import list_models

    models = list_models(args.tracking_uri)
    if not models:
        print(f"no registered models in {resolve_tracking_uri(args.tracking_uri)}")
        return 0
    print(f"{'name':<32} {'architecture':<12} {'versions':>8} {'latest':>6}  aliases")
    for model in models:
        aliases = ", ".join(f"@{alias} → v{version}" for alias, version in sorted(model.aliases.items())) or "-"
        print(f"{model.name:<32} {model.architecture or '?':<12} {model.n_versions:>8} {model.latest_version or '-':>6}  {aliases}")
    return 0


def run_models_show(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from afm_ray.registry.catalog import describe_model

    model = describe_model(args.name, args.tracking_uri)
    aliases = ", ".join(f"@{alias} → v{version}" for alias, version in sorted(model.aliases.items())) or "none"
    print(f"{model.name}  architecture {model.architecture or '?'}, {model.n_versions} version(s), aliases: {aliases}")
    for version in reversed(model.versions):
        created = datetime.fromtimestamp(version.created_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        tags = "".join(f" @{alias}" for alias in version.aliases)
        print(f"\nversion {version.version}{tags}  ({version.status}, registered {created}, run {version.run_id or '-'})")
        print(f"  load with: models:/{model.name}/{version.version}"
              + "".join(f"  or  models:/{model.name}@{alias}" for alias in version.aliases))
        for key, value in version.config_summary.items():
            print(f"  {key + ':':<10} {value}")
        shown = {k: v for k, v in version.metrics.items() if k.startswith(("test_", "val_"))} or version.metrics
        if shown:
            print("  metrics:  " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    return 0


def run_models_import_asdafm(args: argparse.Namespace) -> int:
    from afm_ray.recipe import load_train_config
    from afm_ray.registry.published import import_asdafm

    config = load_train_config(args.config)
    version, run_id = import_asdafm(args.file, args.name, args.alias, config, str(args.config), args.tracking_uri)
    print(f"registered models:/{args.name}@{args.alias} (version {version}, MLflow run {run_id}) from {args.file}")
    return 0


def run_models_reregister(args: argparse.Namespace) -> int:
    from afm_ray.registry.reregister import reregister_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        version, run_id = reregister_model(args.model, args.tracking_uri, trust_pickle=args.trust_pickle,
                                           allowed_modules=args.allow_module)
    show_warnings(caught, "warning")
    name = args.model[len("models:/"):].split("@")[0].split("/")[0]
    print(f"registered {args.model} again as models:/{name}/{version} (pt2, MLflow run {run_id})")
    return 0
