"""Create (or update) the MLflow account that afm-ray jobs log in with, on a basic-auth MLflow server.

Runs in the bootstrap Job with only ``mlflow`` installed (no afm-ray): the MLflow image copies it to
``/app/bootstrap_users.py``. Safe to run any number of times: every step reads the server's state
and changes only what differs.

Environment (all required; values come from the Kubernetes Secrets):
    MLFLOW_TRACKING_URI     the server, e.g. https://mlflow:5000
    MLFLOW_ADMIN_USERNAME   the admin account the server bootstrapped (MLFLOW_AUTH_ADMIN_USERNAME there)
    MLFLOW_ADMIN_PASSWORD
    MLFLOW_JOB_USERNAME     the account Ray jobs use (their MLFLOW_TRACKING_USERNAME)
    MLFLOW_JOB_PASSWORD     at least 12 characters (MLflow's password policy)
Optional:
    MLFLOW_BOOTSTRAP_TIMEOUT_S  how long to wait for the server's /health, seconds (default 300)
    MLFLOW_TRACKING_SERVER_CERT_PATH  the CA file an https:// server's certificate is verified against
                            (as the MLflow client does; default: the system's CAs)

Permission model: the job account is NOT an admin (an admin can create users and change the
admin's password; a leaked job credential must not be able to lock the operators out). It holds
the role ``afm-ray-job``, which grants EDIT on every experiment and every registered model: jobs
create runs in experiments made by anyone, register new versions of existing afm-ray models and
move their aliases (EDIT = read + use + update; no delete, no permission management). Whatever
the job creates itself it additionally gets MANAGE on (MLflow grants creators MANAGE). Requests
without credentials are refused with 401 by the basic-auth app whatever ``default_permission``
says; ``default_permission`` only sets what other logged-in, non-admin accounts (e.g. a person's
account for browsing the UI) may do without explicit grants.

Exit status: 0 on success; 1 with one line on stderr saying what is wrong. Passwords are never
printed.
"""

from __future__ import annotations

import os
import sys
import time

JOB_ROLE_NAME = "afm-ray-job"
JOB_ROLE_DESCRIPTION = "afm-ray training and tuning jobs: log runs, register models, move aliases"
# (resource type, resource pattern, permission) the job role must hold; "*" = every resource of the type
JOB_ROLE_GRANTS = (("experiment", "*", "EDIT"), ("registered_model", "*", "EDIT"))
MIN_PASSWORD_LENGTH = 12  # mlflow.utils.validation._validate_password
REQUIRED_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD",
                        "MLFLOW_JOB_USERNAME", "MLFLOW_JOB_PASSWORD")


class BootstrapError(Exception):
    """A problem the operator must fix; the message is printed as one line."""


def read_environment() -> dict[str, str]:
    missing = [name for name in REQUIRED_ENVIRONMENT if not os.environ.get(name, "").strip()]
    if missing:
        raise BootstrapError(f"missing environment variable(s): {', '.join(missing)}")
    settings = {name: os.environ[name].strip() for name in REQUIRED_ENVIRONMENT}
    settings["MLFLOW_ADMIN_PASSWORD"] = os.environ["MLFLOW_ADMIN_PASSWORD"]  # passwords verbatim
    settings["MLFLOW_JOB_PASSWORD"] = os.environ["MLFLOW_JOB_PASSWORD"]
    if settings["MLFLOW_JOB_USERNAME"] == settings["MLFLOW_ADMIN_USERNAME"]:
        raise BootstrapError("MLFLOW_JOB_USERNAME must differ from MLFLOW_ADMIN_USERNAME: "
                             "jobs must not log in as the admin")
    if len(settings["MLFLOW_JOB_PASSWORD"]) < MIN_PASSWORD_LENGTH:
        raise BootstrapError(f"MLFLOW_JOB_PASSWORD is shorter than {MIN_PASSWORD_LENGTH} characters "
                             "(MLflow's minimum)")
    timeout = os.environ.get("MLFLOW_BOOTSTRAP_TIMEOUT_S", "300")
    try:
        settings["MLFLOW_BOOTSTRAP_TIMEOUT_S"] = str(float(timeout))
    except ValueError:
        raise BootstrapError(f"MLFLOW_BOOTSTRAP_TIMEOUT_S={timeout!r} is not a number of seconds") from None
    return settings


