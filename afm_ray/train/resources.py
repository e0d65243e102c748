"""Checks that a training fits what it is given, before any actor or worker starts.

Everything a training holds (simulation actors, train workers, Tune trial drivers) holds its
resources for the whole run: a sum the Ray cluster cannot hold would make Ray wait forever, so it is
refused up front with :class:`~afm_ray.errors.InputError` naming the parts of the sum.
"""

from __future__ import annotations

from afm_ray.errors import InputError
from afm_ray.pipeline.actors import check_cluster_fits
from afm_ray.recipe import TrainConfig


def check_batch_fills_workers(config: TrainConfig, train_samples: int) -> None:
    """The ``train_samples`` training samples must fill at least one global batch (``run.batch_size``)."""
    if train_samples < config.run.batch_size:
        raise InputError("run.batch_size", f"{train_samples} training samples cannot fill one global batch of "
                                           f"{config.run.batch_size} (all {config.scaling.num_workers} workers together)")


def check_cluster_holds_training(config: TrainConfig, workers_at_once: int = 1, driver_cpus: float = 0.0) -> None:
    """The connected Ray cluster must hold the train workers, and the workers and simulation actors together.

    ``workers_at_once``: how many training runs hold workers concurrently (Tune trials), each with a
    driver holding ``driver_cpus`` CPUs.
    """
    scaling, pipeline = config.scaling, config.pipeline
    runs = scaling.num_workers * workers_at_once
    check_cluster_fits({"CPU": scaling.cpus_per_worker * runs, "GPU": float(scaling.use_gpu) * runs,
                        **{k: v * runs for k, v in scaling.resources_per_worker.items()}},
                       "scaling: the train workers")
    demand = {"CPU": pipeline.sim_num_cpus * pipeline.num_sim_actors + scaling.cpus_per_worker * runs
              + driver_cpus * workers_at_once,
              "GPU": pipeline.sim_num_gpus * pipeline.num_sim_actors + float(scaling.use_gpu) * runs}
    check_cluster_fits(demand, f"{pipeline.num_sim_actors} simulation actors × {pipeline.sim_num_cpus:g} CPU "
                               f"+ {runs} train worker(s) × {scaling.cpus_per_worker:g} CPU"
                               + (f" + {workers_at_once} trial driver(s) × {driver_cpus:g} CPU" if driver_cpus else "")
                               + " held at once")
