"""benchmarks/gpu_check.sh, the script a first GPU run depends on: its quick CPU dry run, and its diagnosis of a
broken NVIDIA OpenCL driver (a fake vendor directory), so that the script cannot rot unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO as ROOT
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_gpu_check(device: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    """``SKIP_INSTALL=1 QUICK=1 bash benchmarks/gpu_check.sh DEVICE`` with this interpreter's ``python3`` first on PATH."""
    environment = {key: value for key, value in os.environ.items() if key not in ("OCL_ICD_VENDORS", "OCL_ICD_DEBUG")}
    environment.update(SKIP_INSTALL="1", QUICK="1", OUT=str(out), PYTHONPATH=str(ROOT),
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}", **env)
    return subprocess.run(["bash", str(SCRIPT), device], env=environment, capture_output=True, text=True, timeout=300)


def test_quick_cpu_dry_run_passes_every_step_and_summarises(tmp_path):
    result = run_gpu_check("cpu", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("devices", "bench sim", "bench batch dsh", "bench batch es", "bench models",
                 "bench train-step dsh"):
        assert f"  {step}: ok (" in result.stdout, step
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("== SUMMARY: DSH: ") and "samples/s per actor alone; per device: 2 actors " in summary
    assert "0 of 6 steps failed" in summary
    assert "overlapped (depth 2)" in (tmp_path / "05-bench-train-step-dsh.txt").read_text()
    log = (tmp_path / "gpu_check.txt").read_text()
    assert summary in log and "host work (CPU outside the wait)" in log
    assert (tmp_path / "02-bench-batch-dsh.txt").read_text().count("2 actors on one device: ") == 1


def test_a_broken_nvidia_driver_is_diagnosed_and_the_other_steps_still_run(tmp_path):
    vendor = tmp_path / "nvidia"
    vendor.mkdir()
    broken = vendor / "libnvidia-opencl.so.1"
    broken.write_bytes(b"not a shared library")
    (vendor / "lib32").mkdir()
    old = vendor / "lib32" / "libnvidia-opencl.so.1"
    old.write_bytes(b"\x7fELF\x01\x01\x01" + bytes(57))  # a 32-bit ELF header: never loadable by a 64-bit Python
    result = run_gpu_check("gpu", tmp_path / "out", NVIDIA_LIB_DIRS=str(vendor))
    out = result.stdout
    # devices, bench sim, both bench batch fail; bench models and train-step run on the CPU (train-step's replayed
    # batches on any OpenCL device: here the system's CPU one)
    assert result.returncode == 4, out[-3000:]
    assert f"[??-bit] {broken}: registered as afm-nvidia-0.icd" in out
    assert f"[32-bit] {old}: skipped: 32-bit" in out
    diagnosis = out[out.index("-- no usable 'gpu' OpenCL device"):]
    assert str(broken) in diagnosis and "OCL_ICD_DEBUG=7" in diagnosis
    assert f"Loading ICD '{broken}'" in diagnosis and "error while dlopening" in diagnosis
    for step in ("bench sim", "bench batch dsh", "bench batch es"):
        assert f"  {step}: FAILED (exit 2" in out, step  # afm-ray's exit status for bad input: no GPU device
    assert "  bench models: ok (" in out and "  bench train-step dsh: ok (" in out
    assert out.strip().splitlines()[-1].startswith("== SUMMARY: DSH: no figures (the bench batch step failed); "
                                                   "4 of 6 steps failed")
    assert diagnosis.splitlines()[0] in (tmp_path / "out" / "gpu_check.txt").read_text()
