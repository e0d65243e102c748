"""MLflow on a real PostgreSQL server, as deployed on the cluster (k8s/base/mlflow.yaml, postgres.yaml).

The test starts Debian's PostgreSQL (``apt-get install postgresql``) in a temporary folder, on
127.0.0.1 and a free port, like the cluster's StatefulSet: TLS with a certificate of a CA made for the
module (tests/certificates.py), the cluster's pg_hba.conf (TCP only over TLS, with a password), and
stops it at the end. PostgreSQL refuses to run as root: as root the server runs as the
``postgres`` user. Artifacts go to a local folder: MinIO has no Debian or PyPI package that ships
its server, so the S3 leg (MLFLOW_S3_ENDPOINT_URL, --artifacts-destination s3://...) is only
checked statically in tests/k8s/.

1. The MLflow client straight on ``postgresql+psycopg2://``: params, metrics, a torch model logged
   with ``registered_model_name``, an alias, the model loaded back from ``models:/NAME@ALIAS``,
   and afm-ray's own tracking helpers (preflight, RunTracker).
2. ``mlflow server`` started with the exact command, arguments and TLS files of the MLflow Deployment
   (the Secrets' volumes laid out locally from the test CA; the database and artifact locations
   swapped for the local ones): it serves HTTPS and connects to PostgreSQL with sslmode=verify-full,
   as the role that
   PostgreSQL's first-start script of the cluster (k8s/base/postgres/create-mlflow-role.sh) creates,
   which is no superuser: a client logs and registers a model
   through it (artifacts proxied by --serve-artifacts), and the server accepts the in-cluster Host
   header ``mlflow:5000`` while rejecting unknown hosts.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from certificates import TestCA
from servers import free_port, session_memory_bytes, start_mlflow_server, stop_process_group

from conftest import REPO
MLFLOW_DEPLOYMENT = REPO / "k8s" / "base" / "mlflow.yaml"
POSTGRES_INIT = REPO / "k8s" / "base" / "postgres" / "create-mlflow-role.sh"
POSTGRES_HBA = REPO / "k8s" / "base" / "postgres" / "pg_hba.conf"
LOCAL_NAMES = {"dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"]}   # what the local clients connect to


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL (``/usr/lib/postgresql/<version>/bin``), else one on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@pytest.fixture(scope="module")
def tls_secrets(tmp_path_factory) -> dict[str, Path]:
    """The cluster's TLS Secrets as local folders (tls.crt, tls.key, ca.crt), all from one test CA,
    for 127.0.0.1: {Secret name: folder}."""
    folder = tmp_path_factory.mktemp("tls")
    ca = TestCA.create(folder / "ca")
    return {name: ca.issue(folder / name, **LOCAL_NAMES) for name in ("mlflow-tls", "minio-tls", "postgres-tls")}


@pytest.fixture(scope="module")
def postgres(tls_secrets):
    """A PostgreSQL server with TLS and the cluster's pg_hba.conf: yields (host, port, user, password);
    database ``postgres`` exists."""
    psycopg2 = pytest.importorskip("psycopg2", reason="pip install psycopg2-binary (test extra)")
    binaries = postgres_bin()
    if binaries is None or not (binaries / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser to drop to the 'postgres' user")
        as_user = [runuser, "-u", "postgres", "--"]
    # short path (unix socket length limit), traversable by the postgres user
    folder = Path(tempfile.mkdtemp(prefix="afm-pg-", dir="/tmp"))
    data, log, password_file = folder / "data", folder / "server.log", folder / "password"
    password = secrets.token_hex(16)
    password_file.write_text(password + "\n")
    # the server's key must belong to the server's user, mode 0600 (or root's, 0640, as on the cluster)
    for name in ("tls.crt", "tls.key"):
        shutil.copy(tls_secrets["postgres-tls"] / name, folder / name)
    (folder / "tls.key").chmod(0o600)
    shutil.copy(POSTGRES_HBA, folder / "pg_hba.conf")
    if owner is not None:
        for path in (folder, password_file, folder / "tls.crt", folder / "tls.key", folder / "pg_hba.conf"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()

    def run(*command):
        return subprocess.run([*as_user, *map(str, command)], cwd=folder, capture_output=True, text=True, timeout=120)

    result = run(binaries / "initdb", "-D", data, "-U", "mlflow", f"--pwfile={password_file}", "-E", "UTF8",
                 "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256")
    assert result.returncode == 0, result.stdout + result.stderr
    # the TLS settings of k8s/base/postgres.yaml
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
               f"-c ssl=on -c ssl_cert_file={folder / 'tls.crt'} -c ssl_key_file={folder / 'tls.key'} "
               f"-c ssl_min_protocol_version=TLSv1.2 -c hba_file={folder / 'pg_hba.conf'}")
    result = run(binaries / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start")
    if result.returncode != 0:
        message = result.stdout + result.stderr + (log.read_text() if log.exists() else "")
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {message[-2000:]}")
    try:
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", password=password, dbname="postgres",
                                      sslmode="verify-full", sslrootcert=str(tls_secrets["postgres-tls"] / "ca.crt"))
        connection.close()
        # pg_hba.conf: TCP without TLS matches no line
        with pytest.raises(psycopg2.OperationalError, match="no encryption"):
            psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", password=password, dbname="postgres",
                             sslmode="disable")
        yield "127.0.0.1", port, "mlflow", password
    finally:
        run(binaries / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def create_database(postgres, name: str) -> str:
    """A fresh database; returns its SQLAlchemy URI (the form of the Deployment's --backend-store-uri)."""
    import psycopg2

    host, port, user, password = postgres
    connection = psycopg2.connect(host=host, port=port, user=user, password=password, dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{name}"


def create_mlflow_role_and_database(postgres, role: str, name: str) -> str:
    """The role and database of the cluster's MLflow, made by PostgreSQL's first-start script
    (k8s/base/postgres/create-mlflow-role.sh) run as the superuser; returns the role's SQLAlchemy URI."""
    host, port, superuser, superuser_password = postgres
    password = secrets.token_hex(16)
    environment = {"PATH": f"{postgres_bin()}:/usr/bin:/bin", "PGHOST": host, "PGPORT": str(port),
                   "PGPASSWORD": superuser_password, "POSTGRES_USER": superuser,
                   "MLFLOW_DB_USER": role, "MLFLOW_DB_PASSWORD": password, "MLFLOW_DB_NAME": name}
    result = subprocess.run(["bash", "-e", str(POSTGRES_INIT)], env=environment, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    uri = f"postgresql+psycopg2://{role}:{password}@{host}:{port}/{name}"
    assert query(uri, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user") == \
        [(False, False, False)], "MLflow's role must have no admin rights"
    assert query(uri, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()") == [(role,)]
    return uri


def query(uri: str, sql: str, *parameters) -> list[tuple]:
    import psycopg2

    dsn = re.fullmatch(r"postgresql\+psycopg2://(.+):(.+)@(.+):(\d+)/(.+)", uri)
    user, password, host, port, name = dsn.groups()
    connection = psycopg2.connect(host=host, port=int(port), user=user, password=password, dbname=name)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, parameters)
            return cursor.fetchall()
    finally:
        connection.close()


@pytest.fixture
def mlflow_globals(monkeypatch):
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI in os.environ: undo both afterwards."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri, registry_utils._registry_uri
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)   # monkeypatch puts the original values back
    yield mlflow
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def small_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()


def log_and_register(mlflow, experiment: str, name: str, artifact_location: str | None):
    """One run with params, metrics, a file and a registered torch model; returns (run_id, version)."""
    import numpy as np

    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
    example = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    with mlflow.start_run(experiment_id=experiment_id, run_name="pg-run") as run:
        mlflow.log_params({"model.name": "dsh", "loss.gamma": 1.25, "run.batch_size": 30})
        for step in range(3):
            mlflow.log_metrics({"train_loss": 1.0 / (step + 1), "val_loss": 2.0 / (step + 1)}, step=step)
        info = mlflow.pytorch.log_model(small_model(), name="model", registered_model_name=name,
                                        input_example=example, serialization_format="pt2",
                                        pip_requirements=["torch"])
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, "champion", version)
    return run.info.run_id, version, example


def check_model_loads(mlflow, name: str, example) -> None:
    import torch

    loaded = mlflow.pytorch.load_model(f"models:/{name}@champion")
    with torch.no_grad():
        expected = small_model()(torch.from_numpy(example))
        assert torch.allclose(loaded(torch.from_numpy(example)), expected)


def test_mlflow_tracking_and_registry_on_postgres(postgres, mlflow_globals, tmp_path, monkeypatch):
    mlflow = mlflow_globals
    uri = create_database(postgres, "mlflow_client")
    artifacts = tmp_path / "artifacts"
    mlflow.set_tracking_uri(uri)
    run_id, version, example = log_and_register(mlflow, "afm-ray-pg", "afm-pg-dsh", artifacts.as_uri())

    # the run, its params, metrics and the registry are rows of PostgreSQL
    assert dict(query(uri, "SELECT key, value FROM params WHERE run_uuid = %s", run_id))["loss.gamma"] == "1.25"
    assert query(uri, "SELECT max(step) FROM metrics WHERE run_uuid = %s AND key = 'val_loss'", run_id) == [(2,)]
    assert query(uri, "SELECT name, version FROM registered_model_aliases WHERE alias = 'champion'") == \
        [("afm-pg-dsh", int(version))]
    # artifacts in the local folder
    assert list(artifacts.rglob("MLmodel"))
    check_model_loads(mlflow, "afm-pg-dsh", example)

    # afm-ray's own tracking helpers on the same store
    from afm_ray.registry.tracking import ARCHITECTURE_TAG, RunTracker, preflight

    client = mlflow.MlflowClient(uri)
    client.set_registered_model_tag("afm-pg-dsh", ARCHITECTURE_TAG, "dsh")
    preflight(uri, "afm-pg-dsh", "dsh")
    from afm_ray.errors import InputError

    with pytest.raises(InputError, match="already registered with architecture 'dsh'"):
        preflight(uri, "afm-pg-dsh", "xyz")
    tracker = RunTracker(uri, run_id)
    tracker.log_metrics({"test_loss": 0.5}, step=3)
    assert tracker.flush() and tracker.pending == 0
    assert query(uri, "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'test_loss'", run_id) == [(0.5,)]


ADMIN = {"MLFLOW_AUTH_ADMIN_USERNAME": "afm-admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-for-tests",
         "MLFLOW_FLASK_SERVER_SECRET_KEY": "0123456789abcdef"}


def secret_volumes(pod: dict, container: dict, tls_secrets: dict[str, Path], folder: Path) -> dict[str, str]:
    """The container's Secret volumes laid out under ``folder`` as the kubelet mounts them (``items``:
    key → path) from the local Secrets ``tls_secrets``: {mount path: local folder}."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        local = folder / "volumes" / mount["name"]
        for item in secret["items"]:
            (local / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tls_secrets[secret["secretName"]] / item["key"], local / item["path"])
        mounts[mount["mountPath"]] = str(local)
    return mounts


def deployment_command(tracking_db_uri: str, artifacts: Path, port: int, folder: Path,
                       tls_secrets: dict[str, Path]) -> tuple[list[str], dict, list[str]]:
    """The MLflow container of k8s/base/mlflow.yaml run locally: its init container writes the
    basic-auth ini, then its command + args and env (Secrets = test values, $(VARS) expanded as
    Kubernetes does, Secret volumes under ``folder``) with the cluster addresses replaced by local ones.
    Returns (argv, env, allowed hosts)."""
    docs = list(yaml.safe_load_all(MLFLOW_DEPLOYMENT.read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    mounts = secret_volumes(pod, pod["containers"][0], tls_secrets, folder)

    def local(text: str) -> str:
        for mount_path, local_folder in mounts.items():
            text = text.replace(mount_path + "/", local_folder + "/")
        return text

    user, password, host, db_port, name = re.fullmatch(
        r"postgresql\+psycopg2://(.+):(.+)@(.+):(\d+)/([^?]+)", tracking_db_uri).groups()
    secrets = {"MLFLOW_DB_USER": user, "MLFLOW_DB_PASSWORD": password, "MLFLOW_DB_NAME": name, **ADMIN}

    def environment(container: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for entry in container["env"]:
            if entry["name"].startswith(("AWS_", "MLFLOW_S3_")):
                continue   # MinIO: the test's artifacts destination is a local folder
            if "valueFrom" in entry:
                value = secrets[entry["valueFrom"]["secretKeyRef"]["key"]]
            else:
                value = re.sub(r"\$\(([A-Z_]+)\)", lambda m: env.get(m.group(1), m.group(0)), entry["value"])
            if value.startswith("postgresql+psycopg2://"):
                assert "@postgres:5432/" in value
                value = local(value.replace("@postgres:5432/", f"@{host}:{db_port}/"))
            if entry["name"] == "MLFLOW_AUTH_CONFIG_PATH":
                value = str(folder / "basic_auth.ini")
            env[entry["name"]] = value
        assert "$(" not in " ".join(env.values()), "every $(VAR) must be declared above its use"
        return env

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    init = next(c for c in pod["initContainers"] if c["name"] == "auth-config")
    subprocess.run([sys.executable, "-c", init["args"][0]], env={**base_env, **environment(init)}, check=True,
                   capture_output=True)
    container = pod["containers"][0]
    argv, allowed = [], []
    for arg in container["command"] + container["args"]:
        key, _, value = arg.partition("=")
        if key == "--artifacts-destination":
            assert value.startswith("s3://")
            arg = f"{key}={artifacts}"
        elif key == "--host":
            arg = f"{key}=127.0.0.1"
        elif key == "--port":
            arg = f"{key}={port}"
        elif key == "--allowed-hosts":
            allowed = value.split(",")
        argv.append(local(arg))
    assert password not in " ".join(argv), "no credentials on the command line"
    assert argv[:2] == ["mlflow", "server"]
    env = environment(container)
    env.pop("HOME", None)
    return argv, {**base_env, **env}, allowed


def deployment_memory_limit_bytes() -> int:
    """The memory limit of the MLflow container of k8s/base/mlflow.yaml (a quantity in Mi or Gi), in bytes."""
    deployment = next(d for d in yaml.safe_load_all(MLFLOW_DEPLOYMENT.read_text()) if d["kind"] == "Deployment")
    quantity = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * {"Mi": 2**20, "Gi": 2**30}[unit]


def test_mlflow_server_as_deployed_on_postgres(postgres, tls_secrets, mlflow_globals, tmp_path, monkeypatch):
    import requests

    mlflow = mlflow_globals
    # as on the cluster: MLflow (its schema migrations, the auth tables) as a role that is no superuser
    database = create_mlflow_role_and_database(postgres, "mlflow_server_role", "mlflow_server")
    artifacts = tmp_path / "s3-bucket"
    port = free_port()
    argv, environment, allowed = deployment_command(database, artifacts, port, tmp_path, tls_secrets)
    ca = tls_secrets["mlflow-tls"] / "ca.crt"   # what the Ray pods mount (ca.crt of the Secret mlflow-tls)
    server = start_mlflow_server(argv[2:], port, environment, tmp_path, tmp_path / "server.log", ca_path=ca)
    base = f"https://127.0.0.1:{port}"
    try:
        # HTTPS only
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/health", timeout=60)
        # the Host headers of the cluster pass, others do not; without credentials nothing is read
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        login = (ADMIN["MLFLOW_AUTH_ADMIN_USERNAME"], ADMIN["MLFLOW_AUTH_ADMIN_PASSWORD"])

        def status(**headers_and_auth) -> int:   # a worker's first login can take seconds on a busy machine
            return requests.get(search, timeout=60, verify=str(ca), **headers_and_auth).status_code

        assert status(headers={"Host": "mlflow:5000"}, auth=login) == 200
        assert status(headers={"Host": "mlflow.afm-ray.svc.cluster.local:5000"}, auth=login) == 200
        assert status(headers={"Host": "evil.example.com"}, auth=login) == 403
        assert status(headers={"Host": "mlflow:5000"}) == 401
        assert "mlflow:*" in allowed

        # a client that knows the server's URL, its CA and an account (as the Ray pods: MLFLOW_TRACKING_URI,
        # MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_USERNAME / _PASSWORD)
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(ca))
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login[1])
        mlflow.set_tracking_uri(base)
        run_id, version, example = log_and_register(mlflow, "afm-ray-server", "afm-server-dsh", None)
        check_model_loads(mlflow, "afm-server-dsh", example)
        # its processes (CLI, uvicorn workers; no job runner: MLFLOW_SERVER_ENABLE_JOB_EXECUTION) fit in half
        # the container's memory limit after serving a model upload
        assert session_memory_bytes(server.pid) < deployment_memory_limit_bytes() / 2
        # stored where the Deployment says: rows in PostgreSQL, files at the artifacts destination
        assert query(database, "SELECT status FROM runs WHERE run_uuid = %s", run_id) == [("FINISHED",)]
        assert query(database, "SELECT version FROM registered_model_aliases WHERE name = 'afm-server-dsh'") == \
            [(int(version),)]
        assert list(artifacts.rglob("MLmodel")), "model files must land in --artifacts-destination"
        # the server's connections to PostgreSQL (tracking and user store) are TLS (sslmode=verify-full)
        assert set(query(database, "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                                   "WHERE a.usename = 'mlflow_server_role' AND a.pid <> pg_backend_pid()")) == {(True,)}
    finally:
        stop_process_group(server)
