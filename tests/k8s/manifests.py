"""What the k8s tests share: paths and names of the deployment, lookups in rendered documents (pods,
containers, Dockerfile instructions) and the pod listing the security checks walk."""

from __future__ import annotations

import copy
import re
from pathlib import Path


from conftest import REPO, SHARED


K8S = REPO / "k8s"
KUBERAY_SCHEMAS = SHARED / "schemas" / "kuberay"
KUBERNETES_VERSION = "1.32.0"
# every kustomization under k8s/; each platform overlay is paired with its RayJobs
KUSTOMIZATIONS = ["base", "jobs", "overlays/dev", "overlays/dev/jobs", "overlays/prod", "overlays/prod/jobs"]
PAIRS = [("base", "jobs"), ("overlays/dev", "overlays/dev/jobs"), ("overlays/prod", "overlays/prod/jobs")]
OVERLAYS = ["overlays/dev", "overlays/prod"]
COMPONENTS = ["components/cert-manager"]   # kustomize Components the overlays include
IMAGE_ROOT = "/app"   # WORKDIR of k8s/Dockerfile: the repository's configs/ and tune/ are at /app/configs, /app/tune
DATA_MOUNT = "/data"
MLFLOW_URI = "https://mlflow:5000"
SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PriorityClass"}
RAY_KINDS = {"RayCluster", "RayJob"}
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}   # components/cert-manager: checked by test_cert_manager_resources


def pod_specs(node) -> list[dict]:
    """Every pod spec in a resource (Deployments, Jobs, RayCluster groups, RayJob submitters, ...)."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            found.append(node)
        for value in node.values():
            found += pod_specs(value)
    elif isinstance(node, list):
        for value in node:
            found += pod_specs(value)
    return found


def pod_templates(doc: dict) -> list[dict]:
    """Pod templates (``{metadata, spec}``) of a resource."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("spec"), dict) and isinstance(node["spec"].get("containers"), list):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc.get("spec", {}))
    return found


def containers(doc: dict) -> list[dict]:
    return [c for pod in pod_specs(doc) for c in pod.get("containers", []) + pod.get("initContainers", [])]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [doc for doc in by_kind(docs, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, arguments = current.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def dockerfile_args(path: Path) -> dict[str, str]:
    args = {}
    for keyword, arguments in dockerfile(path):
        if keyword == "ARG" and "=" in arguments:
            key, _, value = arguments.partition("=")
            args.setdefault(key, value)
    return args


def worker_groups(cluster: dict) -> dict[str, dict]:
    return {group["groupName"]: group for group in cluster["spec"]["workerGroupSpecs"]}


def ray_container(template: dict) -> dict:
    return template["spec"]["containers"][0]


def env_of(container: dict) -> dict[str, dict]:
    return {env["name"]: env for env in container.get("env", [])}


def image_user(path: Path) -> tuple[int, int | None]:
    """(uid, gid) of the last USER of a Dockerfile; it must be numeric (Kubernetes checks
    runAsNonRoot against the image only for numeric users)."""
    users = [a for k, a in dockerfile(path) if k == "USER"]
    assert users, f"{path.name}: no USER (the image would run as root)"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"{path.name}: USER {users[-1]} is not numeric"
    uid, gid = int(match.group(1)), match.group(2) and int(match.group(2))
    assert uid != 0, f"{path.name}: USER 0 is root"
    return uid, gid


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND matchExpressions; {} selects all)."""
    if selector is None:
        return True
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise NotImplementedError(f"selector fields {sorted(unknown)}")
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in {"In", "NotIn", "Exists", "DoesNotExist"}:
            raise NotImplementedError(f"selector operator {operator}")
    return True


def pod_name(template: dict) -> str:
    return template["metadata"]["labels"]["app.kubernetes.io/name"]


def with_kuberay_injections(doc: dict) -> list[dict]:
    """The pod templates of a resource as the pods will run: KubeRay adds to every worker pod an
    init container ``wait-gcs-ready`` with the Ray container's securityContext, env and mounts
    (ray-operator/controllers/ray/common/pod.go, DefaultWorkerPodTemplate)."""
    templates = copy.deepcopy(pod_templates(doc))
    if doc["kind"] == "RayCluster":
        for template in templates[1:]:    # [head, *worker groups]
            ray = template["spec"]["containers"][0]
            template["spec"].setdefault("initContainers", []).append({
                "name": "wait-gcs-ready", "image": ray["image"], "command": ["/bin/bash", "-lc", "--"],
                "securityContext": copy.deepcopy(ray.get("securityContext")), "env": copy.deepcopy(ray.get("env", [])),
                "volumeMounts": copy.deepcopy(ray.get("volumeMounts", []))})
    return templates


def platform_pods(rendered: dict, platform: str) -> dict[str, dict]:
    """Every pod template of a platform overlay and its RayJobs, by app.kubernetes.io/name."""
    jobs = dict(PAIRS)[platform]
    pods = {}
    for doc in rendered[platform] + rendered[jobs]:
        for template in with_kuberay_injections(doc):
            name = pod_name(template)
            assert name not in pods, f"two pod templates are called {name}"
            pods[name] = template
    return pods
