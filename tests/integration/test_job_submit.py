"""`ray job submit` against a local head whose resources mimic the KubeRay worker groups.

The head advertises custom resources ``sim_slot`` (simulation GPUs) and ``train_slot`` (training
GPUs), like the two GPU worker groups of ``k8s/``; the job's config pins simulation actors to
``sim_slot`` and the Ray Train worker to ``train_slot``, and the test checks where they ran.
The job runs with ``--verbose``, as one would to debug it: Ray's own console output (Train worker and
controller logs) then reaches the job's log, which the quiet default keeps out (tests/integration/test_train.py).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_TRAINING
from servers import free_port, stop_process_group



# The head and the job CLI run without Ray's token authentication (a loopback-only test cluster).
ENVIRONMENT = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}


@pytest.fixture
def ray_head(tmp_path):
    ray_bin = Path(sys.executable).parent / "ray"
    # Ray's unix sockets live under the temp dir; pytest's tmp paths exceed the 107-byte socket limit.
    short_temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")
    dashboard_port = free_port()
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=4",
         "--resources", json.dumps({"sim_slot": 2, "train_slot": 1}), "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--temp-dir={short_temp_dir}",
         # fixed defaults (agent 52365, client 10001, …) collide with the test session's own Ray
         *(f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                 "metrics-export-port", "runtime-env-agent-port",
                                                 "ray-client-server-port", "node-manager-port",
                                                 "object-manager-port")),
         "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=ENVIRONMENT)
    address = f"http://127.0.0.1:{dashboard_port}"
    # ready when it runs a job: the job API answers before the head's agent can ("No available agent")
    deadline = time.time() + 240
    while time.time() < deadline:
        probe = subprocess.run([str(ray_bin), "job", "submit", "--address", address, "--", "true"],
                               capture_output=True, text=True, env=ENVIRONMENT)
        if probe.returncode == 0:
            break
        time.sleep(0.5)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(short_temp_dir, ignore_errors=True)
        pytest.fail(f"local Ray head did not come up or accepts no jobs: {probe.stderr.strip().splitlines()[-1:]}")
    yield ray_bin, address
    # `ray start --block` takes over 30 s to stop its processes on SIGTERM; its whole session (GCS,
    # raylet, workers) is killed after a short grace instead
    stop_process_group(head, grace_s=3)
    shutil.rmtree(short_temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_training_on_the_named_resources(ray_head, tiny_database, tmp_path):
    ray_bin, address = ray_head
    working_dir = tmp_path / "job"
    shutil.copytree(REPO / "configs", working_dir / "configs")
    command = [
        str(ray_bin), "job", "submit", "--address", address, "--working-dir", str(working_dir), "--",
        str(Path(sys.executable).parent / "afm-ray"), "train", "--verbose", "--config", "configs/quickstart.yaml",
        f"data.database={tiny_database}", *TINY_TRAINING, "data.rotations_per_molecule=1",
        f"data.fixed_set_dir={tmp_path / 'fixed'}", f"run.storage_path={tmp_path / 'runs'}", "run.epochs=1",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}", "mlflow.registered_model_name=afm-job-dsh",
        "pipeline.sim_resources={sim_slot: 1}", "scaling.resources_per_worker={train_slot: 1}",
    ]
    job = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENVIRONMENT)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    placements = [line for line in job.stdout.splitlines() if line.startswith("simulation actor")]
    assert len(placements) == 2 and all("'sim_slot': 1.0" in line for line in placements), job.stdout[-3000:]
    assert "registered models:/afm-job-dsh@current" in job.stdout
    console = re.sub(r"\x1b\[[0-9;]*m", "", job.stdout)  # Ray colours its prefixes
    assert re.search(r"^\((RayTrainWorker|TrainController)", console, re.MULTILINE), job.stdout[-3000:]
    assert "Checkpoint successfully created" in console, job.stdout[-3000:]
