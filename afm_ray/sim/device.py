"""Choosing the OpenCL device the simulator runs on.

``select_device(spec)`` understands:

* ``"auto"``: the first GPU that can build kernels, else the first CPU that can;
* ``"cpu"`` / ``"gpu"``: the first device of that type that can build kernels;
* an ``int`` (or digit string): an index into :func:`list_devices` (all platforms, in order);
* ``"nvidia:<N>"``: the NVIDIA GPU that ``nvidia-smi``, CUDA and Ray number ``N``, matched to the NVIDIA
  OpenCL device with the same PCI bus id when the driver exposes ``cl_nv_device_attribute_query``
  and ``nvidia-smi`` is there, else by position in ``CUDA_VISIBLE_DEVICES`` (NVIDIA's OpenCL lists
  only the visible GPUs, in that order). The pipeline's ``opencl_device: ray`` becomes this in each
  simulation actor, with the GPU Ray assigned it: nothing here imports Ray;
* any other string: the first device whose ``"platform: device"`` name contains it (case-insensitive).

"Can build kernels" is checked by compiling a one-line kernel, because an installed OpenCL driver
can list a device it cannot compile for (pocl 3.0 with LLVM 14 rejects CPUs newer than LLVM knows
with "unknown target CPU 'generic'"; a newer pocl, e.g. Debian's ``pocl-opencl-icd``, works).
Nothing here keeps OpenCL state between calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pyopencl as cl

from afm_ray.errors import InputError

_PROBE_SOURCE = "__kernel void afm_ray_probe(__global float *a) { a[get_global_id(0)] = sqrt(a[get_global_id(0)]); }"


def list_devices() -> list[cl.Device]:
    """Every OpenCL device of every platform, in platform order (the order device indices refer to)."""
    try:
        platforms = cl.get_platforms()
    except cl.Error:
        return []
    devices = []
    for platform in platforms:
        try:
            devices.extend(platform.get_devices())
        except cl.Error:
            continue
    return devices


def describe(device: cl.Device) -> str:
    """``'<platform>: <device>'``, the name substring specs match against."""
    return f"{device.platform.name.strip()}: {device.name.strip()}"


def can_build(device: cl.Device) -> bool:
    """True if the device's driver compiles a trivial kernel."""
    try:
        context = cl.Context([device])
        cl.Program(context, _PROBE_SOURCE).build()
        return True
    except (cl.Error, RuntimeError):
        return False


def select_device(spec: str | int | cl.Device = "auto") -> cl.Device:
    """The device named by ``spec`` (see module docstring; a ``pyopencl.Device`` is returned as is)."""
    if isinstance(spec, cl.Device):
        return spec
    devices = list_devices()
    if not devices:
        raise InputError("device", "no OpenCL platform found: install an OpenCL driver (CPU: `pip install "
                                   "pocl-binary-distribution` or Debian's `pocl-opencl-icd`; NVIDIA: the CUDA driver)")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        if not 0 <= index < len(devices):
            raise InputError("device", f"device index {index} out of range; devices: {_listing(devices)}")
        return devices[index]
    wanted = str(spec).strip().lower()
    if wanted == "auto":
        return _first_buildable([d for d in devices if _is_gpu(d)] + [d for d in devices if not _is_gpu(d)], "any", devices)
    if wanted in ("cpu", "gpu"):
        candidates = [d for d in devices if _is_gpu(d) == (wanted == "gpu")]
        return _first_buildable(candidates, wanted.upper(), devices)
    if wanted.startswith("nvidia:"):
        return _nvidia_device(wanted.removeprefix("nvidia:").strip(), devices)
    if wanted == "ray":
        raise InputError("device", "'ray' (the GPU Ray assigned) is chosen by the pipeline's actors "
                                   "(pipeline.opencl_device); give the simulator nvidia:<N>, an index or a name")
    matches = [d for d in devices if wanted in describe(d).lower()]
    if not matches:
        raise InputError("device", f"no OpenCL device matches {spec!r}; devices: {_listing(devices)}")
    return matches[0]


def _is_gpu(device: cl.Device) -> bool:
    return bool(device.type & cl.device_type.GPU)


def _listing(devices: list[cl.Device]) -> str:
    return "; ".join(f"[{i}] {describe(d)}" for i, d in enumerate(devices))


def _first_buildable(candidates: list[cl.Device], kind: str, devices: list[cl.Device]) -> cl.Device:
    for device in candidates:
        if can_build(device):
            return device
    if not candidates:
        raise InputError("device", f"no {kind} OpenCL device; devices: {_listing(devices)}")
    raise InputError("device", f"no {kind} OpenCL device can compile kernels (tried: {_listing(candidates)}). On a CPU "
                               "newer than pocl's LLVM knows, install a newer pocl (Debian: apt-get install pocl-opencl-icd)")


def _nvidia_device(gpu_id: str, devices: list[cl.Device]) -> cl.Device:
    nvidia = [d for d in devices if _is_gpu(d) and "nvidia" in d.platform.vendor.lower()]
    if not nvidia:
        raise InputError("device", f"NVIDIA GPU {gpu_id} wanted but no NVIDIA OpenCL device is visible; "
                                   f"devices: {_listing(devices)}")
    wanted_bus = _nvidia_pci_bus_ids().get(gpu_id)
    if wanted_bus is not None:
        try:
            on_bus = [d for d in nvidia if d.pci_bus_id_nv == wanted_bus]
        except (cl.Error, AttributeError):
            on_bus = []  # the driver does not answer NV attribute queries: fall back to ordering
        if len(on_bus) == 1:
            return on_bus[0]
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if gpu_id in visible and len(nvidia) == len(visible):
        return nvidia[visible.index(gpu_id)]
    if len(nvidia) == 1:
        return nvidia[0]
    index = int(gpu_id) if gpu_id.isdigit() else 0
    return nvidia[min(index, len(nvidia) - 1)]


def _nvidia_pci_bus_ids() -> dict[str, int]:
    """GPU index (as nvidia-smi and Ray number them) → PCI bus number; empty when unknown."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=index,pci.bus_id", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    result = {}
    for line in text.splitlines():
        try:
            index, bus_id = (part.strip() for part in line.split(","))
            result[index] = int(bus_id.split(":")[1], 16)  # e.g. 00000000:3B:00.0 → 0x3B
        except ValueError:
            continue
    return result
