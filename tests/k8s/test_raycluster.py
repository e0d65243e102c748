"""The RayCluster: an idle head, GPU worker groups advertising their custom resources, shared memory, the
data volume and MLflow on every Ray pod, Ray versions that agree, the KubeRay operator's rules."""

from __future__ import annotations

import re

import pytest
import yaml

from k8s.manifests import DATA_MOUNT, K8S, MLFLOW_URI, OVERLAYS, dockerfile_args, one, ray_container, worker_groups


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_raycluster_head_takes_no_work(rendered, name):
    cluster = one(rendered[name], "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in ray_container(head["template"])["resources"]["limits"]
    assert not head.get("resources"), "the head keeps num-cpus in rayStartParams (KubeRay rejects both)"
    assert cluster["spec"]["authOptions"]["mode"] == "token"


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_worker_groups_advertise_sim_gpu_and_train_gpu(rendered, name):
    cluster = one(rendered[name], "RayCluster")
    groups = worker_groups(cluster)
    assert set(groups) == {"sim-workers", "train-workers"}
    for group_name, resource in (("sim-workers", "sim_gpu"), ("train-workers", "train_gpu")):
        group = groups[group_name]
        assert set(group["resources"]) == {resource}
        gpus = ray_container(group["template"])["resources"]["limits"]["nvidia.com/gpu"]
        assert float(group["resources"][resource]) == float(gpus), f"{group_name}: one {resource} per GPU"
        # KubeRay: the resources field and rayStartParams resources must not both be set
        assert not {"num-cpus", "num-gpus", "memory", "resources"} & set(group.get("rayStartParams", {}))
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert any(t["key"] == "nvidia.com/gpu" for t in group["template"]["spec"].get("tolerations", []))


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_ray_pods_share_memory_data_volume_and_mlflow(rendered, name):
    docs = rendered[name]
    cluster = one(docs, "RayCluster")
    data_claim = "afm-ray-data"
    templates = [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    for template in templates:
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in ray_container(template)["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert volumes[mounts[DATA_MOUNT]]["persistentVolumeClaim"]["claimName"] == data_claim
        env = {e["name"]: e.get("value") for e in ray_container(template)["env"]}
        assert env["MLFLOW_TRACKING_URI"] == MLFLOW_URI
    service = one(docs, "Service", "mlflow")
    assert any(port["port"] == 5000 for port in service["spec"]["ports"])
    claim = one(docs, "PersistentVolumeClaim", data_claim)
    if name != "overlays/dev":   # dev: one node, ReadWriteOnce is shared by its pods
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_ray_versions_agree_with_the_image_and_the_tests():
    import ray

    cluster = yaml.safe_load((K8S / "base" / "raycluster.yaml").read_text())
    assert cluster["spec"]["rayVersion"] == ray.__version__
    assert dockerfile_args(K8S / "Dockerfile")["RAY_VERSION"] == ray.__version__


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_kuberay_operator_rules(rendered, name):
    """Rules the KubeRay operator's validation enforces beyond the CRD schema."""
    cluster = one(rendered[name], "RayCluster")
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,45}[a-z0-9])?", cluster["metadata"]["name"])
    if not cluster["spec"].get("enableInTreeAutoscaling"):
        for group in cluster["spec"]["workerGroupSpecs"]:
            assert "minReplicas" in group and "maxReplicas" in group
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        assert "labels" not in group.get("rayStartParams", {})
        if group.get("resources"):
            assert not {"num-cpus", "num-gpus", "memory", "resources"} & set(group.get("rayStartParams", {}))
