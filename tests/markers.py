"""Which pytest markers each test carries: one table, applied by ``tests/conftest.py`` at collection.

Markers (registered in pyproject.toml):

* ``ray``      starts Ray: a local cluster (``ray_session``), ``ray start`` or ``afm-ray train/tune`` subprocesses;
* ``mlflow``   starts an ``mlflow server`` process (the sqlite file store used by many tests does not count);
* ``postgres`` starts a PostgreSQL server;
* ``k8s``      checks the manifests under ``k8s/`` (rendered in-process: fast, no cluster);
* ``slow``     takes more than ~10 s on the shared 2-core CI machine (session fixtures it sets up included):
                ppafm reference comparisons, model exports, trainings;
* ``unit``     none of ray / mlflow / postgres / slow: ``pytest -m unit`` runs in well under a minute.

``unit`` is never written in the table: it is derived, so a test cannot be both ``unit`` and expensive.
A test module is named by its path under ``tests/`` without ``.py`` (``unit/sim/test_simulator``).
A test's markers are its module's row in :data:`MODULE_MARKERS`, or its row in :data:`TEST_MARKERS` where
the module mixes cheap and expensive tests (the row replaces the module's), plus what the fixtures it
uses imply (:data:`FIXTURE_MARKERS`: a test that asks for ``ray_session`` starts Ray whatever the table says).

A test module missing from :data:`MODULE_MARKERS` is a collection error naming it, and
``tests/unit/test_markers.py`` fails on rows naming modules or tests that no longer exist.

Under pytest-xdist (``-n 2 --dist loadgroup --no-loadscope-reorder``, pyproject's addopts) each worker is a session of its own, so
tests that share an expensive module or session fixture run on one worker (:func:`xdist_group`), and
:func:`xdist_order` starts the longest work first (:data:`LONGEST_FIRST`), so that the run does not end
waiting for one long test that started last.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

EXPENSIVE: frozenset[str] = frozenset({"ray", "mlflow", "postgres", "slow"})
MARKERS: frozenset[str] = EXPENSIVE | {"k8s", "unit"}
CHEAP: frozenset[str] = frozenset()

RAY = frozenset({"ray"})
SLOW = frozenset({"slow"})
RAY_SLOW = frozenset({"ray", "slow"})
K8S = frozenset({"k8s"})

# test module (its path under tests/, without .py) → markers of its tests; CHEAP = unit
MODULE_MARKERS: dict[str, frozenset[str]] = {
    "unit/test_elements": CHEAP,
    "unit/test_markers": CHEAP,
    "unit/test_layers": CHEAP,                            # the import graph against the floor table
    "unit/test_files": CHEAP,
    "unit/test_presets": CHEAP,
    "unit/test_cpu_by_process": CHEAP,                     # the suite's CPU profiler on a 1.5 s child
    "unit/figures/test_figures": CHEAP,
    "unit/cli/test_bad_inputs": CHEAP,                    # bad files, artifacts, configs, molecules: no model trained
    "unit/cli/test_bench": CHEAP,                         # the subcommands, not their runs
    "unit/descriptors/test_descriptors": CHEAP,
    "unit/descriptors/test_descriptors_vs_ppafm": CHEAP,  # but the full Height + ES comparison: slow below
    "unit/descriptors/test_device_maps": CHEAP,
    "unit/models/test_asdafm": CHEAP,
    "unit/models/test_losses": CHEAP,
    "unit/models/test_metrics": CHEAP,
    "unit/models/test_models": CHEAP,
    "unit/models/test_spec": CHEAP,                       # the toy model's training: ray, slow below
    "unit/molecules/test_database": CHEAP,
    "unit/molecules/test_heavy": CHEAP,                   # the Ray build killed and resumed: ray, slow below
    "unit/molecules/test_splits_rotations": CHEAP,
    "unit/pipeline/test_cluster": CHEAP,                  # the retry of a local start; ray.init replaced
    "unit/pipeline/test_dispatch": CHEAP,
    "unit/pipeline/test_fixed_sets": CHEAP,               # the shards' format and reading; building them: integration
    "unit/predict/test_match": CHEAP,                     # trained_dsh / trained_xyz users: ray, slow (fixtures)
    "unit/samples/test_augment": CHEAP,
    "unit/samples/test_batch_host": CHEAP,
    "unit/samples/test_sample_batch": CHEAP,
    "unit/sim/test_simulator": CHEAP,
    "unit/sweep/test_sweep": CHEAP,                       # ray_session users: ray, slow below
    "unit/train/test_tracking": CHEAP,                    # RunTracker on a sqlite file store
    "unit/train/test_configured_model": CHEAP,
    "unit/train/test_loop_parts": CHEAP,
    "integration/test_gpu_check": SLOW,                   # benchmarks/gpu_check.sh: quick CPU dry run, broken driver
    "integration/test_installed_package": RAY_SLOW,       # builds the wheel, installs it; trains from an empty dir
    "integration/test_job_submit": RAY_SLOW,              # `ray start` head + `ray job submit` of a training
    "integration/test_mlflow_auth": frozenset({"mlflow", "slow"}),  # a real basic-auth `mlflow server`
    "integration/test_mlflow_outage": frozenset({"ray", "mlflow", "slow"}),
    "integration/test_mlflow_postgres": frozenset({"postgres", "slow"}),
    "integration/test_no_pickle": SLOW,                   # exports every architecture; trained_dsh users: ray too
    "integration/test_pipeline": CHEAP,                   # ray_session users: ray (fixtures)
    "integration/test_predict": RAY_SLOW,                 # every test reads a model trained in this session
    "integration/test_published": SLOW,                   # imports and evaluates the published weights
    "integration/test_resume": RAY_SLOW,                  # trainings, sweeps and a Ray cluster in subprocesses
    "integration/test_sim_vs_ppafm": SLOW,                # ten relaxed-scan comparisons with ppafm
    "integration/test_train": CHEAP,                      # ray_session users: ray, and the slow ones below
    # the manifests under k8s/, rendered in-process (no cluster): also unit
    "k8s/test_cluster_rules": K8S,
    "k8s/test_images": K8S,
    "k8s/test_mlflow": K8S,
    "k8s/test_network_policies": K8S,
    "k8s/test_pod_security": K8S,
    "k8s/test_raycluster": K8S,
    "k8s/test_rayjobs": K8S,
    "k8s/test_rendering": K8S,
    "k8s/test_tls": K8S,
}

# module → {test function (without its parametrize id) → markers}: replaces the module's row
TEST_MARKERS: dict[str, dict[str, frozenset[str]]] = {
    "unit/descriptors/test_descriptors_vs_ppafm": {
        "test_height_and_es_maps_match_ppafm": SLOW,
    },
    "unit/molecules/test_heavy": {
        "test_build_heavy_killed_and_resumed_skips_and_records_sources": RAY_SLOW,  # a Ray driver killed mid-build
    },
    "integration/test_mlflow_auth": {
        "test_job_credentials_train_and_register": frozenset({"ray", "mlflow", "slow"}),  # `afm-ray train` job
    },
    "integration/test_mlflow_postgres": {
        "test_mlflow_server_as_deployed_on_postgres": frozenset({"postgres", "mlflow", "slow"}),
    },
    "unit/molecules/test_database": {
        "test_full_qm9_build_matches_thesis_table1_and_dataset1": SLOW,  # 134k molecules, where qm9pack is installed
    },
    "unit/models/test_spec": {
        "test_a_toy_model_with_its_own_loss_weight_and_descriptor_trains_registers_loads_and_is_swept": RAY_SLOW,
    },
    "unit/models/test_models": {
        # a few hundred optimiser steps each: 5 s alone, minutes when torch's threads compete for the cores
        "test_dsh_overfits_a_fixed_batch": SLOW,
        "test_xyz_overfits_a_fixed_batch": SLOW,
    },
    "integration/test_no_pickle": {
        "test_disabled_pickle_really_refuses": CHEAP,
        "test_a_checkpoint_holding_objects_is_refused_without_running_them": CHEAP,
    },
    "integration/test_pipeline": {
        # each restarts or kills actors and waits for Ray to notice
        "test_a_hanging_actor_is_warned_about_and_its_batch_made_elsewhere": RAY_SLOW,
        "test_a_batch_that_always_kills_its_actor_is_dropped_after_bounded_retries": RAY_SLOW,
        "test_killed_simulation_actor_restarts_and_every_sample_arrives_once": RAY_SLOW,
    },
    "integration/test_sim_vs_ppafm": {
        "test_lennard_jones_table_equals_ppafm_atomtypes": CHEAP,
    },
    "unit/sim/test_simulator": {
        "test_a_batch_too_large_for_the_device_is_refused_before_allocation": SLOW,
        "test_cli_simulate_draws_the_sample_with_its_descriptors": SLOW,
    },
    "integration/test_train": {
        "test_a_training_run_records_params_metrics_figures_and_its_model": RAY_SLOW,  # trained_dsh
        "test_two_ddp_ranks_share_actors_validation_and_metrics_and_resume_when_killed": RAY_SLOW,
        "test_one_or_two_ranks_on_one_global_batch_train_the_same_weights_and_resume_on_another_count": RAY_SLOW,
        # trained_dsh and a bf16, compiled twin
        "test_bf16_autocast_in_a_compiled_network_trains_to_the_validation_loss_of_fp32": RAY_SLOW,
        "test_the_test_set_is_evaluated_in_shards_by_tasks_holding_train_worker_resources": RAY_SLOW,  # trained_dsh
    },
    "unit/sweep/test_sweep": {
        "test_sweep_stops_bad_trials_and_registers_the_champion": RAY_SLOW,
    },
}

# fixture (anywhere in a test's fixture closure) → markers it implies
FIXTURE_MARKERS: dict[str, frozenset[str]] = {
    "ray_session": RAY,
    "cli_trained_dsh": RAY_SLOW,  # `afm-ray train` in a process of its own, once per session (~35 s)
    "trained_xyz": RAY_SLOW,
}


SHARED_TRAININGS: frozenset[str] = frozenset({"cli_trained_dsh", "trained_xyz"})
"""Session fixtures that train a model (minutes on the CI machine): their users share one xdist worker."""
SHARED_TRAININGS_GROUP = "trained_models"

LONGEST_FIRST: tuple[str, ...] = (
    SHARED_TRAININGS_GROUP,
    "test_recreated_rayjob_continues_an_interrupted_sweep_without_repeating_trials",
    "test_mlflow_auth",
    "test_one_or_two_ranks_on_one_global_batch_train_the_same_weights_and_resume_on_another_count",
    "test_training_survives_a_tracking_outage_and_sends_buffered_metrics",
    "test_a_toy_model_with_its_own_loss_weight_and_descriptor_trains_registers_loads_and_is_swept",
    "test_published",
    "test_ray_job_submit_runs_training_on_the_named_resources",
    "test_two_ddp_ranks_share_actors_validation_and_metrics_and_resume_when_killed",
    "test_installed_package",
    "test_a_changed_config_is_refused_and_continues_in_a_linked_run_when_allowed",
    "test_sweep_stops_bad_trials_and_registers_the_champion",
    "test_mlflow_postgres",
    "test_two_ddp_ranks_finish_past_a_slow_and_a_hung_actor_within_the_wait_bound",
)
"""The longest units of work on the 2-core CI machine (a test function's name, or an :func:`xdist_group`),
longest first (serial ``pytest --durations=80``, a unit's tests and fixtures summed); the other ``slow`` tests follow
them, the rest last."""


def xdist_group(module: str, fixtures: Iterable[str], module_scoped: bool) -> str | None:
    """The xdist group of a test of ``module`` using ``fixtures`` (``module_scoped``: one of them is shared by
    the module's tests, e.g. a server): the group of the session's trained models, else the module's
    when a fixture is module-scoped; None: any worker."""
    if SHARED_TRAININGS & set(fixtures):
        return SHARED_TRAININGS_GROUP
    return module if module_scoped else None


def xdist_order(units: list[tuple[str, bool]], workers: int) -> list[int]:
    """The order (indices into ``units``) in which xdist should hand out ``units``: (name, slow) pairs, a name
    being a test function's or an :func:`xdist_group`'s, in collection order.

    Longest first (:data:`LONGEST_FIRST`, then the other slow units), except that each worker's second unit is a
    cheap one: xdist gives every worker two units at the start, and a long unit queued behind another long one
    would wait for it while other workers go idle."""
    def rank(index: int) -> int:
        name, slow = units[index]
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST) + (0 if slow else 1)

    by_length = sorted(range(len(units)), key=rank)  # stable: collection order among equals
    second = [index for index in by_length[workers:] if not units[index][1]][:workers]
    return [*by_length[:workers], *second, *(index for index in by_length[workers:] if index not in second)]


class UnmarkedModuleError(LookupError):
    """A test module has no row in :data:`MODULE_MARKERS`."""


def markers_for(module: str, test: str, fixtures: Iterable[str]) -> frozenset[str]:
    """The markers of test function ``test`` (no parametrize id) in ``module`` (path under tests/, no .py) that uses
    ``fixtures``; ``unit`` when none is expensive. Raises :class:`UnmarkedModuleError` for a module
    without a row."""
    if module not in MODULE_MARKERS:
        raise UnmarkedModuleError(
            f"tests/{module}.py has no row in tests/markers.py MODULE_MARKERS: add one "
            f"(its markers, e.g. CHEAP, RAY_SLOW) so `pytest -m unit` knows what it starts")
    markers = set(TEST_MARKERS.get(module, {}).get(test, MODULE_MARKERS[module]))
    for fixture in fixtures:
        markers |= FIXTURE_MARKERS.get(fixture, CHEAP)
    if not markers & EXPENSIVE:
        markers.add("unit")
    return frozenset(markers)


def ray_is_running() -> bool:
    """Whether this process holds a Ray connection; never imports ray (an import alone costs seconds)."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())
