"""Test servers in process groups of their own: real ``mlflow server`` processes (outage, PostgreSQL, basic
auth), and stopping such a group (a ``ray start`` head too)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MLFLOW_BIN = Path(sys.executable).parent / "mlflow"
# the auth ini the server reads, as k8s/base/mlflow.yaml's init container writes it (tests/k8s/test_mlflow.py
# checks that one); the admin credentials come from MLFLOW_AUTH_ADMIN_* like on the cluster
AUTH_INI = """[mlflow]
default_permission = READ
database_uri = sqlite:///{auth_db}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(args: list[str], port: int, env: dict[str, str], cwd: Path, log_path: Path,
                        timeout_s: float = 300, ca_path: Path | None = None) -> subprocess.Popen:
    """``mlflow server ARGS`` (in its own process group) once ``/health`` answers 200 on ``port``;
    fails with the end of its log if it exits or does not answer within ``timeout_s`` (a bound, not a wait: a
    start takes seconds alone, minutes while parallel tests load the 2-core CI machine). ``ca_path``: the
    server serves HTTPS with a certificate for 127.0.0.1 that this CA signed (verified)."""
    import requests

    health = f"{'https' if ca_path else 'http'}://127.0.0.1:{port}/health"

    with log_path.open("a") as log:
        process = subprocess.Popen([str(MLFLOW_BIN), "server", *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=cwd, start_new_session=True)
    deadline = time.time() + timeout_s
    while True:
        try:
            if requests.get(health, timeout=5, verify=str(ca_path) if ca_path else True).status_code == 200:
                return process
        except requests.RequestException:  # not listening yet, or too busy starting to answer in time
            pass
        if process.poll() is not None or time.time() > deadline:
            stop_process_group(process)
            raise AssertionError(f"mlflow server did not come up: {log_path.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_process_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process group of ``process`` (a server's gunicorn/uvicorn workers, a Ray head's GCS,
    raylet and workers), SIGKILL it after ``grace_s`` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