def wait_for_server(tracking_uri: str, timeout_s: float) -> None:
    """Poll ``/health`` (served without authentication) until it answers 200."""
    import requests

    deadline = time.monotonic() + timeout_s
    last_problem = "no answer"
    ca_path = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
    while True:
        try:
            response = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=5, verify=ca_path or True)
            if response.status_code == 200:
                return
            last_problem = f"HTTP {response.status_code}"
        except requests.exceptions.SSLError:  # a server that answers with a certificate we do not trust: no retry
            trusted = f"the CA in MLFLOW_TRACKING_SERVER_CERT_PATH={ca_path!r}" if ca_path else "the system's CAs"
            raise BootstrapError(f"{tracking_uri} is not trusted: its TLS certificate is not signed by {trusted} "
                                 "(on Kubernetes: ca.crt of the Secret mlflow-tls)") from None
        except OSError as exc:  # requests raises it for a CA file that does not exist
            if ca_path and "CA certificate bundle" in str(exc):
                raise BootstrapError(f"MLFLOW_TRACKING_SERVER_CERT_PATH={ca_path!r} cannot be read") from None
            last_problem = type(exc).__name__
        if time.monotonic() >= deadline:
            raise BootstrapError(f"MLflow server {tracking_uri} did not become healthy within {timeout_s:.0f} s "
                                 f"(last: {last_problem})")
        time.sleep(2)


def http_status(exc: Exception) -> int | None:
    getter = getattr(exc, "get_http_status_code", None)
    return getter() if getter else None


def error_code(exc: Exception) -> str | None:
    return getattr(exc, "error_code", None)


def ensure_job_user(client, username: str, password: str) -> str:
    """Create the job account, or set its password and clear a stray admin flag. Returns what was done."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_user(username, password)
        return "created"
    except MlflowException as exc:
        if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
    # the Secret is the source of truth: a rotated job password takes effect on the next run
    client.update_user_password(username, password)
    if client.get_user(username).is_admin:
        client.update_user_admin(username, False)
    return "updated"


def ensure_job_role(client, username: str, workspace: str) -> None:
    """The role with exactly the JOB_ROLE_GRANTS levels, assigned to ``username``."""
    role = next((r for r in client.list_roles(workspace) if r.name == JOB_ROLE_NAME), None)
    if role is None:
        role = client.create_role(workspace, JOB_ROLE_NAME, JOB_ROLE_DESCRIPTION)
    held = {(p.resource_type, p.resource_pattern): p for p in client.list_role_permissions(role.id)}
    for resource_type, pattern, permission in JOB_ROLE_GRANTS:
        current = held.get((resource_type, pattern))
        if current is None:
            client.add_role_permission(role.id, resource_type, pattern, permission)
        elif current.permission != permission:
            client.update_role_permission(current.id, permission)
    if all(r.id != role.id for r in client.list_user_roles(username)):
        client.assign_role(username, role.id)


def bootstrap(settings: dict[str, str]) -> str:
    import warnings

    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client
    from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME

    tracking_uri = settings["MLFLOW_TRACKING_URI"]
    admin, job = settings["MLFLOW_ADMIN_USERNAME"], settings["MLFLOW_JOB_USERNAME"]
    # the auth client reads its credentials from these variables (mlflow's get_default_host_creds)
    os.environ["MLFLOW_TRACKING_USERNAME"] = admin
    os.environ["MLFLOW_TRACKING_PASSWORD"] = settings["MLFLOW_ADMIN_PASSWORD"]
    # the server already answered /health: fail in seconds, not after MLflow's minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    with warnings.catch_warnings():  # it imports the server app, which warns about Starlette: noise in Job logs
        warnings.simplefilter("ignore")
        client = get_app_client("basic-auth", tracking_uri=tracking_uri)
    try:
        if not client.get_user(admin).is_admin:
            raise BootstrapError(f"user {admin!r} (MLFLOW_ADMIN_USERNAME) is not an admin on {tracking_uri}")
        done = ensure_job_user(client, job, settings["MLFLOW_JOB_PASSWORD"])
        ensure_job_role(client, job, DEFAULT_WORKSPACE_NAME)
    except MlflowException as exc:
        status = http_status(exc)
        if status == 401:
            raise BootstrapError(f"{tracking_uri} rejected the admin credentials of user {admin!r} (HTTP 401): "
                                 "check MLFLOW_ADMIN_USERNAME / MLFLOW_ADMIN_PASSWORD against the server's "
                                 "MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD") from None
        if status == 404:
            raise BootstrapError(f"{tracking_uri} has no user API (HTTP 404): start the server with "
                                 "--app-name basic-auth") from None
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise BootstrapError(f"{tracking_uri}: {first_line}") from None
    grants = ", ".join(f"{permission} on {kind} {pattern}" for kind, pattern, permission in JOB_ROLE_GRANTS)
    return f"job user {job!r} {done}; role {JOB_ROLE_NAME!r} ({grants}) assigned"


def main() -> int:
    try:
        settings = read_environment()
        wait_for_server(settings["MLFLOW_TRACKING_URI"], float(settings["MLFLOW_BOOTSTRAP_TIMEOUT_S"]))
        print(f"bootstrap_users: {bootstrap(settings)}", flush=True)
        return 0
    except BootstrapError as exc:
        print(f"bootstrap_users: error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
