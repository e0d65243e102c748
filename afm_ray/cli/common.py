"""Help texts and console helpers shared by several command groups."""

from __future__ import annotations

import sys

TRACKING_HELP = "MLflow store for models:/ and runs:/ (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)"
TRUST_PICKLE_HELP = ("also load a model an older afm-ray registered pickled: that runs code stored in the artifact, "
                     "so only for a source you trust (then re-register it: afm-ray models reregister)")


def show_warnings(caught, kind: str = "note") -> None:
    for warning in caught:
        print(f"afm-ray: {kind}: {warning.message}", file=sys.stderr)
