"""Simulation actors: one :class:`~afm_ray.samples.batches.BatchFactory` (one OpenCL simulator) per actor, for the run's
lifetime."""

from __future__ import annotations

import os

import ray
from ray.exceptions import GetTimeoutError

from afm_ray.errors import InputError
from afm_ray.pipeline.cluster import assigned_opencl_device
from afm_ray.pipeline.dispatch import BatchMaker
from afm_ray.pipeline.settings import PipelineSettings, SampleSettings
from afm_ray.samples.plan import BatchSpec
from afm_ray.samples.sample_batch import SampleBatch


class SimulationActor(BatchMaker):
    """Makes batches for any subset of the run's split; created once, reused every epoch."""

    def __init__(self, settings_json: str, opencl_device: str = "auto"):
        from afm_ray.samples.batches import BatchFactory
        from afm_ray.pipeline.sources import load_split_samples, task_of

        settings = SampleSettings.model_validate_json(settings_json)
        # a returned batch is serialised into the object store before the next call: its arrays may be
        # the page-locked host memory the factory reuses
        self.factory = BatchFactory(task_of(settings), settings.sim, settings.augment, settings.descriptors,
                                    load_split_samples(settings), device=assigned_opencl_device(opencl_device),
                                    reuse_host_memory=True)

    def make_batch(self, spec: BatchSpec) -> SampleBatch:
        return self.factory.make_batch(spec)

    def describe(self) -> dict:
        """Where this actor runs: OpenCL device, Ray node, assigned GPUs, process id."""
        context = ray.get_runtime_context()
        return {"device": self.factory.simulator.device_name, "node_id": context.get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid(),
                "resources": context.get_assigned_resources()}


def actor_options(pipeline: PipelineSettings) -> dict:
    """Ray options of a simulation actor: its placement, and restarts after a crash.

    Calls are not retried by Ray (``max_task_retries=0``): the pool's dispatcher
    (:mod:`afm_ray.pipeline.dispatch`) re-sends a failed call itself, to another actor and a bounded
    number of times.
    """
    return {"num_cpus": pipeline.sim_num_cpus, "num_gpus": pipeline.sim_num_gpus,
            "resources": dict(pipeline.sim_resources), "max_restarts": -1, "max_task_retries": 0}


def create_simulation_actors(settings: SampleSettings, pipeline: PipelineSettings, name_prefix: str | None = None,
                             actor_class: type = SimulationActor, args: tuple | None = None) -> list:
    """Start ``pipeline.num_sim_actors`` actors pinned by ``sim_num_gpus`` / ``sim_resources``.

    Waits until every actor has built its simulator, at most ``pipeline.actor_startup_timeout_s``;
    then fails with an error that says how many started and what they need. ``actor_class`` and
    ``args`` replace :class:`SimulationActor` and its arguments (benchmarks and fault tests; a
    :class:`BatchMaker`).
    """
    check_cluster_fits({"CPU": pipeline.sim_num_cpus, "GPU": pipeline.sim_num_gpus, **pipeline.sim_resources},
                       "pipeline: each simulation actor")
    remote_class = ray.remote(actor_class)
    args = args if args is not None else (settings.model_dump_json(), pipeline.opencl_device)
    actors = [remote_class.options(**actor_options(pipeline), name=f"{name_prefix}-{index}" if name_prefix else None)
              .remote(*args) for index in range(pipeline.num_sim_actors)]
    describing = [actor.describe.remote() for actor in actors]
    ready, waiting = ray.wait(describing, num_returns=len(describing), timeout=pipeline.actor_startup_timeout_s)
    try:
        ray.get(ready)  # an actor whose constructor raised (bad database, OpenCL build failure) says why here
        if waiting:
            raise GetTimeoutError()
    except GetTimeoutError:
        stop_actors(actors)
        raise RuntimeError(
            f"{len(waiting)} of {len(actors)} simulation actors did not start within "
            f"pipeline.actor_startup_timeout_s = {pipeline.actor_startup_timeout_s:g} s. Each needs "
            f"{pipeline.sim_num_cpus:g} CPU, {pipeline.sim_num_gpus:g} GPU and {dict(pipeline.sim_resources)}; "
            f"the cluster has {ray.available_resources()} free (a node of that kind may still be starting, "
            f"or their OpenCL kernels are still compiling)") from None
    except BaseException:
        stop_actors(actors)
        raise
    return actors


def stop_actors(actors: list) -> None:
    for actor in actors:
        ray.kill(actor)


def check_cluster_fits(per_unit: dict[str, float], what: str) -> None:
    """Refuse to wait forever for resources the Ray cluster does not have at all."""
    available = ray.cluster_resources()
    for resource, amount in per_unit.items():
        if amount > 0 and available.get(resource, 0.0) < amount:
            raise InputError(what, f"needs {amount:g} {resource} but the Ray cluster has "
                                   f"{available.get(resource, 0.0):g} (resources: {sorted(available)})")
