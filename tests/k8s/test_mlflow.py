"""MLflow on the cluster: PostgreSQL and MinIO stores without admin rights, its basic-auth app with every
credential from Secrets, jobs that log in with the job account."""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from k8s.kustomize import resource_id, split_image
from k8s.manifests import (K8S, KUSTOMIZATIONS, MLFLOW_URI, OVERLAYS, SECRET_ENV, by_kind, dockerfile,
                           dockerfile_args, env_of, image_user, one, pod_name, pod_templates, ray_container,
                           with_kuberay_injections)
from servers import AS_DEPLOYED, AUTH_INI


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_mlflow_server_uses_postgres_and_minio(rendered, name):
    docs = rendered[name]
    server = ray_container(one(docs, "Deployment", "mlflow")["spec"]["template"])
    args = dict(arg.removeprefix("--").partition("=")[::2] for arg in server["args"])
    assert server["command"] == ["mlflow", "server"]
    assert "backend-store-uri" not in args, "the database URI holds the password: env only, never argv"
    assert re.fullmatch(r"postgresql\+psycopg2://\$\(MLFLOW_DB_USER\):\$\(MLFLOW_DB_PASSWORD\)@postgres:5432/\$\(MLFLOW_DB_NAME\)"
                        r"\?sslmode=verify-full&sslrootcert=/[^&]+", env_of(server)["MLFLOW_BACKEND_STORE_URI"]["value"])
    assert "serve-artifacts" in args and args["host"] == "0.0.0.0" and args["port"] == "5000"
    bucket = re.fullmatch(r"s3://([a-z0-9.-]+)(/.*)?", args["artifacts-destination"]).group(1)
    env = {e["name"]: e for e in server["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "https://minio:9000"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false", "no job runner: 8 processes, 1.9 GiB"
    assert {key: env[key]["value"] for key in AS_DEPLOYED} == AS_DEPLOYED, "the test servers run as deployed"
    assert any(p["port"] == 9000 for p in one(docs, "Service", "minio")["spec"]["ports"])
    assert any(p["port"] == 5432 for p in one(docs, "Service", "postgres")["spec"]["ports"])
    job = ray_container(one(docs, "Job", "create-bucket")["spec"]["template"])
    job_env = {e["name"]: e.get("value") for e in job["env"]}
    assert job_env["BUCKET"] == bucket and job_env["MC_HOST_minio"].endswith("@minio:9000")
    assert job["command"][0] == "/bin/sh"
    assert subprocess.run(["sh", "-n", "-c", job["args"][0]], capture_output=True).returncode == 0, "shell syntax"
    # MLflow answers only Host headers it allows: the in-cluster name and port-forwarding
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = args["allowed-hosts"].split(",")
    for host in ("mlflow:5000", "mlflow.afm-ray.svc.cluster.local:5000", "localhost:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "evil.example.com")
    statefulset = one(docs, "StatefulSet", "postgres")
    assert statefulset["spec"]["volumeClaimTemplates"], "PostgreSQL keeps its data on a volume"
    minio = one(docs, "Deployment", "minio")
    assert any("persistentVolumeClaim" in v for v in minio["spec"]["template"]["spec"]["volumes"])


def secret_backed(container: dict) -> dict[str, tuple[str, str]]:
    return {name: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for name, e in env_of(container).items() if "secretKeyRef" in e.get("valueFrom", {})}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_no_credentials_on_any_command_line(rendered, name):
    secrets = {doc["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
               for doc in by_kind(rendered[name], "Secret")}
    passwords = {v for data in secrets.values() for k, v in data.items() if SECRET_ENV.search(k)}
    assert passwords or name.endswith("jobs")
    for doc in rendered[name]:
        for template in with_kuberay_injections(doc):
            spec = template["spec"]
            for container in spec["containers"] + spec.get("initContainers", []):
                where = f"{resource_id(doc)} container {container['name']}"
                argv = " ".join(container.get("command", []) + container.get("args", []))
                assert not re.search(r"://[^/\s]*@", argv), f"{where}: a URI with credentials on its command line"
                for variable in secret_backed(container):
                    assert f"$({variable})" not in argv, f"{where}: Secret-backed ${variable} expanded into argv"
                for password in passwords:
                    assert password not in argv, f"{where}: a password on its command line"
                for env in container.get("env", []):
                    for user_info in re.findall(r"://([^/@\s]+)@", env.get("value", "")):
                        referenced = re.findall(r"\$\(([A-Z_]+)\)", user_info)
                        assert referenced and set(referenced) <= set(secret_backed(container)), where
    for doc in by_kind(rendered[name], "ConfigMap"):
        for key, text in doc.get("data", {}).items():
            assert not re.search(r"://[^/\s]*:[^/\s]*@", text), f"{resource_id(doc)} {key}: a URI with credentials"
            assert not [v for v in passwords if v in text], f"{resource_id(doc)} {key}: a Secret's password"
            assert not re.search(r"PASSWORD\s+'", text, re.I), f"{resource_id(doc)} {key}: a literal password"


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_mlflow_runs_basic_auth_with_credentials_from_secrets(rendered, name, tmp_path):
    import importlib.metadata
    import importlib.util

    docs = rendered[name]
    pod = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert "--app-name=basic-auth" in server["args"]
    assert "basic-auth" in {e.name for e in importlib.metadata.entry_points(group="mlflow.app")}
    env, secret_env = env_of(server), secret_backed(server)
    # the backend store: `mlflow server` reads MLFLOW_BACKEND_STORE_URI, built by Kubernetes from
    # Secret-backed variables declared before it (dependent-variable expansion)
    from mlflow.cli import server as server_command

    option = next(p for p in server_command.params if p.name == "backend_store_uri")
    assert option.envvar == "MLFLOW_BACKEND_STORE_URI"
    order = [e["name"] for e in server["env"]]
    uri = env["MLFLOW_BACKEND_STORE_URI"]
    referenced = re.findall(r"\$\(([A-Z_]+)\)", uri.get("value", ""))
    assert "secretKeyRef" in uri.get("valueFrom", {}) or referenced
    for variable in referenced:
        assert secret_env[variable][0] == "mlflow-database"
        assert order.index(variable) < order.index("MLFLOW_BACKEND_STORE_URI"), f"{variable} must come first"
    # the admin account from the Secret mlflow-admin; the auth ini from an init container, in memory
    assert secret_env["MLFLOW_AUTH_ADMIN_USERNAME"] == ("mlflow-admin", "MLFLOW_AUTH_ADMIN_USERNAME")
    assert secret_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == ("mlflow-admin", "MLFLOW_AUTH_ADMIN_PASSWORD")
    # without a static key the basic-auth app refuses to start (CSRF tokens across workers)
    assert secret_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == ("mlflow-admin", "MLFLOW_FLASK_SERVER_SECRET_KEY")
    init = next(c for c in pod["initContainers"] if c["name"] == "auth-config")
    config_path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    assert env_of(init)["MLFLOW_AUTH_CONFIG_PATH"]["value"] == config_path
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in (init, server):
        mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
        assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
    init_env = env_of(init)
    for variable in re.findall(r"\$\(([A-Z_]+)\)", init_env["MLFLOW_AUTH_DATABASE_URI"]["value"]):
        assert secret_backed(init)[variable][0] == "mlflow-database"
    # run the init container's script; MLflow's own config reader must get the URI back intact
    rendered_uri = "postgresql+psycopg2://mlflow:p%40ss%25word@postgres:5432/mlflow"
    ini = tmp_path / "basic_auth.ini"
    result = subprocess.run([sys.executable, "-c", init["args"][0]], capture_output=True, text=True, timeout=60,
                            env={"MLFLOW_AUTH_DATABASE_URI": rendered_uri, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert ini.stat().st_mode & 0o077 == 0, "the auth ini holds a password: owner-only"
    import mlflow

    spec = importlib.util.spec_from_file_location(
        "afm_test_mlflow_auth_config", Path(mlflow.__file__).parent / "server" / "auth" / "config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MLFLOW_AUTH_")}
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
    try:
        config = module.read_auth_config()
    finally:
        os.environ.pop("MLFLOW_AUTH_CONFIG_PATH")
        os.environ.update(saved)
    assert config.database_uri == rendered_uri
    assert config.default_permission == "READ" and config.admin_password is None   # admin: env only
    # what tests/integration/test_mlflow_auth.py's server runs with, but for the database
    tested = configparser.ConfigParser(interpolation=None)
    tested.read_string(AUTH_INI)
    written = configparser.ConfigParser(interpolation=None)
    written.read(ini)
    assert {k: v for k, v in written["mlflow"].items() if k != "database_uri"} == \
        {k: v for k, v in tested["mlflow"].items() if k != "database_uri"}
    assert config.auth_cache_ttl_seconds == 60  # a password check per credential and minute, not per request


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_mlflow_reaches_its_stores_without_admin_rights(rendered, name):
    """Issue 29: MLflow logs in to MinIO as a user limited to its bucket and to PostgreSQL as a role
    that is no superuser; the root/superuser credentials stay with MinIO, PostgreSQL and the Job
    that creates the bucket and the user."""
    docs = rendered[name]
    admin_secrets = {"minio-credentials": {"minio", "create-bucket"}, "postgres-credentials": {"postgres"}}
    for doc in docs:
        for template in pod_templates(doc):
            spec = template["spec"]
            for container in spec["containers"] + spec.get("initContainers", []):
                for secret, _ in secret_backed(container).values():
                    if secret in admin_secrets:
                        assert pod_name(template) in admin_secrets[secret], f"{pod_name(template)} gets {secret}"
    mlflow = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    server = mlflow["containers"][0]
    assert secret_backed(server)["AWS_ACCESS_KEY_ID"] == ("minio-mlflow", "AWS_ACCESS_KEY_ID")
    assert secret_backed(server)["AWS_SECRET_ACCESS_KEY"] == ("minio-mlflow", "AWS_SECRET_ACCESS_KEY")
    # the bucket Job creates exactly that user, with a policy on the artifact bucket only
    args = dict(arg.removeprefix("--").partition("=")[::2] for arg in server["args"])
    bucket = re.fullmatch(r"s3://([a-z0-9.-]+)(/.*)?", args["artifacts-destination"]).group(1)
    job = one(docs, "Job", "create-bucket")["spec"]["template"]["spec"]["containers"][0]
    job_env, job_secrets = env_of(job), secret_backed(job)
    assert job_secrets["MLFLOW_S3_ACCESS_KEY"] == ("minio-mlflow", "AWS_ACCESS_KEY_ID")
    assert job_secrets["MLFLOW_S3_SECRET_KEY"] == ("minio-mlflow", "AWS_SECRET_ACCESS_KEY")
    policy = json.loads(job_env["POLICY_JSON"]["value"])
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert all(re.fullmatch(r"s3:[A-Za-z]+", action) for action in statement["Action"]), "no wildcard actions"
        assert set(statement["Resource"]) <= {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    script = job["args"][0]
    assert 'mc admin policy create minio "$POLICY_NAME" /tmp/policy.json' in script
    assert re.search(r'printf [^|]*"\$MLFLOW_S3_SECRET_KEY" \| mc admin user add minio "\$MLFLOW_S3_ACCESS_KEY"$',
                     script, re.M), "the secret key goes on stdin, never on argv"
    assert 'mc admin policy attach minio "$POLICY_NAME" --user "$MLFLOW_S3_ACCESS_KEY"' in script
    # PostgreSQL: MLflow's role and database come from mlflow-database, made by the first-start script
    postgres = one(docs, "StatefulSet", "postgres")["spec"]["template"]["spec"]
    container = postgres["containers"][0]
    assert "POSTGRES_DB" not in env_of(container), "the entrypoint would make that database the superuser's"
    for variable in ("MLFLOW_DB_USER", "MLFLOW_DB_PASSWORD", "MLFLOW_DB_NAME"):
        assert secret_backed(container)[variable] == ("mlflow-database", variable)
        assert secret_backed(server)[variable] == ("mlflow-database", variable)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/docker-entrypoint-initdb.d")
    volume = next(v for v in postgres["volumes"] if v["name"] == mount["name"])
    init = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    assert list(init) == ["create-mlflow-role.sh"]
    sql = init["create-mlflow-role.sh"]
    assert re.search(r"CREATE ROLE :\"mlflow_user\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE", sql)
    assert 'CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user"' in sql
    assert subprocess.run(["sh", "-n", "-c", sql], capture_output=True).returncode == 0, "shell syntax"


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_jobs_log_in_to_mlflow_with_the_job_account(rendered, name):
    from mlflow.environment_variables import MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_USERNAME

    docs = rendered[name]
    cluster = one(docs, "RayCluster")
    for template in [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]:
        secret_env = secret_backed(ray_container(template))
        assert secret_env[MLFLOW_TRACKING_USERNAME.name] == ("mlflow-job", "MLFLOW_TRACKING_USERNAME")
        assert secret_env[MLFLOW_TRACKING_PASSWORD.name] == ("mlflow-job", "MLFLOW_TRACKING_PASSWORD")
    # the bootstrap Job: D's script in the MLflow image, admin and job accounts from their Secrets
    job = one(docs, "Job", "mlflow-bootstrap")["spec"]["template"]["spec"]
    container = job["containers"][0]
    assert split_image(container["image"])[0].endswith("afm-ray-mlflow")
    assert container["command"] == ["python", "/app/bootstrap_users.py"]
    assert env_of(container)["MLFLOW_TRACKING_URI"]["value"] == MLFLOW_URI
    assert secret_backed(container) == {
        "MLFLOW_ADMIN_USERNAME": ("mlflow-admin", "MLFLOW_AUTH_ADMIN_USERNAME"),
        "MLFLOW_ADMIN_PASSWORD": ("mlflow-admin", "MLFLOW_AUTH_ADMIN_PASSWORD"),
        "MLFLOW_JOB_USERNAME": ("mlflow-job", "MLFLOW_TRACKING_USERNAME"),
        "MLFLOW_JOB_PASSWORD": ("mlflow-job", "MLFLOW_TRACKING_PASSWORD")}
    copies = [a.split() for k, a in dockerfile(K8S / "mlflow.Dockerfile") if k == "COPY"]
    assert [p for p in copies if p[-1] == "/app/bootstrap_users.py" and "k8s/mlflow/bootstrap_users.py" in p]
    assert (K8S / "mlflow" / "bootstrap_users.py").exists() or pytest.skip("k8s/mlflow/bootstrap_users.py not written yet")


def test_the_submitter_image_is_small():
    instructions = dockerfile(K8S / "submitter.Dockerfile")
    [base] = [a for k, a in instructions if k == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim@sha256:[0-9a-f]{64}", base), base
    installs = [a for k, a in instructions if k == "RUN" and "pip install" in a]
    assert len(installs) == 1
    packages = re.findall(r'"([^"]+)"', installs[0])
    assert packages == ['ray[default]==${RAY_VERSION}']
    import ray

    assert dockerfile_args(K8S / "submitter.Dockerfile")["RAY_VERSION"] == ray.__version__
    assert image_user(K8S / "submitter.Dockerfile")[0] != 0


def test_rayjobs_resume_when_created_again():
    """Re-creating a RayJob continues it: the sweep by --resume-if-exists, training because afm-ray
    train resumes whenever its run folder exists (so its entrypoint carries no flag)."""
    jobs_text = {path.stem: yaml.safe_load(path.read_text()) for path in (K8S / "jobs").glob("*.yaml")}
    prod = yaml.safe_load((K8S / "overlays" / "prod" / "jobs" / "kustomization.yaml").read_text())
    prod_entrypoints = {p["target"]["name"]: yaml.safe_load(p["patch"])[0]["value"] for p in prod["patches"]}
    for entrypoint in (jobs_text["tune-xyz"]["spec"]["entrypoint"], prod_entrypoints["tune-xyz"]):
        argv = shlex.split(entrypoint)
        assert argv[:2] == ["afm-ray", "tune"] and "--resume-if-exists" in argv and "--resume" not in argv
    for entrypoint in (jobs_text["train-dsh"]["spec"]["entrypoint"], prod_entrypoints["train-dsh"]):
        assert not [a for a in shlex.split(entrypoint) if a.startswith("--resume")]
    assert "add --resume" not in (K8S / "jobs" / "tune-xyz.yaml").read_text()
