"""Test servers in process groups of their own: real ``mlflow server`` processes (outage, PostgreSQL, basic
auth), and stopping such a group (a ``ray start`` head too)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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

AS_DEPLOYED = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""Server settings of k8s/base/mlflow.yaml that the test servers share: no job runner (eight processes that
start and poll for jobs this project never submits)."""


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


def live_processes() -> Iterator[tuple[Path, list[str]]]:
    """(``/proc/PID``, the fields of its ``stat`` after the command name) of every process (Linux): index 0 is
    the state, 3 the session, 11 and 12 the user and system CPU ticks, 19 the start tick."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield entry, (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:  # ended meanwhile
                continue


def session_memory_bytes(session_id: int) -> int:
    """The memory of every live process in session ``session_id`` (a server started in a session of its own),
    summed as proportional set sizes: a page shared by N of them counts 1/N to each, as a container's memory
    limit counts it once."""
    total_kib = 0
    for entry, fields in live_processes():
        if int(fields[3]) != session_id:
            continue
        try:
            rollup = (entry / "smaps_rollup").read_text()
        except OSError:  # ended meanwhile
            continue
        total_kib += sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return total_kib * 1024


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
