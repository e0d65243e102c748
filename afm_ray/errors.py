"""Errors that reach the user: one line that names the file, the field and the offending value."""

from __future__ import annotations


class AfmRayError(Exception):
    """Base class of afm-ray's user-facing errors; the CLI prints the message and exits with code 2."""


class InputError(AfmRayError, ValueError):
    """Bad user input (a file, a config field, a command-line value).

    The message is built from ``where`` (file, file:line, or config field) and ``what``.
    """

    def __init__(self, where: str | None, what: str):
        self.where = where
        self.what = what
        super().__init__(f"{where}: {what}" if where else what)


class TrackingUnavailableError(AfmRayError):
    """The MLflow tracking server failed or did not answer while afm-ray needed it.

    Raised after the work that does not need MLflow is safe (checkpoints written), with what to do next.
    """
