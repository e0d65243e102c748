"""The RayJobs: they run on the RayCluster, their entrypoints parse as afm-ray commands whose configs load
and whose resources name the worker groups', the data-preparation job builds what the others read."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml


from k8s.kustomize import split_image
from k8s.manifests import (DATA_MOUNT, IMAGE_ROOT, K8S, OVERLAYS, PAIRS, REPO, by_kind, dockerfile_args, one,
                           ray_container, worker_groups)


def repo_config(path: str) -> Path:
    assert path.startswith((f"{IMAGE_ROOT}/configs/", f"{IMAGE_ROOT}/tune/")), \
        f"configs (training: configs/, sweeps: tune/) are named by their path in the image: {path}"
    local = REPO / path.removeprefix(f"{IMAGE_ROOT}/")
    assert local.exists(), local
    return local


def parse_entrypoint(entrypoint: str):
    from afm_ray.cli import build_parser

    argv = shlex.split(entrypoint)
    assert argv[0] == "afm-ray", entrypoint
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["afm-ray"] == "afm_ray.cli:run"  # main(argv) with the process's exit status
    return build_parser().parse_args(argv[1:])


def job_train_configs(job: dict):
    """(TrainConfig, how many trials at once) of a RayJob's entrypoint (for a sweep: of its trials,
    whose run.storage_path the sweep sets under its own storage_path)."""
    from afm_ray.recipe import load_train_config

    args = parse_entrypoint(job["spec"]["entrypoint"])
    if args.command == "train":
        return load_train_config(repo_config(str(args.config)), args.overrides), 1
    assert args.command == "tune", job["spec"]["entrypoint"]
    from afm_ray.sweep import load_sweep_config

    sweep = load_sweep_config(repo_config(str(args.config)), args.overrides)
    from_file = load_sweep_config(repo_config(str(args.config)))
    for key, value in from_file.train_overrides.items():
        assert sweep.train_overrides.get(key) == value, \
            f"train_overrides of the RayJob drops {key}: {value} of {args.config} (it replaces the whole mapping)"
    overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sweep.train_overrides.items()]
    assert str(sweep.storage_path).startswith(DATA_MOUNT + "/"), "the sweep's state must be on the shared volume"
    overrides.append(f"run.storage_path={sweep.storage_path / sweep.name}")
    return load_train_config(sweep.train_config, overrides), sweep.max_concurrent_trials


@pytest.mark.parametrize("platform,jobs", PAIRS)
def test_rayjobs_run_on_the_raycluster(rendered, platform, jobs):
    cluster = one(rendered[platform], "RayCluster")
    rayjobs = by_kind(rendered[jobs], "RayJob")
    assert {job["metadata"]["name"] for job in rayjobs} == {"train-dsh", "tune-xyz"}
    for job in rayjobs:
        spec = job["spec"]
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,45}[a-z0-9])?", job["metadata"]["name"])
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert "rayClusterSpec" not in spec
        # KubeRay: with clusterSelector the job must not shut the shared cluster down, and a TTL
        # needs shutdownAfterJobFinishes; no retries (backoffLimit) in clusterSelector mode
        assert spec["shutdownAfterJobFinishes"] is False and spec.get("ttlSecondsAfterFinished", 0) == 0
        assert spec.get("backoffLimit", 0) == 0
        assert spec.get("submissionMode", "K8sJobMode") in {"K8sJobMode", "HTTPMode"}
        assert spec["entrypointNumCpus"] > 0, "a driver without CPUs would run on the head"
        if "runtimeEnvYAML" in spec:
            assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
        submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
        # the small submitter image, from the registry of the cluster's image, with the cluster's Ray
        name, tag, _ = split_image(submitter["image"])
        cluster_name, _, _ = split_image(ray_container(cluster["spec"]["headGroupSpec"]["template"])["image"])
        assert name.rpartition("/")[2] == "afm-ray-submitter", submitter["image"]
        assert name.rpartition("/")[0] == cluster_name.rpartition("/")[0], "same registry as the cluster image"
        assert tag == cluster["spec"]["rayVersion"] == dockerfile_args(K8S / "submitter.Dockerfile")["RAY_VERSION"]
        assert "command" not in submitter, "KubeRay fills in the ray job submit command"


@pytest.mark.parametrize("job_name", ["train-dsh", "tune-xyz"])
@pytest.mark.parametrize("platform,jobs", PAIRS)
def test_rayjob_entrypoints_parse_and_name_the_worker_group_resources(rendered, platform, jobs, job_name):
    cluster = one(rendered[platform], "RayCluster")
    groups = worker_groups(cluster)

    def total(group_name, key):
        group = groups[group_name]
        per_pod = group["resources"].get(key) if key in group["resources"] else \
            ray_container(group["template"])["resources"]["limits"].get(key, 0)
        return float(per_pod) * group["replicas"]

    for job in [one(rendered[jobs], "RayJob", job_name)]:
        name = job["metadata"]["name"]
        config, trials = job_train_configs(job)
        pipeline, scaling = config.pipeline, config.scaling
        # the same custom resources the worker groups advertise
        assert set(pipeline.sim_resources) == set(groups["sim-workers"]["resources"]), name
        assert set(scaling.resources_per_worker) == set(groups["train-workers"]["resources"]), name
        # ... and enough of them: every actor and every rank of every concurrent trial gets placed
        for key, amount in pipeline.sim_resources.items():
            assert pipeline.num_sim_actors * amount <= total("sim-workers", key), f"{name}: {key}"
        assert pipeline.num_sim_actors * pipeline.sim_num_gpus <= total("sim-workers", "nvidia.com/gpu"), name
        for key, amount in scaling.resources_per_worker.items():
            assert trials * scaling.num_workers * amount <= total("train-workers", key), f"{name}: {key}"
        if scaling.use_gpu:
            assert trials * scaling.num_workers <= total("train-workers", "nvidia.com/gpu"), name
        # data, fixed sets and checkpoints on the shared volume
        for path in (config.data.database, config.data.fixed_set_dir, config.run.storage_path):
            assert str(path).startswith(DATA_MOUNT + "/"), f"{name}: {path} is not on the shared volume"
        assert config.mlflow.tracking_uri is None, "the tracking URI comes from MLFLOW_TRACKING_URI of the Ray pods"


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_prepare_data_job_builds_the_database_the_jobs_read(rendered, name):
    from afm_ray.cli import build_parser
    from afm_ray.recipe import load_train_config

    job = ray_container(one(rendered[name], "Job", "prepare-data")["spec"]["template"])
    assert job["command"] == ["sh", "-c"]
    guard, _, command = job["args"][0].partition("||")
    argv = shlex.split(command)
    assert argv[0] == "afm-ray"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.molecules_command) == ("molecules", "build-qm9")
    assert shlex.split(guard) == ["test", "-f", str(args.out)], "the Job must not rebuild an existing database"
    train = parse_entrypoint(one(rendered["jobs"], "RayJob", "train-dsh")["spec"]["entrypoint"])
    config = load_train_config(repo_config(str(train.config)), train.overrides)
    assert config.data.database == args.out
    assert config.data.split == "dataset1", "build-qm9 writes the dataset1 split"
