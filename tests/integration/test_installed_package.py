"""afm-ray installed from its wheel into a fresh virtualenv, run from an empty directory (no checkout in reach).

The wheel is built once from a copy of the package's sources; the virtualenv reuses this interpreter's
site-packages for the dependencies (torch, Ray, MLflow: nothing is downloaded) but not its afm-ray, and no
``PYTHONPATH`` leads back to the checkout. The shipped configs must come with the wheel: ``configs list``,
``models import-asdafm`` with its default preset and ``train --config quickstart`` all work by preset name.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONFIGS, REPO, SHARED, TINY_TRAINING

PUBLISHED_LIGHT = SHARED / "asd-afm" / "model_light.h5"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin`` folder of a fresh virtualenv that holds afm-ray installed from a freshly built wheel."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("afm_ray", "configs", "tune"):  # afm_ray/presets_data links to configs/ and tune/
        shutil.copytree(REPO / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--wheel-dir", str(wheels), str(source)], check=True, cwd=source, timeout=300)
    (wheel,) = wheels.glob("afm_ray-*.whl")
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True, timeout=120)
    # this interpreter's packages as a fallback, after the virtualenv's own (its .pth files are not run,
    # so an editable afm-ray installed there stays out of reach)
    purelib = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                    "--quiet", str(wheel)], check=True, env=_outside_environment(), timeout=300)
    return venv / "bin"


def _outside_environment() -> dict[str, str]:
    """This process's environment without what would lead back to the checkout or the test session's Ray."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "RAY_ADDRESS")}


def afm_ray(bin_dir: Path, cwd: Path, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    completed = subprocess.run([str(bin_dir / "afm-ray"), *arguments], cwd=cwd, capture_output=True, text=True,
                               env=_outside_environment(), timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


def test_installed_wheel_ships_the_configs(installed, tmp_path):
    imported = subprocess.run([installed / "python", "-c", "import afm_ray; print(afm_ray.__file__)"], cwd=tmp_path,
                              capture_output=True, text=True, env=_outside_environment(), check=True)
    assert Path(imported.stdout.strip()).is_relative_to(installed.parent), imported.stdout
    listed = afm_ray(installed, tmp_path, "configs", "list").stdout.splitlines()
    shipped = {tuple(line.split()[:2]) for line in listed}
    assert {("train", "quickstart"), ("train", "published_asdafm"), ("sim", "sim"), ("tune", "xyz")} <= shipped
    assert len(listed) == len(list(CONFIGS.glob("*.yaml"))) + len(list((CONFIGS.parent / "tune").glob("*.yaml")))
    shown = afm_ray(installed, tmp_path, "configs", "show", "quickstart").stdout
    assert shown == (CONFIGS / "quickstart.yaml").read_text(encoding="utf-8")
    assert not list(tmp_path.iterdir())  # nothing written where it ran


@pytest.mark.skipif(not PUBLISHED_LIGHT.is_file(), reason=f"published weights not found at {PUBLISHED_LIGHT}")
def test_installed_imports_published_weights_from_any_directory(installed, tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}"
    (tmp_path / "store").mkdir()
    work = tmp_path / "empty"
    work.mkdir()
    completed = afm_ray(installed, work, "models", "import-asdafm", str(PUBLISHED_LIGHT), "--name", "asdafm-installed",
                        "--tracking-uri", tracking_uri)
    assert "registered models:/asdafm-installed@published (version 1" in completed.stdout
    shown = afm_ray(installed, work, "models", "show", "asdafm-installed", "--tracking-uri", tracking_uri).stdout
    assert "dsh" in shown and "128×128 px" in shown, shown


def test_installed_trains_the_quickstart_by_preset_name(installed, tiny_database, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    completed = afm_ray(installed, work, "train", "--config", "quickstart", f"data.database={tiny_database}",
                        *TINY_TRAINING, "run.epochs=1", f"data.fixed_set_dir={tmp_path / 'fixed'}",
                        f"run.storage_path={tmp_path / 'runs'}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
                        "mlflow.registered_model_name=afm-installed-dsh", timeout=600)
    assert "registered models:/afm-installed-dsh@current (version 1)" in completed.stdout, completed.stdout[-3000:]
