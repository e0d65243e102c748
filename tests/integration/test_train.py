"""End-to-end training on a local Ray cluster: MLflow run, registry, resume, failures, bad input."""

import os
import signal
import sys
import threading
import time

import pytest
import ray.cloudpickle
from ray.train import Checkpoint
import torch
from mlflow import MlflowClient

from afm_ray.errors import InputError
from afm_ray.pipeline.actors import SimulationActor
from afm_ray.registry.checkpoints import load_checkpoint_model
from afm_ray.train.trainer import evaluate_on_workers, run_training

from conftest import CONFIGS


# the fault-injecting actors below live in this test module: workers get them by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def metric_steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_the_test_set_is_evaluated_in_shards_by_tasks_holding_train_worker_resources(ray_session, trained_dsh):
    """Two shards evaluated by two Ray tasks add up to the logged test figures of the session's run (its
    single worker's evaluation of the whole set)."""
    config, outcome = trained_dsh
    from afm_ray.pipeline.fixed_sets import fixed_set_path
    from afm_ray.pipeline.sources import load_split_samples

    settings = config.sample_settings  # the set that run made (other runs share the folder)
    test_path = fixed_set_path(settings, "test", len(load_split_samples(settings)["test"]), config.run.seed)
    assert (test_path / "_SUCCESS").exists(), test_path
    two_workers = config.model_copy(update={"scaling": config.scaling.model_copy(update={"num_workers": 2})})
    evaluation = evaluate_on_workers(two_workers, Checkpoint.from_directory(outcome.checkpoint_path), test_path)
    sharded = evaluation.result("test")
    assert sharded.keys() == outcome.test_metrics.keys()
    assert sharded == pytest.approx(outcome.test_metrics, rel=1e-4)


