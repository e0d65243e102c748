"""``afm-ray bench``: the one home of the benchmarks. Every module of afm_ray/bench that defines a benchmark is a
subcommand, ``benchmarks/`` keeps only the GPU shell drivers, and listing the benchmarks imports none of
their heavy dependencies (every ``afm-ray`` command builds this parser)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from afm_ray.cli.bench import BENCHMARK_MODULES

from conftest import REPO


def test_every_benchmark_module_is_a_subcommand():
    defining = {f"afm_ray.bench.{path.stem}" for path in (REPO / "afm_ray" / "bench").glob("*.py")
                if any(isinstance(node, ast.FunctionDef) and node.name == "register"
                       for node in ast.parse(path.read_text()).body)}
    assert sorted(defining ^ set(BENCHMARK_MODULES)) == []
    assert sorted(path.name for path in (REPO / "benchmarks").iterdir()) == ["gpu_check.sh", "gpu_wheels.sh"]


def test_listing_the_benchmarks_imports_none_of_their_heavy_dependencies():
    heavy = ("mlflow", "ray", "rdkit", "tblite", "ppafm")
    probe = ("import argparse, json, sys\nfrom afm_ray.cli import bench\n"
             "subparsers = argparse.ArgumentParser().add_subparsers()\nbench.register(subparsers)\n"
             "commands = subparsers.choices['bench']._subparsers._group_actions[0].choices\n"
             f"print(json.dumps([sorted(commands), sorted(name for name in {heavy!r} if name in sys.modules)]))")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    commands, imported = json.loads(completed.stdout)
    assert commands == sorted(name.rpartition(".")[2].replace("_", "-") for name in BENCHMARK_MODULES)
    assert imported == []
