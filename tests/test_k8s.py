"""The Kubernetes deployment in ``k8s/``: container image, kustomize base and overlays, KubeRay resources.

Nothing here needs a cluster or a docker engine. The kustomizations are rendered by a small
renderer below (``resources``, ``namespace``, ``images``, ``secretGenerator``/``configMapGenerator``,
``patches`` with JSON 6902 or strategic-merge patches: what ``k8s/`` uses) and, where ``kubectl`` is
installed, compared with ``kubectl kustomize``. The output is validated against the Kubernetes
OpenAPI schemas (``kubernetes-validate``, strict) and the KubeRay CRD schemas
(``../shared/schemas/kuberay``), then checked for the rules of this deployment: nothing exposed
outside the cluster, credentials only through Secrets, requests and limits on every container, the
worker groups' custom resources matching what the RayJobs ask for, and RayJob entrypoints that
``afm-ray`` accepts with configs that load.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
KUBERNETES_VERSION = "1.32.0"
# every kustomization under k8s/; each platform overlay is paired with its RayJobs
KUSTOMIZATIONS = ["base", "jobs", "overlays/dev", "overlays/dev/jobs", "overlays/prod", "overlays/prod/jobs"]
PAIRS = [("base", "jobs"), ("overlays/dev", "overlays/dev/jobs"), ("overlays/prod", "overlays/prod/jobs")]
OVERLAYS = ["overlays/dev", "overlays/prod"]
IMAGE_ROOT = "/app"   # WORKDIR of k8s/Dockerfile: the repository's configs/ are at /app/configs
DATA_MOUNT = "/data"
MLFLOW_URI = "http://mlflow:5000"
SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PriorityClass"}
RAY_KINDS = {"RayCluster", "RayJob"}


# --------------------------------------------------------------------------------------------
# a small kustomize
# --------------------------------------------------------------------------------------------

class Kustomize:
    """Renders the kustomize features that ``k8s/`` uses; anything else raises ``NotImplementedError``."""

    KEYS = {"apiVersion", "kind", "namespace", "resources", "patches", "images", "secretGenerator",
            "configMapGenerator", "generatorOptions"}
    # strategic-merge keys of the core lists the patches touch (CRDs: lists are replaced)
    MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
                  "volumeMounts": "mountPath", "ports": "containerPort"}

    def build(self, folder: Path) -> list[dict]:
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        unknown = set(kustomization) - self.KEYS
        if unknown:
            raise NotImplementedError(f"{folder}: kustomization keys {sorted(unknown)} not supported by the test renderer")
        docs: list[dict] = []
        for entry in kustomization.get("resources", []):
            path = folder / entry
            docs += self.build(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
        options = kustomization.get("generatorOptions", {})
        for key, kind in (("secretGenerator", "Secret"), ("configMapGenerator", "ConfigMap")):
            for generator in kustomization.get(key, []):
                docs.append(self.generate(folder, kind, generator, options))
        for patch in kustomization.get("patches", []):
            self.patch(folder, docs, patch)
        if "namespace" in kustomization:
            for doc in docs:
                if doc["kind"] == "Namespace":
                    doc["metadata"]["name"] = kustomization["namespace"]
                elif doc["kind"] not in CLUSTER_SCOPED:
                    doc["metadata"]["namespace"] = kustomization["namespace"]
        for image in kustomization.get("images", []):
            for doc in docs:
                self.set_image(doc, image)
        ids = [resource_id(doc) for doc in docs]
        duplicates = {i for i in ids if ids.count(i) > 1}
        assert not duplicates, f"{folder}: duplicate resources {duplicates}"
        return docs

    @staticmethod
    def generate(folder: Path, kind: str, generator: dict, options: dict) -> dict:
        if not (generator.get("options", options) or {}).get("disableNameSuffixHash"):
            raise NotImplementedError("generators with name-suffix hashes (set disableNameSuffixHash: true)")
        if set(generator) - {"name", "envs", "literals", "files", "type", "options"}:
            raise NotImplementedError(f"generator fields {sorted(generator)}")
        data: dict[str, str] = {}
        lines = list(generator.get("literals", []))
        for env in generator.get("envs", []):
            lines += [line for line in (folder / env).read_text().splitlines()
                      if line.strip() and not line.lstrip().startswith("#")]
        for line in lines:
            key, _, value = line.partition("=")
            data[key.strip()] = value
        for entry in generator.get("files", []):
            key, _, path = entry.rpartition("=")
            data[key or Path(path).name] = (folder / path).read_text()
        doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": generator["name"]}}
        if kind == "Secret":
            doc["type"] = generator.get("type", "Opaque")
            doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        else:
            doc["data"] = data
        return doc

    def patch(self, folder: Path, docs: list[dict], entry: dict) -> None:
        if set(entry) - {"path", "patch", "target"}:
            raise NotImplementedError(f"patch fields {sorted(entry)}")
        text = (folder / entry["path"]).read_text() if "path" in entry else entry["patch"]
        bodies = [b for b in yaml.safe_load_all(text) if b is not None]
        if len(bodies) == 1 and isinstance(bodies[0], list):
            targets = [doc for doc in docs if matches(doc, entry["target"])]
            assert targets, f"{folder}: JSON patch target {entry['target']} matches nothing"
            for doc in targets:
                apply_json_patch(doc, bodies[0])
            return
        for body in bodies:
            target = entry.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
            targets = [doc for doc in docs if matches(doc, target)]
            assert targets, f"{folder}: strategic-merge patch target {target} matches nothing"
            for doc in targets:
                group = doc["apiVersion"].rpartition("/")[0]
                builtin = group in {"", "apps", "batch", "policy", "autoscaling"} or group.endswith(".k8s.io")
                merged = self.merge(doc, body, lists_by_key=builtin)
                doc.clear()
                doc.update(merged)

    def merge(self, base, patch, lists_by_key: bool, key: str | None = None):
        if isinstance(base, dict) and isinstance(patch, dict):
            if "$patch" in patch or any(k.startswith("$") for k in patch):
                raise NotImplementedError("strategic-merge directives")
            out = dict(base)
            for k, v in patch.items():
                if v is None:
                    out.pop(k, None)
                elif k in out:
                    out[k] = self.merge(out[k], v, lists_by_key, k)
                else:
                    out[k] = copy.deepcopy(v)
            return out
        merge_key = self.MERGE_KEYS.get(key) if lists_by_key else None
        if isinstance(base, list) and isinstance(patch, list) and merge_key:
            out = [copy.deepcopy(item) for item in base]
            for item in patch:
                same = [i for i, old in enumerate(out) if old.get(merge_key) == item.get(merge_key)]
                if same:
                    out[same[0]] = self.merge(out[same[0]], item, lists_by_key)
                else:
                    out.append(copy.deepcopy(item))
            return out
        return copy.deepcopy(patch)

    @staticmethod
    def set_image(doc: dict, image: dict) -> None:
        for pod in pod_specs(doc):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                name, tag, digest = split_image(container["image"])
                if name != image["name"]:
                    continue
                name = image.get("newName", name)
                tag = image.get("newTag", tag)
                digest = image.get("digest", digest)
                container["image"] = name + (f"@{digest}" if digest else f":{tag}" if tag else "")


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    ref, _, digest = ref.partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:], digest or None
    return ref, None, digest or None


def resource_id(doc: dict) -> tuple:
    return doc["apiVersion"], doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]


def matches(doc: dict, target: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    return all([target.get("kind", doc["kind"]) == doc["kind"],
                target.get("name", doc["metadata"]["name"]) == doc["metadata"]["name"],
                target.get("group", group) == group, target.get("version", version) == version])


def apply_json_patch(doc: dict, operations: list[dict]) -> None:
    for operation in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        index = (len(parent) if last == "-" else int(last)) if isinstance(parent, list) else last
        op = operation["op"]
        if op == "test":
            assert parent[index] == operation["value"], f"JSON patch test failed at {operation['path']}"
        elif op == "replace":
            assert (index < len(parent)) if isinstance(parent, list) else (index in parent), operation["path"]
            parent[index] = copy.deepcopy(operation["value"])
        elif op == "add":
            if isinstance(parent, list):
                parent.insert(index, copy.deepcopy(operation["value"]))
            else:
                parent[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[index]
        else:
            raise NotImplementedError(f"JSON patch op {op}")


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


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def k8s_tree(tmp_path_factory) -> Path:
    """A copy of k8s/ with the credentials env files made from the *.env.example templates
    (the real, git-ignored env files of a developer are never read)."""
    folder = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("*.env"))
    for example in folder.rglob("*.env.example"):
        example.with_suffix("").write_text(example.read_text())
    return folder


@pytest.fixture(scope="module")
def rendered(k8s_tree) -> dict[str, list[dict]]:
    return {name: Kustomize().build(k8s_tree / name) for name in KUSTOMIZATIONS}


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


# --------------------------------------------------------------------------------------------
# files and rendering
# --------------------------------------------------------------------------------------------

def test_every_yaml_file_parses():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 15
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, (dict, list)), path


def test_the_tested_kustomizations_are_all_there_are():
    found = sorted(str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml"))
    assert found == sorted(KUSTOMIZATIONS)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders(rendered, name):
    docs = rendered[name]
    assert docs
    for doc in docs:
        assert doc["metadata"].get("namespace") == "afm-ray" or doc["kind"] in CLUSTER_SCOPED, resource_id(doc)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_agrees_with_kubectl_kustomize(k8s_tree, rendered, name):
    result = subprocess.run(["kubectl", "kustomize", str(k8s_tree / name)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "unknown command" in result.stderr:
        pytest.skip("this kubectl has no kustomize")
    assert result.returncode == 0, result.stderr
    theirs = {resource_id(doc): doc for doc in yaml.safe_load_all(result.stdout) if doc}
    ours = {resource_id(doc): doc for doc in rendered[name]}
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert ours[key] == theirs[key], key


# --------------------------------------------------------------------------------------------
# schemas
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_core_kinds_validate_against_kubernetes_schemas(rendered, name):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    checked = 0
    for doc in rendered[name]:
        if doc["kind"] in RAY_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{resource_id(doc)}: {'.'.join(map(str, exc.path))}: {exc.message}")
        checked += 1
    assert checked or name.endswith("jobs")


def strict_openapi(schema):
    """An OpenAPI v3 CRD schema as JSON Schema, rejecting unknown fields (as kubectl's strict field
    validation does; the API server would otherwise prune them silently)."""
    if isinstance(schema, list):
        return [strict_openapi(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_openapi(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        out.pop("type", None)
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def kuberay_validator(kind: str):
    import jsonschema

    files = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((KUBERAY_SCHEMAS / files[kind]).read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strict_openapi(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}   # ObjectMeta: validated by the API server
    return jsonschema.Draft7Validator(schema)


@pytest.mark.skipif(not KUBERAY_SCHEMAS.is_dir(),
                    reason=f"KubeRay CRD schemas not found at {KUBERAY_SCHEMAS} (shared/ beside the repository)")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kuberay_resources_validate_against_the_crd_schemas(rendered, name):
    ray_docs = [doc for doc in rendered[name] if doc["kind"] in RAY_KINDS]
    assert ray_docs
    for doc in ray_docs:
        assert doc["apiVersion"] == "ray.io/v1"
        errors = sorted(kuberay_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{doc['kind']} {doc['metadata']['name']}: "
                                     f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


def test_crd_conversion_rejects_unknown_fields_and_wrong_types():
    """The schema check above would catch a misspelt field or a number where a string belongs."""
    if not KUBERAY_SCHEMAS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {KUBERAY_SCHEMAS}")
    cluster = yaml.safe_load((K8S / "base" / "raycluster.yaml").read_text())
    validator = kuberay_validator("RayCluster")
    assert not list(validator.iter_errors(cluster))
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["rayStartParam"] = {}
    assert list(validator.iter_errors(typo))
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["workerGroupSpecs"][0]["resources"]["sim_gpu"] = 1   # must be a string quantity
    assert list(validator.iter_errors(wrong_type))


# --------------------------------------------------------------------------------------------
# nothing exposed, credentials in Secrets, resources everywhere
# --------------------------------------------------------------------------------------------

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
    assert {p.name for p in examples} == {"postgres.env.example", "minio.env.example"}
    for example in examples:
        passwords = [line for line in example.read_text().splitlines() if line.startswith(("POSTGRES_PASSWORD=", "MINIO_ROOT_PASSWORD="))]
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
    for policy in by_kind(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert any(selector.items() <= pod.items() for pod in labels), f"NetworkPolicy {policy['metadata']['name']}"
    for workload in [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]:
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()


# --------------------------------------------------------------------------------------------
# the RayCluster
# --------------------------------------------------------------------------------------------

def worker_groups(cluster: dict) -> dict[str, dict]:
    return {group["groupName"]: group for group in cluster["spec"]["workerGroupSpecs"]}


def ray_container(template: dict) -> dict:
    return template["spec"]["containers"][0]


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


# --------------------------------------------------------------------------------------------
# MLflow, PostgreSQL, MinIO
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_mlflow_server_uses_postgres_and_minio(rendered, name):
    docs = rendered[name]
    server = ray_container(one(docs, "Deployment", "mlflow")["spec"]["template"])
    args = dict(arg.removeprefix("--").partition("=")[::2] for arg in server["args"])
    assert server["command"] == ["mlflow", "server"]
    assert re.fullmatch(r"postgresql\+psycopg2://\$\(POSTGRES_USER\):\$\(POSTGRES_PASSWORD\)@postgres:5432/\$\(POSTGRES_DB\)",
                        args["backend-store-uri"])
    assert "serve-artifacts" in args and args["host"] == "0.0.0.0" and args["port"] == "5000"
    bucket = re.fullmatch(r"s3://([a-z0-9.-]+)(/.*)?", args["artifacts-destination"]).group(1)
    env = {e["name"]: e for e in server["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert any(p["port"] == 9000 for p in one(docs, "Service", "minio")["spec"]["ports"])
    assert any(p["port"] == 5432 for p in one(docs, "Service", "postgres")["spec"]["ports"])
    job = ray_container(one(docs, "Job", "create-bucket")["spec"]["template"])
    job_env = {e["name"]: e.get("value") for e in job["env"]}
    assert job_env["BUCKET"] == bucket and job_env["S3_ENDPOINT_URL"] == "http://minio:9000"
    compile(job["args"][0], "create-bucket", "exec")
    # MLflow answers only Host headers it allows: the in-cluster name and port-forwarding
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = args["allowed-hosts"].split(",")
    for host in ("mlflow:5000", "mlflow.afm-ray.svc.cluster.local:5000", "localhost:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "evil.example.com")
    statefulset = one(docs, "StatefulSet", "postgres")
    assert statefulset["spec"]["volumeClaimTemplates"], "PostgreSQL keeps its data on a volume"
    minio = one(docs, "Deployment", "minio")
    assert any("persistentVolumeClaim" in v for v in minio["spec"]["template"]["spec"]["volumes"])


# --------------------------------------------------------------------------------------------
# RayJobs: entrypoints, configs and resources
# --------------------------------------------------------------------------------------------

def repo_config(path: str) -> Path:
    assert path.startswith(f"{IMAGE_ROOT}/configs/"), f"configs are named by their path in the image: {path}"
    local = REPO / path.removeprefix(f"{IMAGE_ROOT}/")
    assert local.exists(), local
    return local


def parse_entrypoint(entrypoint: str):
    from afm_ray.cli import build_parser

    argv = shlex.split(entrypoint)
    assert argv[0] == "afm-ray", entrypoint
    if argv[1] == "tune" and tune_available():
        pytest.skip(tune_available())
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["afm-ray"] == "afm_ray.cli:main"
    return build_parser().parse_args(argv[1:])


def tune_available() -> str | None:
    import importlib.util

    if importlib.util.find_spec("afm_ray.cli.tune") is None:
        return "afm_ray.cli.tune does not exist yet"
    from afm_ray.cli import COMMAND_MODULES

    if "afm_ray.cli.tune" not in COMMAND_MODULES:
        return "afm-ray tune is not registered in afm_ray.cli yet"
    if importlib.util.find_spec("tune") is None:
        return "the tune package does not exist yet"
    return None


def job_train_configs(job: dict):
    """(TrainConfig, how many trials at once) of a RayJob's entrypoint (for a sweep: of its trials,
    whose run.storage_path the sweep sets under its own storage_path)."""
    from afm_ray.train.config import load_train_config

    args = parse_entrypoint(job["spec"]["entrypoint"])
    if args.command == "train":
        return load_train_config(repo_config(str(args.config)), args.overrides), 1
    assert args.command == "tune", job["spec"]["entrypoint"]
    from tune import load_sweep_config

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
        assert submitter["image"] == ray_container(cluster["spec"]["headGroupSpec"]["template"])["image"]
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
    from afm_ray.train.config import load_train_config

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


# --------------------------------------------------------------------------------------------
# the images
# --------------------------------------------------------------------------------------------

def test_dockerfile_builds_the_cluster_image():
    instructions = dockerfile(K8S / "Dockerfile")
    keywords = [k for k, _ in instructions]
    args = dockerfile_args(K8S / "Dockerfile")
    text = "\n".join(f"{k} {a}" for k, a in instructions)
    # base: Ray's GPU image of exactly the Ray (and a Python) the package supports
    froms = [a for k, a in instructions if k == "FROM"]
    assert froms == ["rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu"]
    assert keywords.index("FROM") > keywords.index("ARG")
    python = re.fullmatch(r"py3(\d+)", args["PYTHON_TAG"])
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python and int(python.group(1)) >= int(re.search(r"3\.(\d+)", requires).group(1))
    # OpenCL: the NVIDIA ICD registered, pocl as CPU fallback, driver capabilities for OpenCL
    assert re.search(r'echo "?libnvidia-opencl\.so\.1"? > /etc/OpenCL/vendors/nvidia\.icd', text)
    assert re.search(r"apt-get install [^\n]*pocl-opencl-icd", text)
    env = " ".join(a for k, a in instructions if k == "ENV")
    capabilities = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env).group(1).split(",")
    assert {"compute", "utility"} <= set(capabilities) or "all" in capabilities
    # afm-ray with the cluster and qm9 extras, Ray and torch pinned
    extras = re.search(r'pip install [^\n]*"\.\[([a-z0-9,]+)\]"', text).group(1).split(",")
    defined = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"cluster", "qm9"} <= set(extras) and set(extras) <= set(defined)
    assert "ray==%s" in text and "${RAY_VERSION}" in text and "-c /tmp/constraints.txt" in text
    import torch

    assert args["TORCH_VERSION"] == torch.__version__.split("+")[0]
    # what it copies exists; the configs land where the RayJobs look for them
    workdirs = [a for k, a in instructions if k == "WORKDIR"]
    assert workdirs[-1] == IMAGE_ROOT
    copies = [a.split() for k, a in instructions if k == "COPY"]
    for parts in copies:
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    assert ["configs", "./configs"] in [[p for p in parts if not p.startswith("--")] for parts in copies]
    users = [a for k, a in instructions if k == "USER"]
    assert users[-1] not in {"root", "0"}


def test_mlflow_image_matches_the_client():
    import mlflow

    server = dockerfile_args(K8S / "mlflow.Dockerfile")["MLFLOW_VERSION"]
    assert server == dockerfile_args(K8S / "Dockerfile")["MLFLOW_VERSION"]
    assert server.split(".")[:2] == mlflow.__version__.split(".")[:2]
    text = (K8S / "mlflow.Dockerfile").read_text()
    assert "psycopg2" in text and "boto3" in text
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    tags = {image["name"]: image.get("newTag") for image in base["images"]}
    assert tags["afm-ray-mlflow"] == server
    assert tags["afm-ray"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_build_context_leaves_out_credentials_and_local_state():
    for name in ("Dockerfile.dockerignore", "mlflow.Dockerfile.dockerignore"):
        patterns = (K8S / name).read_text().split()
        for required in ("k8s/", "data/", ".git", "**/.venv"):
            assert required in patterns, f"{name}: {required}"
