"""Honest resume: a run folder keeps its config; a changed config is refused or continues in a linked MLflow run;
a re-created RayJob continues an interrupted sweep (Optuna + ASHA, as the manifest runs it); relative paths are
refused on a multi-node Ray cluster."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml
from mlflow import MlflowClient

from afm_ray.sweep.runner import REPORTED_FROM_CHECKPOINT
from afm_ray.registry.checkpoints import load_checkpoint_model
from afm_ray.train.run_state import RUN_STATE_FILE, latest_history
from afm_ray.train.trainer import run_training

from conftest import CONFIGS, REPO, copied_mlflow_store, qm9_sample_database

AFM_RAY = Path(sys.executable).parent / "afm-ray"


def metric_steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_changed_config_is_refused_and_continues_in_a_linked_run_when_allowed(ray_session, tiny_config, tmp_path,
                                                                                run_cli):
    first = run_training(tiny_config.model_copy(update={"run": tiny_config.run.model_copy(update={"epochs": 1})}),
                         progress=False)
    run_dir = tiny_config.run.storage_path / tiny_config.run_name
    client = MlflowClient(tiny_config.mlflow.tracking_uri)

    # run.epochs and the actors' count may change on resume; the loss weights may not
    changed = tiny_config.model_dump(mode="json")
    changed["loss"]["dsh_weights"] = [10.0, 0.3, 0.2]
    changed["pipeline"]["num_sim_actors"] = 1
    config_file = tmp_path / "changed.yaml"
    config_file.write_text(yaml.safe_dump(changed))
    started = time.time()
    code, _, err = run_cli("train", "--config", config_file)
    assert code == 2, err
    assert "loss.dsh_weights: [20.0, 0.3, 0.2] → [10.0, 0.3, 0.2]" in err and "--allow-changed" in err, err
    assert "run.epochs" not in err and "num_sim_actors" not in err, err
    assert time.time() - started < 30  # refused before any simulation or training
    assert len(client.search_runs([client.get_experiment_by_name("afm-ray").experiment_id])) == 1
    assert json.loads((run_dir / RUN_STATE_FILE).read_text())["mlflow_run_id"] == first.run_id

    code, out, err = run_cli("train", "--config", config_file, "--allow-changed")
    assert code == 0, err
    state = json.loads((run_dir / RUN_STATE_FILE).read_text())
    new_run_id = state["mlflow_run_id"]
    assert new_run_id != first.run_id and f"linked to {first.run_id}" in out
    new, old = client.get_run(new_run_id), client.get_run(first.run_id)
    assert new.data.tags["afm_ray.resumed_from"] == first.run_id and new.data.tags["afm_ray.resumed_at_epoch"] == "1"
    assert "loss.dsh_weights: [20.0, 0.3, 0.2] → [10.0, 0.3, 0.2]" in new.data.tags["afm_ray.changed_fields"]
    assert old.data.tags["afm_ray.continued_in"] == new_run_id
    # each MLflow run's params are the config its own epochs were trained with
    assert new.data.params["loss.dsh_weights"] == "[10.0, 0.3, 0.2]"
    assert old.data.params["loss.dsh_weights"] == "[20.0, 0.3, 0.2]"
    # the checkpoint continued: epoch 0 is the old run's, epoch 1 the new run's, none trained twice
    assert metric_steps(client, first.run_id, "val_loss") == [0]
    assert metric_steps(client, new_run_id, "val_loss") == [1]
    _, _, history = load_checkpoint_model(Path(out.strip().splitlines()[-1].split("checkpoint ")[-1]))
    assert [h["epoch"] for h in history] == [0, 1]
    assert new.data.tags["mlflow.runName"] == old.data.tags["mlflow.runName"] == "tiny"
    assert state["previous_runs"] == [{"mlflow_run_id": first.run_id, "first_epoch": 0,
                                       "changed_after": {"loss.dsh_weights": ["[20.0, 0.3, 0.2]", "[10.0, 0.3, 0.2]"]}}]
    assert client.get_run(new_run_id).info.status == "FINISHED"


# -- a re-created RayJob continues an interrupted sweep --------------------------------------------
TUNE_JOB = REPO / "k8s" / "jobs" / "tune-xyz.yaml"
# Shrinks the sweep to test size; the only other deviations from the manifest's entrypoint are the
# /app and /data prefixes (the image's code and the shared volume) mapped to the repository and tmp_path.
SHRINK_SWEEP = ["budget.num_samples=3", "scheduler.grace_period_epochs=3"]  # ASHA stops no trial: each trains 3 epochs
SHRINK_TRIALS = {
    "run.epochs": 3, "run.batch_size": 6, "run.num_figure_samples": 1, "data.rotations_per_molecule": 1, "data.eval_rotations_per_molecule": 1,
    "sim.scan_size_angstrom": [8, 8], "sim.scan_pixels": [64, 64], "sim.num_slices": 12,
    "augment.scan_height": {"window_slices": 8, "kept_slices": 6},
    # no GPUs here: OpenCL on the CPU; the KubeRay resources sim_gpu / train_gpu stay, advertised below
    "pipeline.sim_num_gpus": 0, "pipeline.opencl_device": "auto", "pipeline.sim_num_cpus": 0.25,
    "scaling.use_gpu": False,
}


def rayjob_entrypoint(data_dir: Path) -> list[str]:
    """The argv of ``k8s/jobs/tune-xyz.yaml``'s entrypoint, with /app → the repository, /data → ``data_dir``,
    and the test-size overrides appended."""
    entrypoint = yaml.safe_load(TUNE_JOB.read_text())["spec"]["entrypoint"]
    mapped = re.sub(r"(?<![\w.])/data/", f"{data_dir}/", re.sub(r"(?<![\w.])/app/", f"{REPO}/", entrypoint))
    argv = shlex.split(mapped)
    assert argv[:2] == ["afm-ray", "tune"] and "--resume-if-exists" in argv  # re-creating it needs no edit
    train_overrides = yaml.safe_load(next(a for a in argv if a.startswith("train_overrides="))[len("train_overrides="):])
    return [str(AFM_RAY), *argv[1:], *SHRINK_SWEEP,
            "train_overrides=" + json.dumps({**train_overrides, **SHRINK_TRIALS})]


def sweep_results(sweep_dir: Path) -> list[dict]:
    """Every result Tune recorded (the trials' result.json lines), each trial's in order."""
    return [json.loads(line) for path in sweep_dir.glob("*/result.json")
            for line in path.read_text().splitlines() if line.strip()]


def trial_reports(sweep_dir: Path, trained_only: bool = True) -> dict[str, list[int]]:
    """Every Tune trial's reported epochs, in order; ``trained_only``: without the final result that a trial
    trained to the end before an interruption reports again from its checkpoint."""
    reports = {}
    for result in sweep_results(sweep_dir):
        if not (trained_only and result.get(REPORTED_FROM_CHECKPOINT)):
            reports.setdefault(result["trial_id"], []).append(int(result["epoch"]))
    return reports


def test_recreated_rayjob_continues_an_interrupted_sweep_without_repeating_trials(tmp_path, run_cli, monkeypatch,
                                                                                  mlflow_store_template):
    qm9_sample_database(tmp_path, "dataset1", (12, 6, 6))  # /data/qm9.parquet with xyz.yaml's split name
    command = rayjob_entrypoint(tmp_path)
    environment = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                   # the cluster's MLflow (k8s: MLFLOW_TRACKING_URI from the job's env) and its worker groups'
                   # custom resources, advertised the way KubeRay's autoscaler does
                   "MLFLOW_TRACKING_URI": copied_mlflow_store(mlflow_store_template, tmp_path / "mlruns.db"),
                   "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 2, "sim_gpu": 1, "train_gpu": 1})}
    sweep_dir = tmp_path / "runs" / "tune" / "sweep-xyz"
    trials_dir = sweep_dir / "trials"

    def submit(log_name: str) -> subprocess.Popen:
        with (tmp_path / log_name).open("w") as log:
            return subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    # first submission: stopped once one trial finished and the next has its first checkpoint (of 3)
    driver = submit("first.log")
    deadline = time.time() + 500
    while True:
        started = [path.parent for path in trials_dir.glob(f"*/{RUN_STATE_FILE}")]
        checkpointed = [path for path in started if list(path.glob("checkpoint_*/history.json"))]
        if len(started) >= 2 and len(checkpointed) >= 2:  # one trial at a time: the first one has ended
            break
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "no second trial within the time limit"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the job's driver dies (the RayJob is deleted, the pod evicted)
    driver.wait()
    before = trial_reports(sweep_dir)
    finished = {trial for trial, epochs in before.items() if epochs[-1] == 2}
    assert finished, before
    assert any(len(latest_history(run_dir)) < 3 for run_dir in started), "no trial was interrupted mid-way"
    # without --resume-if-exists (or --resume) an existing sweep is refused, not started over
    code, _, err = run_cli(*[argument for argument in command[1:] if argument != "--resume-if-exists"])
    assert code == 2 and "pass --resume" in err, err

    # the re-created RayJob: the same entrypoint
    second = submit("second.log")
    assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-3000:]
    final = trial_reports(sweep_dir, trained_only=False)
    assert len(final) == 3 and all(epochs[-1] == 2 for epochs in final.values()), final  # every trial to the end
    # The interrupted trial continues from its checkpoint whether or not Tune's experiment state had recorded
    # it before the kill (if not, Tune's iteration count restarts at 1): either way the count ASHA reads
    # (time_attr epochs_completed) is the epochs trained, never the iterations of this submission
    trained = [result for result in sweep_results(sweep_dir) if not result.get(REPORTED_FROM_CHECKPOINT)]
    assert all(result["epochs_completed"] == result["epoch"] + 1 for result in trained), trained
    after = trial_reports(sweep_dir)
    for trial, epochs in after.items():
        assert epochs == sorted(set(epochs)), (trial, epochs)  # no epoch trained twice
        if trial in finished:
            assert epochs == before[trial], (trial, before[trial], epochs)  # a finished trial did not run again
    # Tune forgets the results of a trial it had not recorded as started; the trials' own checkpoints and
    # MLflow runs count every epoch (logged once it is checkpointed): each was trained exactly once
    for run_dir in trials_dir.iterdir():
        assert [h["epoch"] for h in latest_history(run_dir)] == [0, 1, 2], run_dir
    client = MlflowClient(environment["MLFLOW_TRACKING_URI"])
    parent_run_id = json.loads((sweep_dir / RUN_STATE_FILE).read_text())["mlflow_run_id"]
    children = client.search_runs([client.get_experiment_by_name("afm-ray").experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent_run_id}'")
    assert len(children) == 3
    assert all(metric_steps(client, child.info.run_id, "val_loss") == [0, 1, 2] for child in children)
    # the sweep's searcher, Optuna, proposed each trial's values inside tune/xyz.yaml's ranges, no two alike
    sweep_file = yaml.safe_load((REPO / "tune" / "xyz.yaml").read_text())
    assert sweep_file["searcher"] == "optuna"
    proposed = [{name: float(child.data.params[name]) for name in sweep_file["search"]} for child in children]
    for values in proposed:
        for name, dimension in sweep_file["search"].items():
            (low, high), = dimension.values()
            assert low <= values[name] <= high, (name, values)
    assert len({tuple(values.values()) for values in proposed}) == 3, proposed
    versions = client.search_model_versions("name = 'afm-xyz'")
    assert len(versions) == 1 and str(client.get_model_version_by_alias("afm-xyz", "champion").version) == "1"

    # Both answered before any cluster work, so they run in this process (same environment and folder).
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in ("MLFLOW_TRACKING_URI", "RAY_OVERRIDE_RESOURCES"):
        monkeypatch.setenv(name, environment[name])
    monkeypatch.chdir(tmp_path)
    # once more after it finished: reports the champion, trains and registers nothing
    code, out, err = run_cli(*command[1:])
    assert code == 0 and "finished already" in out, out[-2000:] + err[-2000:]
    assert trial_reports(sweep_dir, trained_only=False) == final
    assert len(client.search_model_versions("name = 'afm-xyz'")) == 1

    # Tune would restore the saved search space and scheduler: a changed sweep is refused, naming the fields
    command += ["budget.num_samples=5", "train_overrides=" + json.dumps({**json.loads(
        command[-1][len("train_overrides="):]), "run.epochs": 4})]
    code, _, err = run_cli(*command[1:])
    assert code == 2, err[-2000:]
    assert "budget.num_samples: 3 → 5" in err and "train.run.epochs: 3 → 4" in err, err[-2000:]
    assert "choose another sweep name" in err


# -- relative paths on a cluster of several nodes ----------------------------------------------------
MULTI_NODE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from ray.cluster_utils import Cluster
    from afm_ray.cli import main
    from afm_ray.errors import InputError
    from afm_ray.recipe import load_train_config
    from afm_ray.train.trainer import prepare

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2})
    os.environ["RAY_ADDRESS"] = cluster.address
    config = load_train_config(sys.argv[1], ["data.split=tiny", "data.max_train_molecules=12", "run.batch_size=6"])
    resolved = prepare(config)[0]  # one node: relative paths are fine and resolved against the cwd
    report = {"single_node_database": str(resolved.data.database)}
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        prepare(config)
    except InputError as exc:
        report["two_nodes_error"] = str(exc)
    report["cli_code"] = main(["train", "--config", sys.argv[1], "data.split=tiny", "data.database=/abs/qm9.parquet",
                               "data.fixed_set_dir=/abs/fixed", "run.storage_path=/abs/runs",
                               "mlflow.tracking_uri=sqlite:////abs/mlruns.db"])
    print("REPORT " + json.dumps(report), flush=True)
    import ray
    ray.shutdown()
    cluster.shutdown()
""")


