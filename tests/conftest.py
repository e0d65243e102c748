"""Shared fixtures (test data paths, an in-process CLI runner, trained models) and the markers of every test
(``unit``, ``ray``, ``mlflow``, ``postgres``, ``k8s``, ``slow``: the table in tests/markers.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from markers import UnmarkedModuleError, markers_for, ray_is_running, xdist_group, xdist_order

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DATA = TESTS / "data"
QM9_SAMPLE = DATA / "qm9_sample.csv"
MOLECULE_FILES = DATA / "molecules"
CONFIGS = REPO / "configs"
SHARED = Path(os.environ.get("AFM_RAY_SHARED") or REPO.parent / "shared")
"""The project's shared folder (the published ASD-AFM weights, the KubeRay schemas); ``AFM_RAY_SHARED`` overrides."""

TINY_TRAINING = ["data.split=tiny", "data.max_train_molecules=12", "data.rotations_per_molecule=2",
                 "run.batch_size=6", "run.num_figure_samples=1"]
"""Overrides of configs/quickstart.yaml that train on the 'tiny' split (:func:`tiny_database`) in seconds:
24 samples in 4 batches per epoch, one sample in the prediction figure."""

# Ray Train's controller looks at its workers every 2 s: a finished run waits up to that long to end,
# a killed worker as long to be noticed. Every test trains many tiny runs; 0.5 s saves seconds each.
# Set before any Ray starts, so local clusters (and `afm-ray` subprocesses) inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Each xdist worker starts its own Ray (and `afm-ray` subprocesses theirs): Ray's default object store of 30 %
# of the memory each would claim the machine several times over; the tests' batches need megabytes.
os.environ.setdefault("RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION", "0.04")

RAY_WAS_RUNNING = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(config, items):
    """Mark every test from tests/markers.py; a module without a row there stops the run, naming it."""
    unmarked: list[str] = []
    for item in items:
        module = Path(item.path).resolve().relative_to(TESTS).with_suffix("").as_posix()
        test = getattr(item, "originalname", item.name)
        try:
            markers = markers_for(module, test, getattr(item, "fixturenames", ()))
        except UnmarkedModuleError as error:
            unmarked.append(str(error))
            continue
        for marker in sorted(markers):
            item.add_marker(marker)
    if unmarked:
        raise pytest.UsageError("\n".join(sorted(set(unmarked))))
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:  # an xdist worker: its collection order is the order in which the tests are handed out
        items[:] = _grouped_longest_first(items, workers)


