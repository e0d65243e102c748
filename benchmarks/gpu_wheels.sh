#!/usr/bin/env bash
# Fetch, on a machine with pip access, the wheels benchmarks/gpu_check.sh installs on the GPU machine: the packages
# afm-ray's simulator benchmarks need beyond that machine's image (Python 3.12 with numpy, torch, pyarrow, PyYAML,
# tqdm, scipy, matplotlib, h5py; nothing can be downloaded there). Versions: those this project is tested with.
# Ray and MLflow are not needed: gpu_check.sh's steps (devices, bench sim|batch|models) import neither (Ray's
# ~70 MB wheel would not fit the 64 MiB a device call may carry).
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=(pyopencl==2026.1.4 pytools==2026.1.1 platformdirs==4.14.8 siphash24==1.9 pydantic==2.14.4
        pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 ase==3.29.0)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl "${wheels[@]}"
ls -l .whl