def test_a_training_run_records_params_metrics_figures_and_its_model(trained_dsh):
    """The session's DSH run (3 epochs, tests/conftest.py) as MLflow holds it. That the registered model
    predicts like the checkpoint: tests/integration/test_predict.py; a restart continuing the run: tests/integration/test_mlflow_outage.py."""
    config, outcome = trained_dsh
    client = MlflowClient(config.mlflow.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.data.params["model.name"] == "dsh" and run.data.params["data.split"] == "tiny"
    assert run.info.status == "FINISHED"
    losses = [m.value for m in sorted(client.get_metric_history(outcome.run_id, "train_loss"), key=lambda m: m.step)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    for key in ("val_loss", "val_mse_mean", "train_samples_per_s", "data_wait_fraction", "sim_stacks_per_s_per_actor"):
        assert metric_steps(client, outcome.run_id, key) == [0, 1, 2], key
    assert "test_mse_mean" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    figures = {a.path for a in client.list_artifacts(outcome.run_id, "figures")}
    assert "config.yaml" in artifacts and {"figures/loss_curves.png", "figures/predictions.png"} <= figures
    assert outcome.model_uri == "models:/afm-test-dsh@current"
    assert client.get_registered_model("afm-test-dsh").tags["afm_ray.architecture"] == "dsh"
    _, _, history = load_checkpoint_model(outcome.checkpoint_path)
    assert [h["epoch"] for h in history] == [0, 1, 2]


def _train_worker_pids() -> list[int]:
    """The process ids of this session's live Ray Train workers, from its own Ray: under xdist another session's
    workers run on the same machine."""
    from ray.util.state import list_actors

    return [actor.pid for actor in list_actors(filters=[("class_name", "=", "RayTrainWorker"),
                                                        ("state", "=", "ALIVE")])]


@pytest.mark.parametrize("override, message", [
    ("run.epochs=many", "run.epochs: Input should be a valid integer"),
    ("optimizer.lr=1", "optimizer.lr: Extra inputs are not permitted"),
    ("data.database=/nonexistent/db.parquet", "molecule database not found"),
    ("data.split=dataset9", "has no split 'dataset9'"),
    ("mlflow.tracking_uri=http://127.0.0.1:9", "is unreachable"),
    ("mlflow.alias=latest", "reserved by MLflow"),
])
def test_bad_training_input_fails_before_cluster_work(run_cli, tiny_database, tmp_path, override, message):
    started = time.time()
    code, _, err = run_cli("train", "--config", CONFIGS / "quickstart.yaml", f"data.database={tiny_database}",
                           "data.split=tiny", f"run.storage_path={tmp_path}", override)
    assert code == 2 and message in err, err
    assert time.time() - started < 30
    assert not (tmp_path / "quickstart").exists()


def test_model_name_registered_with_another_architecture_is_refused(tiny_config, tmp_path):
    from afm_ray.registry.tracking import ARCHITECTURE_TAG, preflight

    uri = tiny_config.mlflow.tracking_uri
    client = MlflowClient(uri)
    client.create_registered_model("afm-taken", tags={ARCHITECTURE_TAG: "xyz"})
    with pytest.raises(InputError, match="already registered with architecture 'xyz'"):
        preflight(uri, "afm-taken", "dsh")
    preflight(uri, "afm-taken", "xyz")


class PacedSimulationActor(SimulationActor):
    """A real simulation actor that, until the file ``gate`` exists, takes 3 s longer for each training batch
    after the first epoch (well inside the pool's 15 s hedge): a test then kills the train workers in a
    known epoch, not in a race with a fast one."""

    def __init__(self, settings_json: str, opencl_device: str, gate: str):
        super().__init__(settings_json, opencl_device)
        self.gate = gate

    def make_batch(self, spec):
        if spec.split == "train" and spec.epoch >= 1 and not os.path.exists(self.gate):
            time.sleep(3.0)
        return super().make_batch(spec)


def test_two_ddp_ranks_share_actors_validation_and_metrics_and_resume_when_killed(ray_session, tiny_config,
                                                                                 tmp_path, monkeypatch):
    """2 gloo ranks, 4 real simulation actors, a 6.4 Å window that one training sample does not fit;
    both train workers are killed (SIGKILL) once the first epoch is in MLflow.

    The run resumes from its last checkpoint and finishes, no epoch logged twice. Every actor works
    every epoch; every planned sample is trained or skipped exactly once per epoch; the sharded
    validation (each rank's shard kept as tensors on its device after the first epoch) equals one rank
    evaluating the whole set. Until the kill the actors pace the second epoch's batches
    (:class:`PacedSimulationActor`), so the kill cannot come too late. The actors ship raw Δf and each rank
    augments its batches itself (``pipeline.augment_on: trainer``), a short batch with a skipped
    sample included.
    """
    import afm_ray.train.trainer as trainer
    from afm_ray.pipeline.actors import create_simulation_actors
    from afm_ray.pipeline.fixed_sets import FixedSet
    from afm_ray.train.validation import evaluate
    from afm_ray.train.configured_model import build_loss

    gate = tmp_path / "workers-killed"
    monkeypatch.setattr(trainer, "create_simulation_actors", lambda settings, pipeline, name_prefix: (
        create_simulation_actors(settings, pipeline, name_prefix, actor_class=PacedSimulationActor,
                                 args=(settings.model_dump_json(), pipeline.opencl_device, str(gate)))))

    def changed(section, **values):
        return getattr(tiny_config, section).model_copy(update=values)

    epochs = 3
    config = tiny_config.model_copy(update={
        "scaling": changed("scaling", num_workers=2, cpus_per_worker=1.0),
        "pipeline": changed("pipeline", num_sim_actors=4, sim_num_cpus=0.5, augment_on="trainer"),
        "sim": changed("sim", scan_size_angstrom=(6.4, 6.4)), "data": changed("data", eval_rotations_per_molecule=4),
        "run": changed("run", epochs=epochs, name="ddp", val_shard_on_device=True)})
    client = MlflowClient(config.mlflow.tracking_uri)
    finished = {}
    thread = threading.Thread(target=lambda: finished.update(outcome=run_training(config, progress=False)))
    thread.start()
    killed = []
    deadline = time.time() + 300
    while thread.is_alive() and time.time() < deadline and not killed:
        time.sleep(0.2)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        if runs and metric_steps(client, runs[0].info.run_id, "val_loss") and len(_train_worker_pids()) == 2:
            for pid in _train_worker_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    gate.touch()  # the resumed epochs at full pace
    thread.join(timeout=600)
    assert killed, "training finished before the workers could be killed"
    outcome = finished["outcome"]
    _, _, checkpoint_history = load_checkpoint_model(outcome.checkpoint_path)
    assert [h["epoch"] for h in checkpoint_history] == list(range(epochs))
    assert sorted(metric_steps(client, outcome.run_id, "val_loss")) == list(range(epochs))  # none twice

    history = {key: [m.value for m in sorted(client.get_metric_history(outcome.run_id, key), key=lambda m: m.step)]
               for key in ("sim_actors_used", "samples_trained", "samples_skipped", "batches_dropped")}
    assert history["sim_actors_used"] == [4] * epochs
    assert [t + s for t, s in zip(history["samples_trained"], history["samples_skipped"])] == [24] * epochs
    assert history["samples_skipped"] == [1] * epochs and history["batches_dropped"] == [0] * epochs

    model, _, _ = load_checkpoint_model(outcome.checkpoint_path)
    val_path = next(p for p in config.data.fixed_set_dir.iterdir() if "-val-" in p.name)
    single = evaluate(model, build_loss(config), config, FixedSet(val_path), torch.device("cpu")).result("val")
    assert len(FixedSet(val_path).shards) >= 2  # each rank had a shard of its own
    for name, value in single.items():
        assert checkpoint_history[-1][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


def test_one_or_two_ranks_on_one_global_batch_train_the_same_weights_and_resume_on_another_count(ray_session,
                                                                                                  tiny_config):
    """Global batch 6 (24 samples: 4 steps): one rank in two micro batches of 3, or two gloo ranks with 3 each,
    train on identical pieces (same samples, same seeds). After one epoch both have seen 24 samples at the same
    learning rate and hold the same weights (DDP averages what one rank accumulates). The one-rank run then
    resumes on two ranks without --allow-changed: its schedule continues at 24 samples seen."""
    def variant(name, workers, micro_batch_size, epochs=1):
        return tiny_config.model_copy(update={
            "scaling": tiny_config.scaling.model_copy(update={"num_workers": workers, "cpus_per_worker": 1.0}),
            "run": tiny_config.run.model_copy(update={"epochs": epochs, "name": name, "channels_last": True,
                                                      "micro_batch_size": micro_batch_size})})

    one = run_training(variant("one", 1, 3), progress=False)
    two = run_training(variant("two", 2, None), progress=False)
    (model_one, _, [first]), (model_two, _, [second]) = map(load_checkpoint_model, (one.checkpoint_path,
                                                                                    two.checkpoint_path))
    decayed = 1e-3 / (1 + 1e-5 * 24 / 30)  # thesis decay per 30 samples seen
    for history in (first, second):
        assert history["global_batch_size"] == 6 and history["samples_seen"] == 24
        assert history["learning_rate"] == pytest.approx(decayed, rel=1e-12)
        assert history["samples_trained"] == 24
    assert second["train_loss"] == pytest.approx(first["train_loss"], rel=1e-5)
    weights_one, weights_two = model_one.state_dict(), model_two.state_dict()
    assert weights_one.keys() == weights_two.keys()
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, rtol=1e-4, atol=1e-6, msg=name)

    resumed = run_training(variant("one", 2, None, epochs=2), progress=False)
    assert resumed.run_id == one.run_id  # the same MLflow run continues: the worker count may change
    _, _, history = load_checkpoint_model(resumed.checkpoint_path)
    assert [h["samples_seen"] for h in history] == [24, 48]
    assert history[-1]["learning_rate"] == pytest.approx(1e-3 / (1 + 1e-5 * 48 / 30), rel=1e-12)


def test_bf16_autocast_in_a_compiled_network_trains_to_the_validation_loss_of_fp32(trained_dsh, tiny_database,
                                                                                     model_store):
    """The session's DSH (fp32, eager, 3 epochs) trained again with ``run.precision=bf16`` inside
    ``torch.compile`` (backend aot_eager: dynamo's graph capture and AOT autograd, without inductor's code
    generation, which takes minutes on this CPU): the same batches and validation set, a validation loss
    within 5 %, and a checkpoint whose weights load into the plain network (no compile wrapper's names)."""
    from conftest import _train_tiny

    fp32_config, fp32 = trained_dsh
    config, bf16 = _train_tiny(tiny_database, model_store, "bf16", [
        "run.epochs=3", "run.precision=bf16", "run.compile=true", "run.compile_backend=aot_eager"])
    assert (config.run.precision, fp32_config.run.precision) == ("bf16", "fp32")
    assert bf16.metrics["val_loss"] == pytest.approx(fp32.metrics["val_loss"], rel=0.05)
    assert bf16.metrics["val_loss"] != fp32.metrics["val_loss"]  # bf16 did run
    model, loaded_config, _ = load_checkpoint_model(bf16.checkpoint_path)
    assert (loaded_config.run.compile, type(model).__name__) == (True, type(load_checkpoint_model(
        fp32.checkpoint_path)[0]).__name__)


def test_an_unknown_compile_backend_is_refused_before_any_work(tiny_config):
    from afm_ray.train.network import check_compile_backend

    config = tiny_config.model_copy(update={"run": tiny_config.run.model_copy(
        update={"compile": True, "compile_backend": "inductr"})})
    with pytest.raises(InputError, match=r"run.compile_backend.*'inductr' is not a torch.compile backend"):
        check_compile_backend(config)


# -- the console of `afm-ray train` ----------------------------------------------------------------------
CONSOLE_NOISE = ("TrainingReport(", "Checkpoint successfully created", "Moving model to device", "PreemptionWatcher",
                 "core_worker", "(RayTrainWorker", "(TrainController", "mlflow.store", "Successfully registered model",
                 "Created version", "Token authentication", "Started a local Ray instance")
AFM_RAY_LINES = ("training ", "Ray dashboard: http", "MLflow run ", "simulation actor ", "simulating val set", "simulating test set",
                 "epoch ", "registered models:/", "done: models:/")
"""How every console line of a quiet `afm-ray train` begins."""


def test_train_console_shows_only_afm_ray_lines(cli_trained_dsh):
    """The quiet default of the session's `afm-ray train` process (tests/conftest.py); ``--verbose`` (Ray's
    output back) is checked on the job of tests/integration/test_job_submit.py."""
    lines = cli_trained_dsh.console
    assert not [line for line in lines if any(noise in line for noise in CONSOLE_NOISE)], lines
    assert not [line for line in lines if not line.startswith(AFM_RAY_LINES)], lines
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"], lines
    assert sum(line.startswith("Ray dashboard: http") for line in lines) == 1


class SlowSimulationActor(SimulationActor):
    """A real simulation actor on a slow node: every batch takes half a second longer."""

    def make_batch(self, spec):
        time.sleep(0.5)
        return super().make_batch(spec)


class HungSimulationActor(SimulationActor):
    """A real simulation actor that starts, then never answers a batch (a wedged GPU driver)."""

    def make_batch(self, spec):
        time.sleep(3600)


def test_two_ddp_ranks_finish_past_a_slow_and_a_hung_actor_within_the_wait_bound(ray_session, tiny_config,
                                                                                 monkeypatch):
    """2 gloo ranks on 4 actors: two sound, one slow, one hung. The pool hedges or times out the hung
    actor's calls and passes it over; the run finishes, no rank waits longer for a batch than
    ``max_attempts_per_batch × batch_timeout_s``, and every planned sample is trained or skipped once."""
    import afm_ray.train.trainer as trainer
    from afm_ray.pipeline.actors import actor_options

    def uneven_pool(settings, pipeline, name_prefix):
        kinds = [SimulationActor, SimulationActor, SlowSimulationActor, HungSimulationActor]
        actors = [ray.remote(kind).options(**actor_options(pipeline), name=f"{name_prefix}-{index}")
                  .remote(settings.model_dump_json(), pipeline.opencl_device) for index, kind in enumerate(kinds)]
        ray.get([actor.describe.remote() for actor in actors])
        return actors

    monkeypatch.setattr(trainer, "create_simulation_actors", uneven_pool)

    def changed(section, **values):
        return getattr(tiny_config, section).model_copy(update=values)

    config = tiny_config.model_copy(update={
        "scaling": changed("scaling", num_workers=2, cpus_per_worker=1.0),
        "pipeline": changed("pipeline", num_sim_actors=4, sim_num_cpus=0.5, batch_timeout_s=4.0,
                            batch_timeout_floor_s=2.0, max_attempts_per_batch=3),
        "run": changed("run", epochs=2, name="uneven")})
    outcome = run_training(config, progress=False)
    client = MlflowClient(config.mlflow.tracking_uri)
    history = {key: [m.value for m in sorted(client.get_metric_history(outcome.run_id, key), key=lambda m: m.step)]
               for key in ("samples_trained", "samples_skipped", "batches_dropped", "data_max_wait_seconds",
                           "sim_actor_3_share", "sim_actor_0_share", "sim_actor_1_share", "sim_actor_2_share")}
    assert [t + s for t, s in zip(history["samples_trained"], history["samples_skipped"])] == [24, 24]
    assert history["batches_dropped"] == [0, 0]
    assert max(history["data_max_wait_seconds"]) <= config.pipeline.retry_budget_s
    assert history["sim_actor_3_share"] == [0.0, 0.0]  # the hung one made none
    shares = [history[f"sim_actor_{actor}_share"] for actor in range(3)]
    assert [sum(epoch) for epoch in zip(*shares)] == pytest.approx([1.0, 1.0])  # every batch by a sound or slow actor
