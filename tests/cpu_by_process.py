"""Where the test suite's CPU time goes: run a command, print the CPU seconds of every process it (or anything
else on the machine) ran, summed by kind: a Ray actor's class, a Ray daemon, an MLflow server, a test process.

    python tests/cpu_by_process.py [--top 40] -- python -m pytest -q

Linux only: it reads ``/proc/PID/stat`` (``tests/servers.py``) every ``--interval`` seconds, so a process's last fraction of a
second and processes shorter than the interval are lost (a few % of the total); CPU that processes had
used before the command started is not counted. On the 2-core CI machine the suite keeps both cores busy,
so the total CPU seconds divided by two is the floor of its wall time.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time

from servers import live_processes

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# a substring of a command line → its kind (the first that matches), for processes that are not Ray workers
KINDS = (("cpu_by_process.py", "this sampler"), ("default_worker.py", "Ray worker (idle)"), ("gcs_server", "Ray GCS"),
         ("raylet", "Ray raylet"), ("dashboard/agent.py", "Ray dashboard agent"), ("dashboard.py", "Ray dashboard"),
         ("multiprocessing.forkserver", "Ray dashboard modules"), ("log_monitor.py", "Ray log monitor"),
         ("runtime_env/agent", "Ray runtime-env agent"), ("autoscaler/_private/monitor.py", "Ray monitor"),
         ("huey_consumer", "MLflow job consumer"), ("mlflow.server.jobs", "MLflow job runner"),
         ("uvicorn", "MLflow server worker"), ("bin/mlflow server", "MLflow server"), ("postgres", "PostgreSQL"),
         ("-m pip", "pip"), ("bin/afm-ray train", "afm-ray train"), ("bin/afm-ray tune", "afm-ray tune"),
         ("bin/afm-ray", "afm-ray (other)"), ("bin/ray ", "ray CLI"), ("exec(eval(sys.stdin", "pytest worker"),
         ("pytest", "pytest"))


def kind_of(command_line: str) -> str:
    if command_line.startswith("ray::"):  # a Ray worker's title: ray::[NAME:]Class.method
        title = command_line.split()[0].removeprefix("ray::")
        return "Ray actor " + re.sub(r"\..*$", "", title.rpartition(":")[2])
    return next((kind for marker, kind in KINDS if marker in command_line), command_line.split()[0])


def read_processes() -> dict[tuple[int, int], tuple[float, str]]:
    """(pid, start tick) → (CPU seconds so far, command line) of every readable process."""
    processes = {}
    for entry, fields in live_processes():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended meanwhile
            continue
        if command:  # kernel threads have none
            processes[int(entry.name), int(fields[19])] = ((int(fields[11]) + int(fields[12])) / TICKS_PER_S, command)
    return processes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between two looks at /proc")
    parser.add_argument("--top", type=int, default=40, help="kinds to print, most CPU first")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("name a command after --")
    before = {key: cpu for key, (cpu, _) in read_processes().items()}
    used: dict[tuple[int, int], tuple[float, str]] = {}
    started = time.monotonic()
    child = subprocess.Popen(command)
    while child.poll() is None:
        for key, (cpu, line) in read_processes().items():
            # a Ray worker's title changes when it becomes an actor: keep the most telling one
            title = line if line.startswith("ray::") or key not in used else used[key][1]
            used[key] = (cpu - before.get(key, 0.0), title)
        time.sleep(args.interval)
    wall_s = time.monotonic() - started
    by_kind: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for cpu, line in used.values():
        kind = kind_of(line)
        by_kind[kind] += cpu
        count[kind] += 1
    total = sum(by_kind.values())
    print(f"\n{'CPU s':>9} {'share':>6} {'procs':>6}  kind")
    for kind, cpu in by_kind.most_common(args.top):
        print(f"{cpu:9.1f} {cpu / total if total else 0.0:6.1%} {count[kind]:6d}  {kind}")
    print(f"{total:9.1f} CPU s in all, {wall_s:.0f} s wall, {os.cpu_count()} cores: "
          f"{total / wall_s:.2f} cores busy on average; exit code {child.returncode}")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
