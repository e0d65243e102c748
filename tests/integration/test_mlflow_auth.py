"""MLflow with its basic-auth app behind TLS, as on the cluster: anonymous requests refused, jobs log in.

One real ``mlflow server --app-name basic-auth`` per module (SQLite tracking store, SQLite auth
database, an auth ini via MLFLOW_AUTH_CONFIG_PATH, admin credentials from the environment like the
Deployment's Secret), serving HTTPS only (uvicorn's --ssl-certfile/--ssl-keyfile, as the Deployment)
with a certificate of a CA made for the module (tests/certificates.py); every client verifies it
(MLFLOW_TRACKING_SERVER_CERT_PATH, as the Ray pods). ``k8s/mlflow/bootstrap_users.py`` runs against it
as a subprocess, exactly as the bootstrap Job runs it, and creates the job account. Then:

- without credentials, reading runs (REST and MlflowClient) and moving an alias get HTTP 401, and
  the alias stays where it was; a logged-in account without grants gets 403 on the alias;
- with the job's credentials, the real ``afm-ray train`` CLI trains and registers a new version of
  a model (and runs in an experiment) that the admin created, and moves its alias;
- a wrong password stops ``afm-ray train`` with one clear line, no traceback, no password;
- a client without the CA (``afm-ray train``, the bootstrap script) is refused with one clear line;
- the bootstrap script run again changes nothing and a rotated password takes effect.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from certificates import TestCA
from conftest import CONFIGS, REPO, TINY_TRAINING, afm_ray_train_process
from servers import AS_DEPLOYED, AUTH_INI, free_port, start_mlflow_server, stop_process_group

BOOTSTRAP_SCRIPT = REPO / "k8s" / "mlflow" / "bootstrap_users.py"
ADMIN = ("mlflow-admin", "admin-password-for-tests")
JOB = ("afm-job", "job-password-for-tests")
MODEL_NAME = "afm-auth-dsh"


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without MLflow settings or the test session's Ray address."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    environment.update(extra)
    return environment


@pytest.fixture(scope="module")
def server_ca(tmp_path_factory) -> TestCA:
    """The CA that signed the server's certificate; its ``ca_path`` is the clients' MLFLOW_TRACKING_SERVER_CERT_PATH."""
    return TestCA.create(tmp_path_factory.mktemp("mlflow_ca"))


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, server_ca):
    """The server's https:// URI; stopped (its whole process group) at the end of the module."""
    pytest.importorskip("flask_wtf", reason="the basic-auth app needs Flask-WTF: pip install 'mlflow[auth]' (test extra)")
    folder = tmp_path_factory.mktemp("mlflow_auth")
    ini = folder / "basic_auth.ini"
    ini.write_text(AUTH_INI.format(auth_db=folder / "auth.db"))
    tls = server_ca.issue(folder / "tls", ["localhost"], ["127.0.0.1"])
    port = free_port()
    uri = f"https://127.0.0.1:{port}"
    environment = clean_environment(
        MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_USERNAME=ADMIN[0], MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1],
        MLFLOW_FLASK_SERVER_SECRET_KEY="csrf-key-for-tests", **AS_DEPLOYED)
    args = ["--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
            "--artifacts-destination", str(folder / "artifacts"), "--workers", "1",
            f"--uvicorn-opts=--ssl-certfile={tls / 'tls.crt'} --ssl-keyfile={tls / 'tls.key'}"]   # as k8s/base/mlflow.yaml
    # the first start migrates both databases
    process = start_mlflow_server(args, port, environment, folder, folder / "server.log",
                                  ca_path=server_ca.ca_path)
    try:
        yield uri
    finally:
        stop_process_group(process)


def trusting(ca_path: Path | None, **environment: str) -> dict[str, str]:
    """``environment`` plus MLFLOW_TRACKING_SERVER_CERT_PATH=``ca_path`` (the Ray pods' setting; None: left out)."""
    return {**environment, "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca_path)} if ca_path else environment


def run_bootstrap(uri: str, ca_path: Path | None, job_password: str = JOB[1],
                  admin_password: str = ADMIN[1]) -> subprocess.CompletedProcess:
    """bootstrap_users.py as the Kubernetes Job runs it: a plain Python with the Secrets' variables,
    trusting the CA file ``ca_path`` (the Job's mounted ca.crt of mlflow-tls)."""
    environment = clean_environment(**trusting(
        ca_path, MLFLOW_TRACKING_URI=uri, MLFLOW_ADMIN_USERNAME=ADMIN[0], MLFLOW_ADMIN_PASSWORD=admin_password,
        MLFLOW_JOB_USERNAME=JOB[0], MLFLOW_JOB_PASSWORD=job_password, MLFLOW_BOOTSTRAP_TIMEOUT_S="60"))
    return subprocess.run([sys.executable, str(BOOTSTRAP_SCRIPT)], env=environment, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def bootstrapped(auth_server, server_ca):
    result = run_bootstrap(auth_server, server_ca.ca_path)
    assert result.returncode == 0, result.stderr
    assert f"job user '{JOB[0]}' created" in result.stdout
    return auth_server


@pytest.fixture
def login(monkeypatch, server_ca):
    """``login(user, password)`` / ``login(None)``: the credentials MlflowClient sends from now on (and it
    verifies the server's certificate against the module's CA)."""
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI",
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)  # monkeypatch restores the original values
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(server_ca.ca_path))

    def use(user: str | None, password: str | None = None) -> None:
        if user is None:
            monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
            monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

    return use


