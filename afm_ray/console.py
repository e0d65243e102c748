"""What ``afm-ray train`` and ``afm-ray tune`` print: afm-ray's own lines, or (``--verbose``) Ray's and MLflow's too.

Quiet (the default of those commands): the console shows the config summary, the URLs (MLflow, Ray
dashboard), one line per epoch, the result and errors. Through documented settings only:

- ``ray.init(log_to_driver=False)``: the output of Ray's workers and actors (Ray Train's report dicts,
  checkpoint paths, "Moving model to device", core-worker log lines) is not forwarded to this process;
  it stays in Ray's log files (``/tmp/ray/session_latest/logs``). The epoch lines therefore reach the
  console from the driver (:mod:`afm_ray.train.progress`), not from the worker's stdout.
- ``ray.init(logging_level=ERROR)``: the ``ray`` logger of this process (its start-up notices, Tune's
  driver-side warnings) shows errors only; afm-ray prints the dashboard URL itself.
- the ``mlflow`` logger at WARNING (unless ``MLFLOW_LOGGING_LEVEL`` says otherwise): no "Creating initial
  MLflow database tables"; :func:`quiet_mlflow_notices` also drops MLflow's registration notices.

Other commands (and Python callers) keep Ray's and MLflow's defaults unless they call :func:`configure_console`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
import sys
from collections.abc import Iterator

VERBOSE_HELP = ("also show Ray's and MLflow's console output (worker and Train controller logs, Ray Train reports, "
                "MLflow notices); Ray's log files under /tmp/ray/session_latest/logs keep it either way")
"""``--verbose`` of ``afm-ray train`` and ``afm-ray tune``."""

_verbose = True
"""Whether Ray and MLflow print to this process's console as they do by default."""


def configure_console(verbose: bool) -> None:
    """Set this process's console to quiet (``verbose=False``) or to Ray's and MLflow's defaults; call before Ray starts."""
    global _verbose
    _verbose = verbose
    if verbose:
        return
    importlib.import_module("mlflow")  # sets its loggers' level on import (MLFLOW_LOGGING_LEVEL, default INFO)
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):  # a level the user chose stays
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def is_verbose() -> bool:
    """Whether Ray and MLflow print as they do by default (``--verbose``, or :func:`configure_console` not called)."""
    return _verbose


def ray_init_options() -> dict:
    """``ray.init`` keyword arguments for this console (see the module docstring)."""
    if _verbose:
        return {"log_to_driver": True}
    return {"log_to_driver": False, "logging_level": logging.ERROR}


MLFLOW_NOTICES = re.compile(r"(Successfully registered model '|Created version '|Registered model '.*' already exists)")
"""The lines MLflow prints to stderr, at no log level, when a model is registered."""


@contextlib.contextmanager
def quiet_mlflow_notices() -> Iterator[None]:
    """While quiet, drop MLflow's registration notices (:data:`MLFLOW_NOTICES`) from what the block writes to stderr.

    MLflow prints them through its event stream, which its own model logging switches back on, so
    stderr is captured for the block and written out afterwards without them (warnings stay).
    """
    if _verbose:
        yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        sys.stderr.write("".join(line for line in captured.getvalue().splitlines(keepends=True)
                                 if not MLFLOW_NOTICES.match(line)))
