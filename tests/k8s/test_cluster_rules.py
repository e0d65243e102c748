"""Nothing exposed outside the cluster, credentials only through Secrets, requests and limits on every
container, references between resources that resolve."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from k8s.kustomize import resource_id
from k8s.manifests import (K8S, KUSTOMIZATIONS, PAIRS, REPO, SECRET_ENV, by_kind, containers, pod_specs,
                           pod_templates, selects)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_nothing_is_exposed_outside_the_cluster(rendered, name):
    docs = rendered[name]
    for doc in docs:
        assert doc["kind"] not in {"Ingress", "Route", "Gateway", "HTTPRoute", "IngressRoute"}, resource_id(doc)
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", resource_id(doc)
            assert not doc["spec"].get("externalIPs"), resource_id(doc)
        for pod in pod_specs(doc):
            assert not pod.get("hostNetwork"), resource_id(doc)
            for container in pod["containers"]:
                assert all("hostPort" not in port for port in container.get("ports", [])), resource_id(doc)
    for cluster in by_kind(docs, "RayCluster"):
        head = cluster["spec"]["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        assert not head.get("enableIngress")
        assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_credentials_only_through_secrets(rendered, name):
    docs = rendered[name]
    secrets = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "Secret")}
    for secret in secrets.values():
        assert "stringData" not in secret, f"Secret {secret['metadata']['name']} has plaintext stringData"
    for doc in docs:
        for container in containers(doc):
            where = f"{resource_id(doc)} container {container['name']}"
            for env in container.get("env", []):
                if SECRET_ENV.search(env["name"]):
                    assert "value" not in env, f"{where}: {env['name']} has a literal value"
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env['name']} is not a secretKeyRef"
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"{where}: Secret {ref['name']} is not in the kustomization"
                    assert ref["key"] in secrets[ref["name"]]["data"], f"{where}: no key {ref['key']} in {ref['name']}"
            texts = container.get("command", []) + container.get("args", []) + \
                [env.get("value", "") for env in container.get("env", [])]
            for text in texts:
                for user_info in re.findall(r"://([^/@\s]+)@", text):
                    assert re.fullmatch(r"(\$\([A-Z_]+\))(:\$\([A-Z_]+\))?", user_info), \
                        f"{where}: credentials written into {text!r}"


def test_no_secret_or_plaintext_password_is_committed():
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Secret", f"{path}: Secrets come from secretGenerator only"
                assert "stringData" not in json.dumps(doc), path
    examples = sorted(K8S.rglob("*.env.example"))
    assert {p.name for p in examples} == {"postgres.env.example", "minio.env.example", "minio-mlflow.env.example",
                                          "mlflow-database.env.example", "mlflow-admin.env.example",
                                          "mlflow-job.env.example"}
    for example in examples:
        passwords = [line for line in example.read_text().splitlines()
                     if line.partition("=")[0] in {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY",
                                                   "MLFLOW_DB_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD",
                                                   "MLFLOW_TRACKING_PASSWORD"}]
        assert passwords and all(line.endswith("=CHANGE_ME") for line in passwords), example
        real = example.with_suffix("")
        if shutil.which("git") and (REPO / ".git").exists():
            ignored = subprocess.run(["git", "check-ignore", "-q", str(real)], cwd=REPO).returncode == 0
            kept = subprocess.run(["git", "check-ignore", "-q", str(example)], cwd=REPO).returncode != 0
            assert ignored and kept, f"git must ignore {real.name} and keep {example.name}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_has_requests_and_limits(rendered, name):
    for doc in rendered[name]:
        for container in containers(doc):
            where = f"{resource_id(doc)} container {container['name']}"
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound} need cpu and memory"
            if "nvidia.com/gpu" in resources.get("requests", {}) or "nvidia.com/gpu" in resources["limits"]:
                assert resources["limits"].get("nvidia.com/gpu") == resources["requests"].get("nvidia.com/gpu"), where
            assert quantity(resources["requests"]["memory"]) <= quantity(resources["limits"]["memory"]), where
            assert quantity(resources["requests"]["cpu"]) <= quantity(resources["limits"]["cpu"]), where


def quantity(value) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for unit, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * factor
    return float(text)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_references_between_resources_resolve(rendered, name):
    docs = rendered[name]
    claims = {doc["metadata"]["name"] for doc in by_kind(docs, "PersistentVolumeClaim")}
    for doc in docs:
        for pod in pod_specs(doc):
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, resource_id(doc)
            names = {v["name"] for v in pod.get("volumes", [])}
            names |= {t["metadata"]["name"] for t in doc.get("spec", {}).get("volumeClaimTemplates", [])}
            for container in pod["containers"]:
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in names, f"{resource_id(doc)}: volume {mount['name']} is not defined"
    templates = [t for doc in docs for t in pod_templates(doc)]
    labels = [t.get("metadata", {}).get("labels", {}) for t in templates]
    for service in by_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= pod.items() for pod in labels), f"Service {service['metadata']['name']} selects no pod"
    # the platform's policies also cover the pods of its RayJobs (the submitters)
    job_labels = [t["metadata"]["labels"] for doc in rendered.get(dict(PAIRS).get(name), []) for t in pod_templates(doc)]
    for policy in by_kind(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        assert any(selects(selector, pod) for pod in labels + job_labels), \
            f"NetworkPolicy {policy['metadata']['name']} selects no pod"
    for workload in [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]:
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