def http_status(call) -> int | None:
    try:
        call()
    except MlflowException as exc:
        return exc.get_http_status_code()
    return None


def admin_registered_model(client: MlflowClient, name: str, alias: str) -> tuple[str, str]:
    """As admin: a run and a model ``name`` with versions 1 and 2, ``alias`` → 1. Returns (run id, experiment id)."""
    experiment_id = client.create_experiment(f"admin-{name}")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "loss", 1.0)
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias(name, alias, "1")
    return run_id, experiment_id


def test_without_credentials_runs_and_aliases_are_refused(bootstrapped, login, server_ca):
    uri = bootstrapped
    verify = str(server_ca.ca_path)
    login(*ADMIN)
    admin = MlflowClient(uri)
    run_id, experiment_id = admin_registered_model(admin, "afm-protected", "champion")

    login(None)
    anonymous = MlflowClient(uri)
    rest = f"{uri}/api/2.0/mlflow"
    assert requests.get(f"{rest}/runs/get", params={"run_id": run_id}, verify=verify).status_code == 401
    assert requests.post(f"{rest}/runs/search", json={"experiment_ids": [experiment_id]}, verify=verify).status_code == 401
    assert requests.get(f"{rest}/experiments/search", params={"max_results": 10}, verify=verify).status_code == 401
    assert requests.get(f"{uri}/api/2.0/mlflow-artifacts/artifacts", params={"path": experiment_id},
                        verify=verify).status_code == 401
    assert requests.post(f"{rest}/registered-models/alias", json={"name": "afm-protected", "alias": "champion", "version": "2"},
                         verify=verify).status_code == 401
    assert http_status(lambda: anonymous.get_run(run_id)) == 401
    assert http_status(lambda: anonymous.search_runs([experiment_id])) == 401
    assert http_status(lambda: anonymous.get_metric_history(run_id, "loss")) == 401
    assert http_status(lambda: anonymous.set_registered_model_alias("afm-protected", "champion", "2")) == 401

    # a logged-in account without grants reads (default_permission READ) but cannot move the alias
    login(*ADMIN)
    from mlflow.server.auth.client import AuthServiceClient

    AuthServiceClient(uri).create_user("someone", "someone-password-12")
    login("someone", "someone-password-12")
    assert MlflowClient(uri).get_run(run_id).info.run_id == run_id
    assert http_status(lambda: MlflowClient(uri).set_registered_model_alias("afm-protected", "champion", "2")) == 403

    login(*ADMIN)
    assert admin.get_model_version_by_alias("afm-protected", "champion").version == "1"


def afm_ray_train(uri: str, ca_path: Path | None, database: Path, folder: Path, username: str, password: str,
                  epochs: int = 1) -> subprocess.CompletedProcess:
    """The real ``afm-ray train`` CLI on the quickstart config, 12 molecules, 32 × 32 px, in a fresh process,
    trusting the CA file ``ca_path`` (None: only the system's CAs)."""
    environment = clean_environment(**trusting(ca_path, MLFLOW_TRACKING_USERNAME=username,
                                               MLFLOW_TRACKING_PASSWORD=password))
    arguments = ["--config", str(CONFIGS / "quickstart.yaml"), f"data.database={database}", *TINY_TRAINING,
                 f"data.fixed_set_dir={folder / 'fixed'}", f"run.storage_path={folder / 'runs'}",
                 f"run.epochs={epochs}", "run.name=auth", f"mlflow.tracking_uri={uri}",
                 f"mlflow.registered_model_name={MODEL_NAME}"]
    return afm_ray_train_process(arguments, folder, environment)


def test_job_credentials_train_and_register(bootstrapped, login, server_ca, tiny_database, tmp_path):
    uri = bootstrapped
    # the admin made the experiment and the model: the job needs its role's EDIT, not creator rights
    login(*ADMIN)
    admin = MlflowClient(uri)
    admin.create_experiment("afm-ray")
    admin_registered_model(admin, MODEL_NAME, "current")
    admin.set_registered_model_tag(MODEL_NAME, "afm_ray.architecture", "dsh")

    result = afm_ray_train(uri, server_ca.ca_path, tiny_database, tmp_path, *JOB)
    assert result.returncode == 0, result.stderr[-3000:]

    login(*JOB)
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias(MODEL_NAME, "current")
    assert version.version == "3"  # after the admin's 1 and 2
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.params["data.split"] == "tiny"
    assert client.get_experiment(run.info.experiment_id).name == "afm-ray"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0]


