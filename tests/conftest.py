"""Shared fixtures: test data paths and an in-process CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
QM9_SAMPLE = DATA / "qm9_sample.csv"
MOLECULE_FILES = DATA / "molecules"


@pytest.fixture
def run_cli(capsys):
    """Run ``afm-ray ARGS…`` in-process; returns (exit code, stdout, stderr)."""
    from afm_ray.cli import main

    def run(*args):
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def qm9_sample_db(tmp_path, run_cli):
    """A database built from the committed 49-molecule QM9 sample."""
    path = tmp_path / "qm9.parquet"
    code, out, err = run_cli("molecules", "build-qm9", "--qm9-csv", QM9_SAMPLE, "--out", path)
    assert code == 0, err
    return path
