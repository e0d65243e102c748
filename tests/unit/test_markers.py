"""The marker table (tests/markers.py) covers every test module, names only tests that exist, and the
conftest that applies it fails loudly: on a module without a row, and on a ``unit`` test that starts Ray."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
from conftest import REPO, TESTS
from markers import (EXPENSIVE, FIXTURE_MARKERS, LONGEST_FIRST, MARKERS, MODULE_MARKERS, SHARED_TRAININGS_GROUP,
                     TEST_MARKERS, UnmarkedModuleError, markers_for, ray_is_running, xdist_order)


def defined_tests(module: str) -> set[str]:
    tree = ast.parse((TESTS / f"{module}.py").read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")}


def test_every_test_module_has_a_row_and_every_row_a_module():
    modules = {path.relative_to(TESTS).with_suffix("").as_posix() for path in TESTS.rglob("test_*.py")}
    assert sorted(modules - MODULE_MARKERS.keys()) == [], "add these modules to tests/markers.py MODULE_MARKERS"
    assert sorted(MODULE_MARKERS.keys() - modules) == [], "rows for modules that no longer exist"


@pytest.mark.parametrize("module", sorted(TEST_MARKERS))
def test_per_test_rows_name_existing_tests(module):
    assert module in MODULE_MARKERS
    assert sorted(TEST_MARKERS[module].keys() - defined_tests(module)) == [], f"stale rows in TEST_MARKERS[{module!r}]"


def test_every_collected_test_has_a_marker(request):
    """Over this run's selection: every test of a full ``pytest`` run, the unit ones under ``-m unit``."""
    unmarked = [item.nodeid for item in request.session.items
                if not {marker.name for marker in item.iter_markers()} & MARKERS]
    assert unmarked == []


def test_the_table_uses_exactly_the_registered_markers():
    pytest_options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    registered = {line.split(":")[0] for line in pytest_options["markers"]}
    assert registered == MARKERS and "--strict-markers" in pytest_options["addopts"]
    rows = [*MODULE_MARKERS.values(), *FIXTURE_MARKERS.values(),
            *(markers for tests in TEST_MARKERS.values() for markers in tests.values())]
    assert all(row <= MARKERS - {"unit"} for row in rows), "unit is derived, never written in the table"


def test_unit_is_exactly_the_tests_that_are_none_of_the_expensive_kinds():
    assert markers_for("unit/test_elements", "test_table_covers_required_elements", ["tmp_path"]) == {"unit"}
    assert markers_for("k8s/test_rendering", "test_every_yaml_file_parses", []) == {"k8s", "unit"}
    assert markers_for("integration/test_train", "test_two_ddp_ranks_share_actors_validation_and_metrics_and_resume_when_killed",
                       []) == {"ray", "slow"}
    # a fixture that starts Ray makes any test ray, whatever its module's row
    assert markers_for("unit/test_elements", "test_new", ["trained_dsh", "cli_trained_dsh"]) == {"ray", "slow"}
    for module, row in MODULE_MARKERS.items():
        assert ("unit" in markers_for(module, "test_any", [])) == (not row & EXPENSIVE)


def test_a_module_without_a_row_is_named():
    with pytest.raises(UnmarkedModuleError, match=r"tests/unit/test_brand_new\.py has no row"):
        markers_for("unit/test_brand_new", "test_anything", [])


def test_ray_running_is_read_without_importing_ray(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert not ray_is_running() and "ray" not in sys.modules
    with monkeypatch.context() as patch:  # undone before the conftest's check for a unit test starting Ray
        patch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
        assert ray_is_running()


STARTS_RAY = '''
import sys, types

def start_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
'''


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest in ``folder`` holding this repository's pyproject.toml, conftest.py and markers.py; in one process
    unless ``args`` ask for xdist workers (``-n 2``)."""
    shutil.copy(REPO / "pyproject.toml", folder / "pyproject.toml")
    (folder / "tests").mkdir(exist_ok=True)
    for name in ("conftest.py", "markers.py"):
        shutil.copy(TESTS / name, folder / "tests" / name)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "0", *args],
                          cwd=folder, capture_output=True, text=True, timeout=300)


def test_conftest_fails_a_unit_test_that_starts_ray_and_stops_on_an_unmarked_module(tmp_path):
    tests = tmp_path / "tests"
    for folder in ("unit", "integration"):
        (tests / folder).mkdir(parents=True)
    # unit/test_elements is all unit; in integration/test_train this name is a ray test
    (tests / "unit" / "test_elements.py").write_text(STARTS_RAY + '''
def test_table_covers_required_elements(monkeypatch):
    start_ray(monkeypatch)

def test_known_values_from_cited_sources():
    pass
''')
    (tests / "integration" / "test_train.py").write_text(STARTS_RAY + '''
def test_two_ddp_ranks_share_actors_validation_and_metrics_and_resume_when_killed(monkeypatch):
    start_ray(monkeypatch)
''')
    result = run_pytest(tmp_path, "-m", "unit")
    assert "1 failed, 1 passed, 1 deselected" in result.stdout, result.stdout + result.stderr
    assert "unit/test_elements.py::test_table_covers_required_elements is marked unit but started Ray" in result.stdout

    (tests / "unit" / "test_brand_new.py").write_text("def test_anything():\n    pass\n")
    result = run_pytest(tmp_path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR and "tests/unit/test_brand_new.py has no row" in result.stderr


def test_longest_first_names_existing_tests_or_groups():
    tests = {name for module in MODULE_MARKERS for name in defined_tests(module)}
    module_groups = {module.rpartition("/")[2] for module in MODULE_MARKERS}  # a group is named by its file's stem
    assert sorted(set(LONGEST_FIRST) - tests - module_groups - {SHARED_TRAININGS_GROUP}) == []


def test_xdist_order_starts_the_longest_units_each_with_a_cheap_one_behind_it():
    units = [("a", False), ("b", False), (LONGEST_FIRST[2], True), ("c", True), (LONGEST_FIRST[0], True),
             ("d", False), ("e", False), (LONGEST_FIRST[1], True)]
    order = [units[index][0] for index in xdist_order(units, workers=2)]
    assert order == [LONGEST_FIRST[0], LONGEST_FIRST[1], "a", "b", LONGEST_FIRST[2], "c", "d", "e"]


def test_under_xdist_shared_fixtures_are_set_up_once(tmp_path):
    """Two workers: the tests of a module with a module-scoped fixture (a server, say) run on one worker, which
    sets it up once; so do the users of the session's trained models."""
    tests = tmp_path / "tests" / "integration"
    tests.mkdir(parents=True)
    setups = tmp_path / "setups"
    fixture = '''
import os, pytest

@pytest.fixture(scope="{scope}")
def {name}():
    with open({setups!r}, "a") as log:
        log.write("{name} " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")

@pytest.mark.parametrize("n", range(6))
def test_uses_it({name}, n):
    pass
'''
    (tests / "test_mlflow_auth.py").write_text(fixture.format(scope="module", name="server", setups=str(setups)))
    (tests / "test_predict.py").write_text(fixture.format(scope="session", name="trained_xyz", setups=str(setups)))
    (tests / "test_resume.py").write_text("def test_a_quick_one():\n    pass\n")
    result = run_pytest(tmp_path, "-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder")
    assert "13 passed" in result.stdout, result.stdout + result.stderr
    names = [line.split()[0] for line in setups.read_text().splitlines()]
    assert sorted(names) == ["server", "trained_xyz"], setups.read_text()  # each once, not once per worker