def _grouped_longest_first(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """``items`` with an ``xdist_group`` marker on tests that share an expensive fixture, reordered unit by unit
    (a group, or a test of no group) as :func:`markers.xdist_order` says; each unit's tests stay in their order."""
    units: dict[str, list[pytest.Item]] = {}  # group name or test id → its tests
    labels: dict[str, str] = {}  # → the group's or the test function's name
    for item in items:
        definitions = item._fixtureinfo.name2fixturedefs  # every fixture in the test's closure, with its scope
        module_scoped = any(d.scope in ("class", "module", "package") for ds in definitions.values() for d in ds)
        group = xdist_group(Path(item.path).stem, item.fixturenames, module_scoped)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
            _suffix_group(item, group)
        unit = group or item.nodeid
        units.setdefault(unit, []).append(item)
        labels[unit] = group or getattr(item, "originalname", item.name)
    names = list(units)
    slow = [any(item.get_closest_marker("slow") for item in units[name]) for name in names]
    order = xdist_order([(labels[name], is_slow) for name, is_slow in zip(names, slow)], workers)
    return [item for index in order for item in units[names[index]]]


def _suffix_group(item: pytest.Item, group: str) -> None:
    """What xdist's worker does for ``--dist loadgroup``: the group, after an ``@``, ends the test id that the
    scheduler reads. xdist 3.8 writes ``item._nodeid``, which pytest ≥ 9.2 no longer reads (its ids are
    structured: pytest-dev/pytest-xdist#1386), so every test would be scheduled on its own."""
    if hasattr(item, "_id") and "@" not in item.nodeid.rpartition("]")[2]:
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(f"{item.nodeid}@{group}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    item.stash[RAY_WAS_RUNNING] = ray_is_running()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Fail a ``unit`` test whose fixtures or body started Ray: its row in tests/markers.py is wrong."""
    result = yield
    if item.get_closest_marker("unit") and not item.stash.get(RAY_WAS_RUNNING, True) and ray_is_running():
        pytest.fail(f"{item.nodeid} is marked unit but started Ray: mark it ray in tests/markers.py", pytrace=False)
    return result


@pytest.fixture
def run_cli(capsys):
    """Run ``afm-ray ARGS…`` in-process; returns (exit code, stdout, stderr)."""
    from afm_ray.cli import main

    def run(*args):
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with MLflow's schema migrations applied, made once per session: a copy
    opens in 0.1 s, a new file migrates for 2 s. The stores of subprocesses, servers and the installed wheel
    are still made from nothing."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlruns.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def copied_mlflow_store(template: Path, path: Path) -> str:
    """The tracking URI of a copy of ``template`` (:func:`mlflow_store_template`) at ``path``."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def mlflow_sqlite_uri(tmp_path, mlflow_store_template) -> str:
    """The MLflow tracking URI of an empty SQLite store in the test's ``tmp_path`` (``mlruns.db``)."""
    return copied_mlflow_store(mlflow_store_template, tmp_path / "mlruns.db")


@pytest.fixture
def qm9_sample_db(tmp_path, run_cli):
    """A database built from the committed 49-molecule QM9 sample."""
    path = tmp_path / "qm9.parquet"
    code, out, err = run_cli("molecules", "build-qm9", "--qm9-csv", QM9_SAMPLE, "--out", path)
    assert code == 0, err
    return path


@pytest.fixture(scope="session")
def cpu_device():
    """The CPU OpenCL device (pocl) every simulator test runs on; skips the test where there is none."""
    from afm_ray.errors import InputError
    from afm_ray.sim.device import select_device

    try:
        return select_device("cpu")
    except InputError as exc:
        pytest.skip(f"no working CPU OpenCL device: {exc}")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole test session (ray.init costs seconds)."""
    import ray

    from afm_ray.pipeline.cluster import ensure_ray, shutdown_ray

    if ray.is_initialized():  # started by a command run in-process earlier (e.g. evaluate), on this machine's CPUs
        shutdown_ray()
    # the dashboard stays on: without it Tune hangs on placement-group cleanup (RAY-NOTES)
    ensure_ray(num_cpus=4, log_to_driver=False, quiet=True)
    yield ray
    shutdown_ray()


def qm9_sample_database(folder: Path, split: str, sizes: tuple[int, int, int]) -> Path:
    """``folder/qm9.parquet``: the 49-molecule QM9 sample with one split of (train, val, test) molecules."""
    from afm_ray.cli import main

    path = folder / "qm9.parquet"
    assert main(["molecules", "build-qm9", "--qm9-csv", str(QM9_SAMPLE), "--out", str(path)]) == 0
    assert main(["molecules", "split", str(path), "--name", split, "--sizes", *map(str, sizes)]) == 0
    return path


@pytest.fixture(scope="session")
def tiny_database(tmp_path_factory):
    """The 49-molecule QM9 sample with a small split 'tiny' (train 12 / val 6 / test 6)."""
    return qm9_sample_database(tmp_path_factory.mktemp("db"), "tiny", (12, 6, 6))


@pytest.fixture
def tiny_config(tiny_database, tmp_path, mlflow_sqlite_uri):
    """A training config small enough for a 2-core CI machine: 32×32 px scans, 12 → 8 → 6 slices."""
    from afm_ray.recipe import load_train_config

    return load_train_config(CONFIGS / "quickstart.yaml", [
        f"data.database={tiny_database}", *TINY_TRAINING, f"data.fixed_set_dir={tmp_path / 'fixed'}",
        f"run.storage_path={tmp_path / 'runs'}", "run.epochs=2", "run.name=tiny",
        f"mlflow.tracking_uri={mlflow_sqlite_uri}", "mlflow.registered_model_name=afm-test-dsh",
    ])


# -- trained models (tests/integration/test_predict.py, tests/unit/predict/test_match.py) ---------------
@pytest.fixture(scope="session")
def model_store(tmp_path_factory, mlflow_store_template):
    """(folder, MLflow tracking URI): one sqlite store that the session's trained models register in."""
    folder = tmp_path_factory.mktemp("model_store")
    return folder, copied_mlflow_store(mlflow_store_template, folder / "mlruns.db")


def _train_tiny(database, store, name: str, overrides: list[str]):
    """Train quickstart on the 'tiny' split (12 molecules) with ``overrides``; returns (config, outcome)."""
    from afm_ray.recipe import load_train_config
    from afm_ray.train.trainer import run_training

    folder, tracking_uri = store
    config = load_train_config(CONFIGS / "quickstart.yaml", [
        f"data.database={database}", *TINY_TRAINING, f"data.fixed_set_dir={folder / 'fixed'}",
        f"run.storage_path={folder / 'runs'}", f"run.name={name}", f"mlflow.tracking_uri={tracking_uri}", f"mlflow.registered_model_name=afm-test-{name}",
        *overrides])
    outcome = run_training(config, progress=False)
    return config, outcome


@dataclass(frozen=True)
class CliTraining:
    """A training run by the ``afm-ray train`` command in a process of its own."""

    config: object  # TrainConfig, as the command resolved it
    outcome: object  # TrainingOutcome, read back from the run folder and the console
    console: list[str]  # its console lines (stdout and stderr, progress-bar redraws split, colours removed)


def afm_ray_train_process(arguments: list[str], cwd: Path,
                          environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``afm-ray train ARGUMENTS…`` (the console script) in a process of its own, which starts its own local
    Ray; ``environment``: default this process's without ``RAY_ADDRESS`` (not the test session's Ray)."""
    if environment is None:
        environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([str(Path(sys.executable).parent / "afm-ray"), "train", *arguments], capture_output=True,
                          text=True, env=environment, cwd=cwd, timeout=600)


@pytest.fixture(scope="session")
def cli_trained_dsh(tiny_database, model_store) -> CliTraining:
    """``afm-ray train`` of a DSH model, 3 epochs on 32 × 32 px scans, registered as
    ``models:/afm-test-dsh@current`` in :func:`model_store`: the session's end-to-end run of the command."""
    from mlflow import MlflowClient

    from afm_ray.recipe import load_train_config
    from afm_ray.train.run_state import RUN_STATE_FILE
    from afm_ray.train.trainer import TrainingOutcome

    folder, tracking_uri = model_store
    overrides = [f"data.database={tiny_database}", *TINY_TRAINING, f"data.fixed_set_dir={folder / 'fixed'}",
                 f"run.storage_path={folder / 'runs'}", "run.name=dsh", "run.epochs=3",
                 f"mlflow.tracking_uri={tracking_uri}", "mlflow.registered_model_name=afm-test-dsh"]
    completed = afm_ray_train_process(["--config", str(CONFIGS / "quickstart.yaml"), *overrides], folder)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    console = re.sub(r"\x1b\[[0-9;]*m", "", completed.stdout + completed.stderr)  # Ray colours its prefixes
    lines = [line for line in re.split(r"[\r\n]+", console) if line.strip()]
    config = load_train_config(CONFIGS / "quickstart.yaml", overrides)
    registered = re.search(r"^registered (models:/\S+) \(version (\d+)\)", completed.stdout, re.MULTILINE)
    checkpoint = re.search(r"^done: \S+  checkpoint (.+)$", completed.stdout, re.MULTILINE)
    assert registered and checkpoint, completed.stdout[-3000:]
    run_id = json.loads((config.run.storage_path / config.run_name / RUN_STATE_FILE).read_text())["mlflow_run_id"]
    logged = MlflowClient(tracking_uri).get_run(run_id).data.metrics  # each metric's last value
    outcome = TrainingOutcome(run_id=run_id, model_uri=registered[1], model_version=registered[2],
                              checkpoint_path=checkpoint[1],
                              metrics={k: v for k, v in logged.items() if not k.startswith("test_")},
                              test_metrics={k: v for k, v in logged.items() if k.startswith("test_")})
    return CliTraining(config, outcome, lines)


@pytest.fixture(scope="session")
def trained_dsh(cli_trained_dsh):
    """(config, TrainingOutcome) of :func:`cli_trained_dsh`."""
    return cli_trained_dsh.config, cli_trained_dsh.outcome


@pytest.fixture(scope="session")
def trained_xyz(ray_session, tiny_database, model_store):
    """(config, TrainingOutcome) of an xyz model with element classes H / C / N,O,F trained 1 epoch,
    registered as ``models:/afm-test-xyz@current``. Its scans are 64 × 64 px over 8 × 8 Å: the
    network's output cell (8 px) must be the xyz descriptor's 1 Å box."""
    return _train_tiny(tiny_database, model_store, "xyz", [
        "run.epochs=1", "model.name=xyz", "model.element_classes=[[H], [C], [N, O, F]]",
        "sim.scan_size_angstrom=[8, 8]", "sim.scan_pixels=[64, 64]"])
