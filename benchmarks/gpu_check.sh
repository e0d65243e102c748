#!/usr/bin/env bash
# The GPU check of the simulation actor and the training step (issues 14, 25, 26): which OpenCL devices exist, then
# the simulator, a DSH training batch at 1, 2 and 4 actors per device, an ES batch, the models' forward/backward and
# the DSH training step by stage (bench train-step --source local), each step on its own (a
# failure is reported and the next step still runs), most valuable first so that a run cut short still says the
# most. Everything also goes to $OUT/gpu_check.txt (each step's output to $OUT/NN-step.txt); the last line is a
# summary: DSH samples/s per actor and per device, and the actors per device that reach 1,000 samples/s.
# Exit status: the number of failed steps (0: all passed).
#
# On the device tool's nvidia-h200 machine (Python 3.12 with numpy, torch, pyarrow, PyYAML, tqdm, h5py; nothing can
# be downloaded there), about 4–5 minutes of steps plus the machine's start:
#   here:  bash benchmarks/gpu_wheels.sh                       # the missing wheels into .whl/ (git-ignored)
#   there: bash benchmarks/gpu_check.sh                        # run with carry [".whl"], timeout_s 480
# Anywhere with afm-ray installed: SKIP_INSTALL=1 bash benchmarks/gpu_check.sh [DEVICE]   (DEVICE default gpu;
# `cpu` is the dry run, ~6 min on 2 cores). QUICK=1: 16 × 16 px scans and tiny batches (the test suite's dry run).
# NVIDIA_LIB_DIRS: where to look for NVIDIA's OpenCL driver (libnvidia-opencl.so*), space-separated.
set -uo pipefail
cd "$(dirname "$0")/.."
device=${1:-gpu}
out=${OUT:-/tmp/afm-gpu-check}
mkdir -p "$out"
log="$out/gpu_check.txt"
started=$SECONDS
export PYTHONUNBUFFERED=1
if [ -n "${QUICK:-}" ]; then
    size=16 batch=2 repeats=1 sim_batches=(2) actors=(2) model_batch=2 models=(dsh) step_rounds=(--steps 2 --rounds 1 --warmup 1)
else
    size=128 batch=32 repeats=3 sim_batches=(1 32 128) actors=(1 2 4) model_batch=8 models=(dsh es xyz)
    step_rounds=(--steps 10 --rounds 2 --warmup 2)
fi
# seconds each step may take on an H200 (install, devices, sim, DSH batch, ES batch, models, train step: 345 s), times
# LIMIT_SCALE (default 1 on a GPU, 10 on a CPU, where the same work takes minutes)
scale=${LIMIT_SCALE:-$([ "$device" = cpu ] && echo 10 || echo 1)}
limit() { echo $(($1 * scale)); }
steps=() failures=0
export device out

