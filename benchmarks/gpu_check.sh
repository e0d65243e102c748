#!/usr/bin/env bash
# The GPU check of the simulation actor (issue 14): simulator, a whole training batch stage by stage, and (with Ray)
# a short pipeline run, on an NVIDIA GPU through its OpenCL driver. Prints the figures; under 8 minutes with installs.
#
# On the device tool's nvidia-h200 machine (Python 3.12 with numpy, torch, pyarrow, PyYAML, tqdm, h5py; nothing can
# be downloaded there):
#   here:  bash benchmarks/gpu_wheels.sh                       # the missing wheels into .whl/ (git-ignored)
#   there: bash benchmarks/gpu_check.sh                        # run with carry [".whl"], timeout_s 540
# Anywhere with afm-ray installed: SKIP_INSTALL=1 bash benchmarks/gpu_check.sh [DEVICE]  (DEVICE default gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-gpu}
started=$SECONDS
export PYTHONUNBUFFERED=1
if [ -z "${SKIP_INSTALL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/afm-site .whl/*.whl
    export PYTHONPATH="/tmp/afm-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# pyopencl's wheel brings an ICD loader; point it at NVIDIA's OpenCL driver when no vendor file names it
if [ -z "${OCL_ICD_VENDORS:-}" ] && ! grep -qs nvidia /etc/OpenCL/vendors/*.icd; then
    driver=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 -name 'libnvidia-opencl.so*' 2>/dev/null | head -1 || true)
    if [ -n "$driver" ]; then
        mkdir -p /tmp/afm-icd && echo "$driver" > /tmp/afm-icd/nvidia.icd && export OCL_ICD_VENDORS=/tmp/afm-icd
    fi
fi
afm() { python3 -m afm_ray "$@"; }
echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"
python3 -c "from afm_ray.sim.device import list_devices, describe; print('\n'.join(describe(d) for d in list_devices()))"
echo "== installs and checks took $((SECONDS - started)) s"
echo "== bench sim (stacks/s by batch size)"
afm bench sim --device "$device" --batch-sizes 1 32 128 --repeats 5
for model in dsh es; do
    echo "== bench batch --model $model (one actor's batch of 32, stage by stage)"
    afm bench batch --model "$model" --device "$device" --batch-size 32 --repeats 5 --actors-per-device 2
done
echo "== bench batch --model dsh --batch-size 128"
afm bench batch --model dsh --device "$device" --batch-size 128 --repeats 3
if python3 -c "import ray, mlflow" 2>/dev/null && [ -f data/qm9.parquet ]; then
    echo "== bench pipeline (short: quickstart data at 128 × 128 px, 1 and 2 actors on the GPU)"
    afm bench pipeline --actors 1,2 --batches 8 pipeline.opencl_device="$device" "sim.scan_pixels=[128, 128]"
else
    echo "== bench pipeline skipped: needs Ray and MLflow (Ray's wheel exceeds what a device call carries) and data/qm9.parquet"
fi
echo "== done in $((SECONDS - started)) s"