def test_relative_paths_are_refused_on_a_multi_node_cluster(tiny_database, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qm9.parquet").write_bytes(tiny_database.read_bytes())
    script = tmp_path / "multi_node.py"
    script.write_text(MULTI_NODE_SCRIPT)
    # the default tracking store (sqlite:///mlruns.db, relative), whatever earlier tests set
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    environment["PYTHONPATH"] = str(REPO)
    job = subprocess.run([sys.executable, str(script), str(CONFIGS / "quickstart.yaml")], cwd=tmp_path,
                         env=environment, capture_output=True, text=True, timeout=300)
    reports = [line for line in job.stdout.splitlines() if line.startswith("REPORT ")]
    assert job.returncode == 0 and reports, job.stdout[-3000:] + job.stderr[-3000:]
    report = json.loads(reports[0][len("REPORT "):])
    assert report["single_node_database"] == str(tmp_path / "data" / "qm9.parquet")
    error = report["two_nodes_error"]
    for field in ("data.database=data/qm9.parquet", "data.fixed_set_dir=data/fixed_sets", "run.storage_path=runs",
                  "mlflow.tracking_uri=sqlite:///mlruns.db"):
        assert field in error, error
    assert "the other 1 node(s)" in error and "absolute paths on shared storage" in error, error
    # absolute paths pass the check (and fail later, on the missing database: no cluster work either way)
    assert report["cli_code"] == 2 and "relative paths" not in job.stderr and "molecule database not found" in job.stderr, \
        job.stderr[-3000:]
