"""tests/cpu_by_process.py: the CPU seconds of a command's processes, by kind."""

import subprocess
import sys

from conftest import TESTS
from cpu_by_process import kind_of


def test_kinds_name_ray_actors_by_class_and_daemons_by_role():
    assert kind_of("ray::afm-ray-sim-1a2b-3:SimulationActor.make_batch") == "Ray actor SimulationActor"
    assert kind_of("ray::TrainController.__init__") == "Ray actor TrainController"
    assert kind_of("ray::IDLE") == "Ray actor IDLE"
    assert kind_of("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --node-id=x") == "Ray raylet"
    assert kind_of("/venv/bin/python -m huey.bin.huey_consumer mlflow.server.jobs._huey_consumer.huey_instance") == \
        "MLflow job consumer"
    assert kind_of("/usr/bin/sleep 1") == "/usr/bin/sleep"


def test_a_busy_child_is_counted_and_its_exit_code_returned():
    busy = "import time\nend = time.process_time() + 1.5\nwhile time.process_time() < end: pass\nraise SystemExit(3)"
    completed = subprocess.run([sys.executable, str(TESTS / "cpu_by_process.py"), "--interval", "0.1", "--",
                                sys.executable, "-c", busy], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 3, completed.stderr
    lines = completed.stdout.strip().splitlines()  # a header, a row per kind, the total
    rows = {line.split(maxsplit=3)[3]: float(line.split()[0]) for line in lines[1:-1]}
    assert 1.2 <= rows[sys.executable] <= 2.0, completed.stdout  # 1.5 CPU-s, one look every 0.1 s
    assert "CPU s in all" in lines[-1] and "exit code 3" in lines[-1]
