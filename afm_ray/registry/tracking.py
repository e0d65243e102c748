"""MLflow runs: created with a recipe's fields as params, and tracked so that an outage cannot kill training.

Training, evaluation and model imports start their MLflow runs with :func:`create_config_run`.
Training must neither die nor lose checkpoints because the tracking server is down. The
:class:`RunTracker` logs to one MLflow run through :class:`mlflow.MlflowClient`; when a call fails
it warns once, keeps the metrics (and artifact paths) in memory and sends them with the next
successful call or at :meth:`RunTracker.close`. Before any cluster work starts,
:func:`preflight` checks that the tracking store answers and that the registered model name is
not taken by another architecture, so configuration mistakes fail fast.

Which store: :func:`afm_ray.recipe.resolve_tracking_uri` (embedded default ``sqlite:///mlruns.db``
in the working directory; MLflow 3 no longer accepts the plain file store).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

from afm_ray.errors import InputError
from afm_ray.recipe import TrainConfig

logger = logging.getLogger(__name__)

ARCHITECTURE_TAG = "afm_ray.architecture"
# MLflow retries HTTP calls for minutes by default; a training step must not wait that long.
_HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _bounded_http_retries() -> None:
    for key, value in _HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def credentials_refused(tracking_uri: str, exc: Exception) -> InputError | None:
    """The error to raise when ``exc`` is the server's HTTP 401/403 (basic auth), else ``None``.

    Names the account (``MLFLOW_TRACKING_USERNAME``), never the password.
    """
    status = exc.get_http_status_code() if hasattr(exc, "get_http_status_code") else None
    if status not in (401, 403):
        return None
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        if username:
            refusal = f"rejected the credentials of user {username!r} (HTTP 401)"
            remedy = "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        else:
            refusal = "requires credentials (HTTP 401)"
            remedy = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    else:
        refusal = f"denied user {username!r} this operation (HTTP 403)"
        remedy = "use the job account, or ask the MLflow admin to grant it (k8s/mlflow/bootstrap_users.py)"
    return InputError("mlflow.tracking_uri", f"MLflow tracking server {tracking_uri} {refusal}: {remedy} "
                                             "(on Kubernetes: from the job Secret)")


def certificate_refused(tracking_uri: str, exc: Exception) -> InputError | None:
    """The error to raise when ``exc`` is a failed TLS verification of an ``https://`` server, else ``None``.

    Names the CA file the client trusted (``MLFLOW_TRACKING_SERVER_CERT_PATH``, else the system's CAs).
    """
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" not in text and "TLS CA certificate bundle" not in text:
        return None
    ca_path = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    if "TLS CA certificate bundle" in text:
        problem = f"the CA file MLFLOW_TRACKING_SERVER_CERT_PATH={ca_path!r} cannot be read"
    else:
        trusted = f"the CA in MLFLOW_TRACKING_SERVER_CERT_PATH={ca_path!r}" if ca_path else "the system's CAs"
        problem = f"its TLS certificate is not signed by {trusted}"
    return InputError("mlflow.tracking_uri", f"MLflow tracking server {tracking_uri} is not trusted: {problem}: "
                                             "set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA file that signed it "
                                             "(on Kubernetes: ca.crt of the Secret mlflow-tls)")


def preflight(tracking_uri: str, registered_model_name: str | None, architecture: str) -> None:
    """Fail fast: the store must answer, and ``registered_model_name`` must hold ``architecture`` models."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    _bounded_http_retries()
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///"):]).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise InputError("mlflow.tracking_uri", f"cannot write the SQLite tracking store in {folder}")
    client = MlflowClient(tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # connection errors surface as several exception types
        if (refused := credentials_refused(tracking_uri, exc) or certificate_refused(tracking_uri, exc)) is not None:
            raise refused from None
        raise InputError("mlflow.tracking_uri", f"MLflow tracking server {tracking_uri} is unreachable: "
                                                f"{str(exc).splitlines()[0][:200]}") from None
    if not registered_model_name:
        return
    try:
        registered = client.get_registered_model(registered_model_name)
    except MlflowException as exc:
        if (refused := credentials_refused(tracking_uri, exc)) is not None:
            raise refused from None
        return  # not registered yet
    existing = registered.tags.get(ARCHITECTURE_TAG)
    if existing and existing != architecture:
        raise InputError("mlflow.registered_model_name",
                         f"{registered_model_name!r} is already registered with architecture {existing!r}, "
                         f"not {architecture!r}; choose another name")


MAX_METRICS_PER_REQUEST = 1000
"""MLflow's limit of metric values in one ``log_batch`` request."""


def whole_steps(metrics: list, limit: int) -> list:
    """The leading ``metrics`` (MLflow ``Metric`` entities, grouped by step) that fit one request of at
    most ``limit`` values without splitting a step, so a step is logged all or nothing (a step larger
    than ``limit`` alone is split)."""
    if len(metrics) <= limit:
        return metrics[:]
    cut = limit
    while cut > 0 and metrics[cut - 1].step == metrics[cut].step:
        cut -= 1
    return metrics[:cut or limit]


class RunTracker:
    """Metrics, params and artifacts of one MLflow run, buffered across tracking outages."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow import MlflowClient

        _bounded_http_retries()
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._client = MlflowClient(tracking_uri)
        self._pending_metrics: list = []
        self._pending_artifacts: list[tuple[str, str | None]] = []
        self._outage_since: float | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self._pending_metrics += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        self.flush()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._pending_artifacts.append((str(path), artifact_path))
        self.flush()

    def flush(self) -> bool:
        """Send everything pending; ``True`` when nothing is left. Never raises."""
        try:
            while self._pending_metrics:
                chunk = whole_steps(self._pending_metrics, MAX_METRICS_PER_REQUEST)
                self._client.log_batch(self.run_id, metrics=chunk)
                del self._pending_metrics[:len(chunk)]
            while self._pending_artifacts:
                path, artifact_path = self._pending_artifacts[0]
                if Path(path).exists():
                    self._client.log_artifact(self.run_id, path, artifact_path)
                self._pending_artifacts.pop(0)
        except Exception as exc:  # any tracking failure must not stop training
            if self._outage_since is None:
                self._outage_since = time.time()
                warnings.warn(f"MLflow tracking at {self.tracking_uri} failed ({str(exc).splitlines()[0][:200]}); "
                              f"buffering {len(self._pending_metrics)} metric values and retrying later",
                              RuntimeWarning, stacklevel=2)
            return False
        if self._outage_since is not None:
            logger.warning("MLflow tracking is back after %.0f s; buffered values sent", time.time() - self._outage_since)
            self._outage_since = None
        return True

    def backfill(self, history: list[dict]) -> int:
        """Send the epochs of ``history`` (``{"epoch": e, metric: value, …}`` per epoch) that MLflow lacks.

        Rank 0's buffer dies with its process when training ends during an outage; the checkpoint's
        history does not, so the driver repairs the run from it. Returns the values sent.
        """
        from mlflow.entities import Metric

        keys = sorted({key for entry in history for key in entry if key != "epoch"})
        # flush() sends an epoch's values in one request (whole_steps), so MLflow has all of them or none:
        # one key that every epoch reports tells which epochs it has (one lookup, not one per key,
        # which counts against an authenticating server); without such a key each is looked up
        lookups = [key for key in keys if all(key in entry for entry in history)][:1] or keys
        logged = {key: {metric.step for metric in self._client.get_metric_history(self.run_id, key)}
                  for key in lookups}
        timestamp = int(time.time() * 1000)
        for entry in history:
            epoch = int(entry["epoch"])
            self._pending_metrics += [Metric(key, float(entry[key]), timestamp, epoch) for key in keys
                                      if key in entry and epoch not in logged.get(key, logged[lookups[0]])]
        sent = len(self._pending_metrics)
        return sent if self.flush() else 0

    @property
    def pending(self) -> int:
        return len(self._pending_metrics) + len(self._pending_artifacts)


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}`` (MLflow params)."""
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def create_config_run(client, config: TrainConfig, run_name: str, tags: dict[str, str]) -> str:
    """A new MLflow run in ``config.mlflow.experiment`` (created if missing) with ``tags`` and the config's
    fields as params; returns its id. Training, evaluation and model imports all start their runs here."""
    from mlflow.entities import Param

    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.mlflow.experiment)
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    params = [Param(key, value[:6000]) for key, value in flatten(config.model_dump(mode="json")).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params[start:start + 100])
    return run_id
