"""Simulation actors: one :class:`~afm_ray.batches.BatchFactory` (one OpenCL simulator) per actor, for the run's lifetime."""

from __future__ import annotations

import os

import ray

from afm_ray.errors import InputError
from afm_ray.pipeline.work import BatchSpec
from afm_ray.train.config import TrainConfig


class SimulationActor:
    """Makes batches for any subset of the run's split; created once, reused every epoch."""

    def __init__(self, config_json: str):
        from afm_ray.batches import BatchFactory
        from afm_ray.pipeline.sources import load_split_samples, task_of

        config = TrainConfig.model_validate_json(config_json)
        self.factory = BatchFactory(task_of(config), config.sim, config.augment, config.height_map,
                                    load_split_samples(config), device=config.pipeline.opencl_device)

    def make_batch(self, spec: BatchSpec) -> dict:
        return self.factory.make_batch(spec)

    def describe(self) -> dict:
        """Where this actor runs: OpenCL device, Ray node, assigned GPUs, process id."""
        context = ray.get_runtime_context()
        return {"device": self.factory.simulator.device_name, "node_id": context.get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid(),
                "resources": context.get_assigned_resources()}


def create_simulation_actors(config: TrainConfig, name_prefix: str | None = None) -> list:
    """Start ``pipeline.num_sim_actors`` actors pinned by ``sim_num_gpus`` / ``sim_resources``.

    Actors restart after a crash (``max_restarts=-1``) and their pending calls are retried, so a
    lost actor delays batches but loses none. Waits until every actor has built its simulator.
    """
    pipeline = config.pipeline
    check_cluster_fits({"CPU": pipeline.sim_num_cpus, "GPU": pipeline.sim_num_gpus, **pipeline.sim_resources},
                       "pipeline: each simulation actor")
    remote_class = ray.remote(SimulationActor)
    options = {"num_cpus": pipeline.sim_num_cpus, "num_gpus": pipeline.sim_num_gpus,
               "resources": dict(pipeline.sim_resources), "max_restarts": -1, "max_task_retries": -1}
    config_json = config.model_dump_json()
    actors = [remote_class.options(**options, name=f"{name_prefix}-{index}" if name_prefix else None).remote(config_json)
              for index in range(pipeline.num_sim_actors)]
    ray.get([actor.describe.remote() for actor in actors])
    return actors


def check_cluster_fits(per_unit: dict[str, float], what: str) -> None:
    """Refuse to wait forever for resources the Ray cluster does not have at all."""
    available = ray.cluster_resources()
    for resource, amount in per_unit.items():
        if amount > 0 and available.get(resource, 0.0) < amount:
            raise InputError(what, f"needs {amount:g} {resource} but the Ray cluster has "
                                   f"{available.get(resource, 0.0):g} (resources: {sorted(available)})")