step() {  # step NAME TIMEOUT_S COMMAND...: run one step, its output to the console, the log and its own file
    local name=$1 limit=$2 begun=$SECONDS status
    shift 2
    local file
    file="$out/$(printf '%02d' "${#steps[@]}")-${name// /-}.txt"
    echo "== $name (at most ${limit} s)"
    if [ "$(type -t "$1")" = function ]; then  # a function of this script: in a shell of its own, so timeout can end it
        timeout --kill-after=5 "$limit" bash -c "$(declare -f "$1"); $*" 2>&1 | tee "$file"
    else
        timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$file"
    fi
    status=${PIPESTATUS[0]}
    if [ "$status" -eq 0 ]; then
        steps+=("$name: ok ($((SECONDS - begun)) s)")
    else
        [ "$status" -eq 124 ] && echo "-- $name: cut off after ${limit} s"
        steps+=("$name: FAILED (exit $status, $((SECONDS - begun)) s)")
        failures=$((failures + 1))
    fi
    echo "-- $name: exit $status in $((SECONDS - begun)) s"
}

install_wheels() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/afm-site .whl/*.whl
}

nvidia_candidates() {  # every libnvidia-opencl.so* under NVIDIA_LIB_DIRS, one per real file, 64-bit ones first
    local dirs=${NVIDIA_LIB_DIRS:-/usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/cuda /run/nvidia}
    local path real class seen=" "
    # shellcheck disable=SC2086
    for path in $(find -L $dirs -name 'libnvidia-opencl.so*' 2>/dev/null | sort); do
        real=$(readlink -f "$path")
        case "$seen" in *" $real "*) continue ;; esac
        seen="$seen$real "
        class=$(od -An -tu1 -j4 -N1 "$real" 2>/dev/null | tr -d ' ')  # ELF class byte: 1 = 32-bit, 2 = 64-bit
        case "$class" in
            2) echo "64 $path" ;;
            1) echo "32 $path" ;;
            *) echo "?? $path" ;;
        esac
    done | sort -r
}

register_opencl() {  # one .icd file per NVIDIA candidate (64-bit first) beside the system's vendors
    if [ -n "${OCL_ICD_VENDORS:-}" ]; then
        echo "OpenCL vendors: OCL_ICD_VENDORS=$OCL_ICD_VENDORS (set by the caller)"
        return
    fi
    candidates=$(nvidia_candidates)
    if [ -z "$candidates" ]; then
        echo "OpenCL vendors: /etc/OpenCL/vendors ($(ls /etc/OpenCL/vendors 2>/dev/null | tr '\n' ' ')); no libnvidia-opencl.so* found"
        return
    fi
    local icd_dir=/tmp/afm-icd index=0 bits path note
    rm -rf "$icd_dir" && mkdir -p "$icd_dir"
    cp /etc/OpenCL/vendors/*.icd "$icd_dir"/ 2>/dev/null
    echo "NVIDIA OpenCL candidates (64-bit first; each registered with its own .icd file):"
    while read -r bits path; do
        note="registered as afm-nvidia-$index.icd"
        if [ "$bits" = 32 ]; then
            note="skipped: 32-bit, cannot load into a 64-bit Python"
        else
            echo "$path" > "$icd_dir/afm-nvidia-$index.icd"
            index=$((index + 1))
        fi
        echo "  [$bits-bit] $path: $note"
    done <<< "$candidates"
    export OCL_ICD_VENDORS=$icd_dir candidates
    echo "OpenCL vendors: OCL_ICD_VENDORS=$icd_dir ($(ls "$icd_dir" | tr '\n' ' '))"
}

check_devices() {  # platforms and devices; on no device of the wanted kind, the loader's own diagnosis
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "no nvidia-smi"
    python3 - "$device" <<'EOF' && return 0
import sys
import pyopencl as cl
from afm_ray.sim.device import can_build, describe, list_devices, select_device
devices = list_devices()
for index, dev in enumerate(devices):
    print(f"[{index}] {describe(dev)} ({cl.device_type.to_string(dev.type)}, {dev.global_mem_size / 2**30:.0f} GiB, "
          f"{dev.max_compute_units} compute units, builds kernels: {can_build(dev)})")
print(f"{len(devices)} OpenCL devices; '{sys.argv[1]}' selects: {describe(select_device(sys.argv[1]))}")
EOF
    echo "-- no usable '$device' OpenCL device. NVIDIA candidates tried:"
    echo "${candidates:-  (none found under ${NVIDIA_LIB_DIRS:-the default directories})}"
    echo "-- the ICD loader's own account (OCL_ICD_DEBUG=7; which .icd files, which libraries, why they failed):"
    local debug
    debug=$(OCL_ICD_DEBUG=7 python3 -c "import pyopencl; print(pyopencl.get_platforms())" 2>&1)
    grep -E "Considering|Loading ICD|error|dlopen|valid vendor|Platform|Traceback|Error" <<< "$debug" | head -60 \
        || tail -40 <<< "$debug"
    return 1
}

summarise() {  # the one-line summary from the DSH batch step's output
    local file rates one
    file=$(ls "$out"/*-bench-batch-dsh.txt 2>/dev/null | head -1)
    one=$(grep -oP '^actor: \K[0-9.]+(?= samples/s)' "$file" 2>/dev/null)
    rates=$(grep -oP '^\d+(?= actors? on one device)|(?<=on one device: )[0-9.]+' "$file" 2>/dev/null | paste -sd' ')
    python3 - "${one:-}" "$rates" <<'EOF'
import sys
one, pairs = sys.argv[1], sys.argv[2].split()
rates = {int(n): float(r) for n, r in zip(pairs[::2], pairs[1::2])}
if not one:
    print("DSH: no figures (the bench batch step failed)")
    sys.exit()
per_device = ", ".join(f"{n} actor{'s' if n > 1 else ''} {r:.4g}" for n, r in sorted(rates.items()))
enough = [n for n, r in sorted(rates.items()) if r >= 1000]
need = f"{enough[0]} actors per device reach 1,000 samples/s" if enough else (
    f"none of {sorted(rates)} actors per device reaches 1,000 samples/s" if rates else "")
print(f"DSH: {float(one):.4g} samples/s per actor alone; per device: {per_device or 'not measured'}; {need}")
EOF
}

main() {
    echo "== gpu_check.sh on ${HOSTNAME:-?}, device '$device'$([ -n "${QUICK:-}" ] && echo ', QUICK'), output in $log"
    if [ -z "${SKIP_INSTALL:-}" ]; then
        step "install wheels" "$(limit 40)" install_wheels
        export PYTHONPATH="/tmp/afm-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    register_opencl
    step "devices" "$(limit 30)" check_devices
    step "bench sim" "$(limit 40)" python3 -m afm_ray bench sim --device "$device" --size "$size" \
        --batch-sizes "${sim_batches[@]}" --repeats "$repeats"
    step "bench batch dsh" "$(limit 110)" python3 -m afm_ray bench batch --model dsh --device "$device" --size "$size" \
        --batch-size "$batch" --repeats "$repeats" --actors-per-device "${actors[@]}"
    step "bench batch es" "$(limit 45)" python3 -m afm_ray bench batch --model es --device "$device" --size "$size" \
        --batch-size "$batch" --repeats "$repeats"
    local torch_device=cpu
    python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null && torch_device=cuda
    step "bench models" "$(limit 35)" python3 -m afm_ray bench models --device "$torch_device" --size "$size" \
        --batch-size "$model_batch" --repeats "$repeats" --warmup 1 --models "${models[@]}"
    # the training step by stage, in series and overlapped, from replayed batches served without Ray (not shipped)
    step "bench train-step dsh" "$(limit 45)" python3 -m afm_ray bench train-step --source local --model dsh \
        --device "$torch_device" --size "$size" --batch-size "$batch" "${step_rounds[@]}"
    echo "== steps"
    printf '  %s\n' "${steps[@]}"
    echo "== SUMMARY: $(summarise); $failures of ${#steps[@]} steps failed; done in $((SECONDS - started)) s"
    return "$failures"
}

main 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
