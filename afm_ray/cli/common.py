"""Help texts and console helpers shared by several command groups."""

from __future__ import annotations

import sys

TRACKING_HELP = "MLflow store for models:/ and runs:/ (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)"
TRUST_PICKLE_HELP = ("also load a model an older afm-ray registered pickled: that runs code stored in the artifact, "
                     "so only for a source you trust (then re-register it: afm-ray models reregister)")
ALLOW_MODULE_HELP = ("a plugin model's module (the model's config names it as model.module) that loading the model "
                     "may import; repeat for several, or list them in $AFM_RAY_TRUSTED_MODULES (comma-separated). "
                     "Without it a model naming a module is refused: an artifact never chooses code")


def add_model_trust_options(parser) -> None:
    """``--trust-pickle`` and ``--allow-module NAME`` on a command that loads a trained model."""
    parser.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    parser.add_argument("--allow-module", action="append", default=[], metavar="NAME", help=ALLOW_MODULE_HELP)


def show_warnings(caught, kind: str = "note") -> None:
    for warning in caught:
        print(f"afm-ray: {kind}: {warning.message}", file=sys.stderr)
