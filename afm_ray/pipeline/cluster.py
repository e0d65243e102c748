"""Connecting to Ray: the cluster in ``RAY_ADDRESS`` (``ray job submit``, KubeRay), else a local one.

A local cluster is started with its GCS port chosen here and ``RAY_ADDRESS`` pointing at it in
the environment its processes inherit. Without that, Ray's own helpers that look the cluster up
from inside a worker (Ray Train's placement-group cleaner, which frees a Tune trial's workers when
ASHA stops it) fail with "Found multiple active Ray instances" whenever a second Ray runs on the
machine, and the freed CPUs never come back: later trials wait forever.

Paths on a cluster: the driver resolves relative data, run and tracking paths against its working
directory. On a cluster of several nodes that directory is the driver's alone (under
``ray job submit --working-dir`` a temporary folder Ray unpacks separately on each node), so
:func:`require_shared_paths` refuses relative paths there; give absolute paths on storage every node
mounts. A single-node Ray (the local quickstart) keeps relative paths.
"""

from __future__ import annotations

import os
import socket
import sys


_started_address: str | None = None
"""The address :func:`ensure_ray` put in ``RAY_ADDRESS`` for the local cluster it started."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def ensure_ray(num_cpus: int | None = None, log_to_driver: bool | None = None, quiet: bool = False):
    """Connect to ``RAY_ADDRESS`` or start a local Ray instance (``num_cpus`` logical CPUs); idempotent.

    ``log_to_driver``: forward the output of Ray's workers to this console (default: as
    :func:`afm_ray.console.configure_console` set it). ``quiet``: do not print the dashboard URL.
    """
    import ray

    from afm_ray.console import ray_init_options

    if ray.is_initialized():
        return None
    options = ray_init_options()
    if log_to_driver is not None:
        options["log_to_driver"] = log_to_driver
    if os.environ.get("RAY_ADDRESS"):
        context = ray.init(**options)
    else:
        context = _start_local_ray(num_cpus, options)
    if not quiet and getattr(context, "dashboard_url", None):
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
    return context


NODE_STARTUP_TIMEOUT = "timed out during startup"
"""Ray's error when its local node did not register with the GCS within Ray's fixed 30 s."""


def _start_local_ray(num_cpus: int | None, options: dict):
    """Start a local Ray; once more when its node did not register in time: Ray's 30 s limit is fixed, and a
    machine busy with other work (a laptop compiling, several test sessions) can miss it."""
    import ray

    try:
        return _start_local_ray_once(num_cpus, options)
    except Exception as exc:  # Ray raises a bare Exception for this
        if NODE_STARTUP_TIMEOUT not in str(exc):
            raise
    ray.shutdown()
    print(f"Ray's local node {NODE_STARTUP_TIMEOUT} (is the machine overloaded?); starting it again",
          file=sys.stderr, flush=True)
    return _start_local_ray_once(num_cpus, options)


def _start_local_ray_once(num_cpus: int | None, options: dict):
    import ray
    from ray._private.services import get_node_ip_address

    global _started_address
    port = _free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = _started_address = f"{get_node_ip_address()}:{port}"
    try:
        return ray.init(address="local", num_cpus=num_cpus, **options)
    except BaseException:
        del os.environ["RAY_ADDRESS"]
        _started_address = None
        raise
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]


def shutdown_ray() -> None:
    """Stop Ray, and forget the address of a local cluster :func:`ensure_ray` started."""
    import ray

    global _started_address
    ray.shutdown()
    if _started_address and os.environ.get("RAY_ADDRESS") == _started_address:
        del os.environ["RAY_ADDRESS"]
    _started_address = None


def assigned_opencl_device(spec: str | int | None) -> str | int | None:
    """The OpenCL device spec a Ray actor hands its simulator: ``"ray"`` becomes the GPU Ray assigned to
    this actor (``"nvidia:<id>"``, see :func:`afm_ray.sim.device.select_device`); any other spec stays."""
    if str(spec).strip().lower() != "ray":
        return spec
    import ray

    from afm_ray.errors import InputError

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    if not gpu_ids:
        raise InputError("pipeline.opencl_device", "'ray' but Ray assigned no GPU to this actor "
                                                   "(set pipeline.sim_num_gpus > 0, or opencl_device: auto)")
    return f"nvidia:{gpu_ids[0]}"


def alive_nodes() -> list[dict]:
    """The alive nodes of the connected Ray cluster (``ray.nodes()`` entries)."""
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def require_shared_paths(relative_paths: dict[str, str]) -> None:
    """Refuse ``relative_paths`` (config field → value) on a Ray cluster of more than one node; needs Ray connected.

    Raises :class:`~afm_ray.errors.InputError` naming every relative field.
    """
    import ray

    from afm_ray.errors import InputError

    if not relative_paths:
        return
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return
    working_dir = ray.get_runtime_context().runtime_env.working_dir()
    where = (f"the job's working_dir {os.getcwd()} (unpacked from {working_dir} separately on each node)"
             if working_dir else f"the driver's working directory {os.getcwd()}")
    fields = ", ".join(f"{field}={value}" for field, value in relative_paths.items())
    raise InputError(fields, f"relative paths would resolve against {where}, which the other "
                             f"{len(nodes) - 1} node(s) of this Ray cluster do not share; give absolute paths "
                             "on shared storage (e.g. data.database=/data/qm9.parquet run.storage_path=/data/runs "
                             "mlflow.tracking_uri=https://mlflow:5000 or sqlite:////data/mlruns.db)")