def test_wrong_password_gives_one_clear_line(bootstrapped, server_ca, tiny_database, tmp_path):
    wrong = "not-the-job-password"
    result = afm_ray_train(bootstrapped, server_ca.ca_path, tiny_database, tmp_path, JOB[0], wrong)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"rejected the credentials of user '{JOB[0]}' (HTTP 401)" in result.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in result.stderr and "job Secret" in result.stderr
    assert "Traceback" not in result.stderr and wrong not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


def test_missing_credentials_name_the_variables(bootstrapped, login):
    from afm_ray.errors import InputError
    from afm_ray.registry.tracking import preflight

    login(None)
    with pytest.raises(InputError, match=r"requires credentials \(HTTP 401\): set MLFLOW_TRACKING_USERNAME"):
        preflight(bootstrapped, MODEL_NAME, "dsh")


def test_bootstrap_is_idempotent_and_rotates_the_password(bootstrapped, login, server_ca):
    from mlflow.server.auth.client import AuthServiceClient

    uri, ca_path = bootstrapped, server_ca.ca_path

    def job_setup():
        login(*ADMIN)
        auth = AuthServiceClient(uri)
        users = requests.get(f"{uri}/api/2.0/mlflow/users/list", auth=ADMIN, verify=str(ca_path)).json()["users"]
        roles = auth.list_user_roles(JOB[0])
        grants = sorted((p.resource_type, p.resource_pattern, p.permission)
                        for role in roles for p in auth.list_role_permissions(role.id))
        return sorted(u["username"] for u in users), sorted(r.name for r in roles), grants, auth.get_user(JOB[0]).is_admin

    before = job_setup()
    again = run_bootstrap(uri, ca_path)
    assert again.returncode == 0, again.stderr
    assert f"job user '{JOB[0]}' updated" in again.stdout
    assert job_setup() == before
    assert ("registered_model", "*", "EDIT") in before[2] and ("experiment", "*", "EDIT") in before[2]
    assert before[3] is False

    def job_login_status(password: str) -> int:
        return requests.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                            auth=(JOB[0], password), verify=str(ca_path)).status_code

    try:
        rotated = run_bootstrap(uri, ca_path, job_password="rotated-job-password")
        assert rotated.returncode == 0, rotated.stderr
        assert job_login_status("rotated-job-password") == 200 and job_login_status(JOB[1]) == 401
        assert "rotated-job-password" not in rotated.stdout + rotated.stderr
    finally:
        assert run_bootstrap(uri, ca_path).returncode == 0
    assert job_login_status(JOB[1]) == 200


def test_bootstrap_errors_are_one_line(auth_server, server_ca):
    result = run_bootstrap(auth_server, server_ca.ca_path, admin_password="wrong-admin-password")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"bootstrap_users: error: {auth_server} rejected the admin credentials of user '{ADMIN[0]}' (HTTP 401): "
        "check MLFLOW_ADMIN_USERNAME / MLFLOW_ADMIN_PASSWORD against the server's "
        "MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD"]
    # without the server's CA the Job stops at once (no waiting out its timeout), naming the setting
    result = run_bootstrap(auth_server, None)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"bootstrap_users: error: {auth_server} is not trusted: its TLS certificate is not signed by the system's "
        "CAs (on Kubernetes: ca.crt of the Secret mlflow-tls)"]
    environment = clean_environment(**trusting(server_ca.ca_path, MLFLOW_TRACKING_URI=auth_server,
                                               MLFLOW_ADMIN_USERNAME=ADMIN[0], MLFLOW_ADMIN_PASSWORD=ADMIN[1],
                                               MLFLOW_JOB_USERNAME=JOB[0]))
    result = subprocess.run([sys.executable, str(BOOTSTRAP_SCRIPT)], env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "missing environment variable(s): MLFLOW_JOB_PASSWORD" in result.stderr


def test_a_client_without_the_servers_ca_is_refused_in_one_line(bootstrapped, login, monkeypatch, tmp_path,
                                                                 tiny_database):
    """TLS is verified: ``afm-ray train`` that trusts only the system's CAs stops before any work with one
    line naming MLFLOW_TRACKING_SERVER_CERT_PATH; the same check with another CA's file, in process."""
    result = afm_ray_train(bootstrapped, None, tiny_database, tmp_path, *JOB)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"MLflow tracking server {bootstrapped} is not trusted: its TLS certificate is not signed by the " \
           "system's CAs: set MLFLOW_TRACKING_SERVER_CERT_PATH" in errors[0]
    assert "Traceback" not in result.stderr and JOB[1] not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()

    from afm_ray.errors import InputError
    from afm_ray.registry.tracking import preflight

    stranger = TestCA.create(tmp_path / "other-ca").ca_path
    login(*JOB)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(stranger))
    with pytest.raises(InputError, match=rf"not signed by the CA in MLFLOW_TRACKING_SERVER_CERT_PATH='{stranger}'"):
        preflight(bootstrapped, MODEL_NAME, "dsh")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tmp_path / "missing.crt"))
    with pytest.raises(InputError, match=r"MLFLOW_TRACKING_SERVER_CERT_PATH='.*missing.crt' cannot be read"):
        preflight(bootstrapped, MODEL_NAME, "dsh")
