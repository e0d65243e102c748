"""The Kubernetes deployment in ``k8s/``: container image, kustomize base and overlays, KubeRay resources.

Nothing here needs a cluster or a docker engine. The kustomizations are rendered by a small
renderer below (``resources``, ``namespace``, ``images``, ``secretGenerator``/``configMapGenerator``,
``patches`` with JSON 6902 or strategic-merge patches: what ``k8s/`` uses) and, where ``kubectl`` is
installed, compared with ``kubectl kustomize``. The output is validated against the Kubernetes
OpenAPI schemas (``kubernetes-validate``, strict) and the KubeRay CRD schemas
(``../shared/schemas/kuberay``), then checked for the rules of this deployment: nothing exposed
outside the cluster, credentials only through Secrets (never on a command line), requests and
limits on every container, the worker groups' custom resources matching what the RayJobs ask for,
and RayJob entrypoints that ``afm-ray`` accepts with configs that load.

Security (issue 16): every pod template, KubeRay's injected init container included, is checked
against the Pod Security Standards ("restricted", implemented below from the Kubernetes v1.32
definitions) with an explicit exception table, and the namespace must enforce the strictest level
all pods meet. The NetworkPolicies are evaluated with Kubernetes' semantics into a table of which
pod reaches which pod on which ports, compared exactly with the table the deployment promises.
MLflow must run its basic-auth app with every credential coming from Secrets through env vars.

Hardening (issue 29): the KubeRay operator (in its own namespace, set in the overlays) reaches the
head's dashboard port; MLflow holds neither MinIO's root account nor PostgreSQL's superuser; every
registry image is pinned by digest (or listed in UNPINNED_IMAGES with its reason) and the images'
Python packages are pinned.
"""

from __future__ import annotations

import base64
import configparser
import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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
COMPONENTS = ["components/cert-manager"]   # kustomize Components the overlays include
IMAGE_ROOT = "/app"   # WORKDIR of k8s/Dockerfile: the repository's configs/ and tune/ are at /app/configs, /app/tune
DATA_MOUNT = "/data"
MLFLOW_URI = "https://mlflow:5000"
SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PriorityClass"}
RAY_KINDS = {"RayCluster", "RayJob"}
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}   # components/cert-manager: checked by test_cert_manager_resources


# --------------------------------------------------------------------------------------------
# a small kustomize
# --------------------------------------------------------------------------------------------

class Kustomize:
    """Renders the kustomize features that ``k8s/`` uses; anything else raises ``NotImplementedError``."""

    KEYS = {"apiVersion", "kind", "namespace", "resources", "components", "patches", "images", "secretGenerator",
            "configMapGenerator", "generatorOptions"}
    # strategic-merge keys of the core lists the patches touch (CRDs: lists are replaced)
    MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
                  "volumeMounts": "mountPath", "ports": "containerPort"}

    def build(self, folder: Path, docs: list[dict] | None = None) -> list[dict]:
        """The resources of the kustomization in ``folder``; a Component (``kind: Component``, included
        through ``components:``) adds to and patches ``docs``, the including kustomization's resources."""
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        unknown = set(kustomization) - self.KEYS
        if unknown:
            raise NotImplementedError(f"{folder}: kustomization keys {sorted(unknown)} not supported by the test renderer")
        is_component = kustomization.get("kind") == "Component"
        assert is_component == (docs is not None), f"{folder}: Components go in components:, Kustomizations in resources:"
        if docs is None:
            docs = []
        for entry in kustomization.get("resources", []):
            path = folder / entry
            docs += self.build(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
        for entry in kustomization.get("components", []):
            self.build(folder / entry, docs)
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
    assert found == sorted(KUSTOMIZATIONS + COMPONENTS)
    for name in COMPONENTS:   # rendered as part of the overlays that include them
        assert yaml.safe_load((K8S / name / "kustomization.yaml").read_text())["kind"] == "Component"
        assert any(f"../../{name}" in yaml.safe_load((K8S / o / "kustomization.yaml").read_text()).get("components", [])
                   for o in OVERLAYS), f"no overlay includes {name}"


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
        if doc["kind"] in RAY_KINDS | CERT_MANAGER_KINDS:
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
    assert "backend-store-uri" not in args, "the database URI holds the password: env only, never argv"
    assert re.fullmatch(r"postgresql\+psycopg2://\$\(MLFLOW_DB_USER\):\$\(MLFLOW_DB_PASSWORD\)@postgres:5432/\$\(MLFLOW_DB_NAME\)"
                        r"\?sslmode=verify-full&sslrootcert=/[^&]+", env_of(server)["MLFLOW_BACKEND_STORE_URI"]["value"])
    assert "serve-artifacts" in args and args["host"] == "0.0.0.0" and args["port"] == "5000"
    bucket = re.fullmatch(r"s3://([a-z0-9.-]+)(/.*)?", args["artifacts-destination"]).group(1)
    env = {e["name"]: e for e in server["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "https://minio:9000"
    assert any(p["port"] == 9000 for p in one(docs, "Service", "minio")["spec"]["ports"])
    assert any(p["port"] == 5432 for p in one(docs, "Service", "postgres")["spec"]["ports"])
    job = ray_container(one(docs, "Job", "create-bucket")["spec"]["template"])
    job_env = {e["name"]: e.get("value") for e in job["env"]}
    assert job_env["BUCKET"] == bucket and job_env["MC_HOST_minio"].endswith("@minio:9000")
    assert job["command"][0] == "/bin/sh"
    assert subprocess.run(["sh", "-n", "-c", job["args"][0]], capture_output=True).returncode == 0, "shell syntax"
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
    # afm-ray with the cluster, qm9 and heavy (`molecules build-heavy` as a Ray job) extras, Ray and torch pinned
    extras = re.search(r'pip install [^\n]*"\.\[([a-z0-9,]+)\]"', text).group(1).split(",")
    defined = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"cluster", "qm9", "heavy"} <= set(extras) and set(extras) <= set(defined)
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
    copied = [[p for p in parts if not p.startswith("--")] for parts in copies]
    assert ["configs", "./configs"] in copied and ["tune", "./tune"] in copied, "training configs and sweeps"
    assert image_user(K8S / "Dockerfile") == (1000, 100), "the rayproject/ray image's user ray, group users"


def test_mlflow_image_matches_the_client():
    import mlflow

    server = dockerfile_args(K8S / "mlflow.Dockerfile")["MLFLOW_VERSION"]
    assert server == dockerfile_args(K8S / "Dockerfile")["MLFLOW_VERSION"]
    assert server.split(".")[:2] == mlflow.__version__.split(".")[:2]
    text = (K8S / "mlflow.Dockerfile").read_text()
    assert "psycopg2" in text and "boto3" in text
    # the basic-auth app imports Flask-WTF, which only the auth extra installs
    assert '"mlflow[auth]==${MLFLOW_VERSION}"' in text
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    tags = {image["name"]: image.get("newTag") for image in base["images"]}
    assert tags["afm-ray-mlflow"] == server
    assert tags["afm-ray"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


# Images not pinned by digest, and why (k8s/README.md, "Images", lists the same): the three built from
# this repository (their digest exists only after you push them: set `digest:` in the overlay's
# `images:`), and the Ray base image, whose digest for this tag could not be verified when pinning.
UNPINNED_IMAGES = {
    "afm-ray": "built from this repository (k8s/Dockerfile)",
    "afm-ray-mlflow": "built from this repository (k8s/mlflow.Dockerfile)",
    "afm-ray-submitter": "built from this repository (k8s/submitter.Dockerfile)",
    "rayproject/ray": "base of k8s/Dockerfile; no verified digest of 2.60.0-py311-gpu yet",
}
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def image_references() -> list[tuple[str, str]]:
    """(where, image) for every image that k8s/ names: containers of every kustomization, FROM of every Dockerfile."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc:
                found += [(str(path.relative_to(K8S)), c["image"]) for c in containers(doc) if "image" in c]
    for path in sorted(K8S.glob("*Dockerfile")):
        found += [(path.name, a.split()[0]) for k, a in dockerfile(path) if k == "FROM"]
    return found


def test_every_image_is_pinned_by_digest(rendered):
    references = image_references()
    assert len(references) >= 10
    for name in KUSTOMIZATIONS:
        references += [(name, c["image"]) for doc in rendered[name] for c in containers(doc)]
    names = set()
    for where, image in references:
        name, tag, digest = split_image(image)
        names.add(name)
        if digest is None:
            assert any(name == key or name.endswith("/" + key) for key in UNPINNED_IMAGES), \
                f"{where}: {image} has no digest and is not in UNPINNED_IMAGES"
            continue
        assert DIGEST.fullmatch(digest), f"{where}: {image}"
        # a tag that names one release, kept beside the digest for the reader and for image-digests.sh
        assert tag and re.search(r"\d+\.\d+|RELEASE\.", tag), f"{where}: {image} needs a release tag"
    assert {"postgres", "quay.io/minio/minio", "quay.io/minio/mc", "python"} <= names
    # every allow-list entry is used and explained in the README
    readme = (K8S / "README.md").read_text()
    for key in UNPINNED_IMAGES:
        assert any(name == key or name.endswith("/" + key) for name in names), f"{key} is not used: remove it"
        assert f"`{key}`" in readme, f"k8s/README.md must say why {key} is not pinned"
    assert (K8S / "image-digests.sh").exists()
    assert subprocess.run(["bash", "-n", str(K8S / "image-digests.sh")]).returncode == 0


def test_python_packages_of_the_images_are_pinned():
    import importlib.metadata

    for path in (K8S / "mlflow.Dockerfile", K8S / "submitter.Dockerfile"):
        installs = [a for k, a in dockerfile(path) if k == "RUN" and "pip install" in a]
        requirements = [r for a in installs for r in re.findall(r'"([^"]+)"', a)]
        assert requirements and all(re.fullmatch(r"[A-Za-z0-9_.\[\],-]+==\S+", r) for r in requirements), requirements
    args = dockerfile_args(K8S / "mlflow.Dockerfile")
    assert args["PSYCOPG2_VERSION"] == importlib.metadata.version("psycopg2-binary"), "the driver the tests run with"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["BOTO3_VERSION"])


def test_build_context_leaves_out_credentials_and_local_state():
    for name in ("Dockerfile.dockerignore", "mlflow.Dockerfile.dockerignore"):
        patterns = [line for line in (K8S / name).read_text().split() if not line.startswith("#")]
        for required in ("k8s/", "data/", ".git", "**/.venv"):
            assert required in patterns, f"{name}: {required}"
    # the only file taken back in from k8s/: the account bootstrap script of the MLflow image
    exceptions = [p for p in (K8S / "mlflow.Dockerfile.dockerignore").read_text().split() if p.startswith("!")]
    assert exceptions == ["!k8s/mlflow/bootstrap_users.py"]
    assert not [p for p in (K8S / "Dockerfile.dockerignore").read_text().split() if p.startswith("!")]
    # the submitter image copies nothing: its context is empty
    assert [p for p in (K8S / "submitter.Dockerfile.dockerignore").read_text().splitlines()
            if p.strip() and not p.startswith("#")] == ["*"]
    assert not [a for k, a in dockerfile(K8S / "submitter.Dockerfile") if k in {"COPY", "ADD"}]


# --------------------------------------------------------------------------------------------
# shared helpers of the security checks
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
# --------------------------------------------------------------------------------------------

LEVELS = ["restricted", "baseline", "privileged"]   # strictest first
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
NOT_VOLUME_SOURCE = {"name"}

# Pods allowed to break a rule, and why; a rule here is a Pod Security rule (below) or
# "readOnlyRootFilesystem" (not part of the standard, required of every container of afm-ray).
# Every pod of afm-ray meets "restricted" and has a read-only root filesystem, so the table is
# empty; an entry needs its reason, and k8s/README.md lists the same entries.
EXCEPTIONS: list[tuple[str, str, str]] = []


def pod_security_violations(template: dict) -> list[tuple[str, str, str]]:
    """(level the rule belongs to, rule, detail) for every Pod Security Standards rule a pod
    template breaks. A pod meets "baseline" without baseline violations and "restricted" without
    any."""
    spec, metadata = template["spec"], template.get("metadata", {})
    pod_context = spec.get("securityContext") or {}
    all_containers = [("container", c) for c in spec.get("containers", [])] + \
        [("initContainer", c) for c in spec.get("initContainers", [])] + \
        [("ephemeralContainer", c) for c in spec.get("ephemeralContainers", [])]
    found = []

    def violation(level, rule, detail):
        found.append((level, rule, detail))

    # ---- baseline
    if (pod_context.get("windowsOptions") or {}).get("hostProcess"):
        violation("baseline", "hostProcess", "pod")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            violation("baseline", "hostNamespaces", field)
    for volume in spec.get("volumes", []):
        source = set(volume) - NOT_VOLUME_SOURCE
        if "hostPath" in source:
            violation("baseline", "hostPathVolumes", volume["name"])
        if not source <= RESTRICTED_VOLUMES:
            violation("restricted", "volumeTypes", f"{volume['name']}: {sorted(source - RESTRICTED_VOLUMES)}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            violation("baseline", "sysctls", sysctl["name"])
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and \
                not (value == "runtime/default" or value.startswith("localhost/")):
            violation("baseline", "appArmor", f"{key}={value}")

    def selinux(context, where):
        options = context.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES or options.get("user") or options.get("role"):
            violation("baseline", "seLinux", where)

    def apparmor(context, where):
        profile = context.get("appArmorProfile") or {}
        if profile.get("type") not in (None, "RuntimeDefault", "Localhost"):
            violation("baseline", "appArmor", where)

    def seccomp_type(context):
        return (context.get("seccompProfile") or {}).get("type")

    selinux(pod_context, "pod")
    apparmor(pod_context, "pod")
    if seccomp_type(pod_context) == "Unconfined":
        violation("baseline", "seccomp", "pod: Unconfined")
    for kind, container in all_containers:
        where = f"{kind} {container['name']}"
        context = container.get("securityContext") or {}
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            violation("baseline", "hostProcess", where)
        if context.get("privileged"):
            violation("baseline", "privileged", where)
        added = set((context.get("capabilities") or {}).get("add", []))
        if added - BASELINE_CAPABILITIES:
            violation("baseline", "capabilities", f"{where} adds {sorted(added - BASELINE_CAPABILITIES)}")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                violation("baseline", "hostPorts", f"{where}: {port['hostPort']}")
        selinux(context, where)
        apparmor(context, where)
        if context.get("procMount", "Default") != "Default":
            violation("baseline", "procMount", where)
        if seccomp_type(context) == "Unconfined":
            violation("baseline", "seccomp", f"{where}: Unconfined")

    # ---- restricted
    for kind, container in all_containers:
        where = f"{kind} {container['name']}"
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            violation("restricted", "allowPrivilegeEscalation", where)
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            violation("restricted", "runAsNonRoot", where)
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0 or context.get("runAsUser") == 0:
            violation("restricted", "runAsUser", where)
        if seccomp_type(context) not in ("RuntimeDefault", "Localhost") and \
                not (seccomp_type(context) is None and seccomp_type(pod_context) in ("RuntimeDefault", "Localhost")):
            violation("restricted", "seccomp", where)
        capabilities = context.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            violation("restricted", "capabilities", f"{where} does not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            violation("restricted", "capabilities", f"{where} adds {capabilities['add']}")
    if pod_context.get("runAsUser") == 0:
        violation("restricted", "runAsUser", "pod")
    return found


def strictest_level(violations) -> str:
    levels = {level for level, _, _ in violations}
    return "privileged" if "baseline" in levels else "baseline" if "restricted" in levels else "restricted"


def unexcused(pod: str, violations) -> list:
    excused = {(p, rule) for p, rule, _ in EXCEPTIONS}
    return [v for v in violations if (pod, v[1]) not in excused]


def good_pod() -> dict:
    return {"metadata": {"labels": {"app.kubernetes.io/name": "good"}},
            "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "c", "image": "x",
                                     "securityContext": {"allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}}}],
                     "volumes": [{"name": "v", "emptyDir": {}}]}}


@pytest.mark.parametrize("mutation,level,rule", [
    (lambda p: p["spec"].update(hostNetwork=True), "baseline", "hostNamespaces"),
    (lambda p: p["spec"].update(hostPID=True), "baseline", "hostNamespaces"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].update(privileged=True), "baseline", "privileged"),
    (lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "baseline", "hostPathVolumes"),
    (lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}), "restricted", "volumeTypes"),
    (lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]), "baseline", "hostPorts"),
    (lambda p: p["spec"]["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "baseline", "capabilities"),
    (lambda p: p["spec"]["containers"][0]["securityContext"]["capabilities"].update(add=["CHOWN"]), "restricted", "capabilities"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].pop("capabilities"), "restricted", "capabilities"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"), "restricted", "allowPrivilegeEscalation"),
    (lambda p: p["spec"]["securityContext"].pop("runAsNonRoot"), "restricted", "runAsNonRoot"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].update(runAsNonRoot=False), "restricted", "runAsNonRoot"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].update(runAsUser=0), "restricted", "runAsUser"),
    (lambda p: p["spec"]["securityContext"].pop("seccompProfile"), "restricted", "seccomp"),
    (lambda p: p["spec"]["securityContext"].update(seccompProfile={"type": "Unconfined"}), "baseline", "seccomp"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].update(procMount="Unmasked"), "baseline", "procMount"),
    (lambda p: p["spec"]["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "baseline", "sysctls"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].update(seLinuxOptions={"type": "spc_t"}), "baseline", "seLinux"),
    (lambda p: p["spec"].update(initContainers=[{"name": "init", "image": "x"}]), "restricted", "allowPrivilegeEscalation"),
])
def test_pod_security_checker_rejects_known_bad_pods(mutation, level, rule):
    assert pod_security_violations(good_pod()) == []
    bad = good_pod()
    mutation(bad)
    violations = pod_security_violations(bad)
    assert (level, rule) in {(v[0], v[1]) for v in violations}, violations
    assert strictest_level(violations) == ("privileged" if level == "baseline" else "baseline")


@pytest.mark.parametrize("platform", OVERLAYS)
def test_every_pod_meets_pod_security_restricted(rendered, platform):
    pods = platform_pods(rendered, platform)
    assert {"mlflow", "postgres", "minio", "create-bucket", "mlflow-bootstrap", "prepare-data", "afm-ray-head",
            "afm-ray-sim-worker", "afm-ray-train-worker", "train-dsh-submitter", "tune-xyz-submitter"} <= set(pods)
    problems = {name: unexcused(name, pod_security_violations(t)) for name, t in pods.items()}
    assert not {name: v for name, v in problems.items() if v}, problems
    # the exception table is exact: every entry names a pod and a rule it really breaks, with a reason
    for pod, rule, why in EXCEPTIONS:
        assert pod in pods and len(why) > 20, (pod, rule)
        broken = {v[1] for v in pod_security_violations(pods[pod])} | \
            ({"readOnlyRootFilesystem"} if read_write_containers(pods[pod]) else set())
        assert rule in broken, f"exception ({pod}, {rule}) is not needed: remove it"


def read_write_containers(template: dict) -> list[str]:
    spec = template["spec"]
    return [c["name"] for c in spec["containers"] + spec.get("initContainers", [])
            if not (c.get("securityContext") or {}).get("readOnlyRootFilesystem")]


@pytest.mark.parametrize("platform", OVERLAYS)
def test_root_filesystems_are_read_only_with_writable_scratch(rendered, platform):
    excused = {pod for pod, rule, _ in EXCEPTIONS if rule == "readOnlyRootFilesystem"}
    for name, template in platform_pods(rendered, platform).items():
        if name not in excused:
            assert not read_write_containers(template), f"{name}: {read_write_containers(template)}"
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for container in template["spec"]["containers"]:
            mounts = {m["mountPath"]: volumes.get(m["name"], {"persistentVolumeClaim": {}})   # volumeClaimTemplates
                      for m in container.get("volumeMounts", [])}
            if container["name"] != "postgres":
                assert "emptyDir" in mounts.get("/tmp", {}), f"{name}: {container['name']} needs a writable /tmp"
            for variable in ("HOME", "XDG_CACHE_HOME", "CUDA_CACHE_PATH", "MPLCONFIGDIR"):
                value = env_of(container).get(variable, {}).get("value")
                if value:
                    assert value == "/tmp" or value.startswith("/tmp/"), f"{name}: {variable}={value} is read-only"
    # Ray: session files and spilled objects in /tmp/ray, kernel caches under XDG_CACHE_HOME
    pods = platform_pods(rendered, platform)
    for name in ("afm-ray-head", "afm-ray-sim-worker", "afm-ray-train-worker"):
        env = env_of(pods[name]["spec"]["containers"][0])
        assert env["XDG_CACHE_HOME"]["value"].startswith("/tmp/")
    # PostgreSQL: data on its volume, socket and temporary files on emptyDirs
    postgres = pods["postgres"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in postgres["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in postgres["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/run/postgresql"]] and "emptyDir" in volumes[mounts["/tmp"]]
    pgdata = env_of(postgres["containers"][0])["PGDATA"]["value"]
    assert pgdata.startswith("/var/lib/postgresql/data/") and mounts["/var/lib/postgresql/data"] == "postgres-data"


@pytest.mark.parametrize("platform", OVERLAYS)
def test_pods_run_as_the_images_non_root_users(rendered, platform):
    pods = platform_pods(rendered, platform)
    users = {"afm-ray": image_user(K8S / "Dockerfile"), "afm-ray-mlflow": image_user(K8S / "mlflow.Dockerfile"),
             "afm-ray-submitter": image_user(K8S / "submitter.Dockerfile"),
             "postgres": (999, 999),   # the official image's postgres user
             "minio/minio": None,      # any uid that owns /data (fsGroup)
             "minio/mc": None}         # a static binary: any uid (its config under /tmp)
    for name, template in pods.items():
        context = template["spec"]["securityContext"]
        image = split_image(template["spec"]["containers"][0]["image"])[0]
        key = next(k for k in users if image == k or image.endswith("/" + k))
        expected = users[key]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, name
        if expected:
            assert (context["runAsUser"], context.get("runAsGroup")) == expected, f"{name}: image {image} runs as {expected}"
        if any("persistentVolumeClaim" in v for v in template["spec"].get("volumes", [])) or \
                template is pods.get("postgres"):
            assert context.get("fsGroup") == context["runAsGroup"], f"{name}: volumes must be writable (fsGroup)"
        assert template["spec"].get("automountServiceAccountToken") is False, f"{name} needs no Kubernetes API"


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_namespace_enforces_the_strictest_level_every_pod_meets(rendered, name):
    namespace = one(rendered[name], "Namespace")
    labels = namespace["metadata"]["labels"]
    platform = name if name != "base" else "overlays/dev"
    pods = platform_pods(rendered, platform)
    met = [strictest_level(unexcused(pod, pod_security_violations(t))) for pod, t in pods.items()]
    level = max(met, key=LEVELS.index)
    assert labels["pod-security.kubernetes.io/enforce"] == level == "restricted"
    for mode in ("audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == level
    version = "v" + ".".join(KUBERNETES_VERSION.split(".")[:2])
    assert {labels[f"pod-security.kubernetes.io/{m}-version"] for m in ("enforce", "audit", "warn")} == {version}
    # the level is truly the strictest: one non-conforming pod would have to lower it
    bad = good_pod()
    bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert max(met + [strictest_level(pod_security_violations(bad))], key=LEVELS.index) == "baseline"


# --------------------------------------------------------------------------------------------
# NetworkPolicies: who reaches whom
# --------------------------------------------------------------------------------------------

NAMESPACE = "afm-ray"
RAY_PODS = ["afm-ray-head", "afm-ray-sim-worker", "afm-ray-train-worker"]
SUBMITTERS = ["train-dsh-submitter", "tune-xyz-submitter"]
# pods that are not ours: cluster DNS, a labelled-nothing pod in afm-ray (e.g. `kubectl run`),
# a pod of another namespace, and the internet
OTHER_PODS = {
    "kube-dns": ("kube-system", {"k8s-app": "kube-dns"}),
    "stranger": (NAMESPACE, {"run": "stranger"}),
    "other-namespace": ("default", {"app.kubernetes.io/component": "ray-node", "app.kubernetes.io/name": "mlflow-bootstrap"}),
    # the KubeRay operator pod as KubeRay's Helm chart labels it (helm-chart/kuberay-operator/templates/
    # deployment.yaml) and as its kustomize install does (ray-operator/config/manager/manager.yaml), in the
    # namespace the overlays name; the same labels elsewhere, and other pods of that namespace, are strangers
    "kuberay-operator-helm": ("ray-system", {"app.kubernetes.io/name": "kuberay-operator",
                                             "app.kubernetes.io/instance": "kuberay-operator",
                                             "app.kubernetes.io/component": "kuberay-operator"}),
    "kuberay-operator-kustomize": ("ray-system", {"app.kubernetes.io/name": "kuberay",
                                                  "app.kubernetes.io/component": "kuberay-operator"}),
    "operator-elsewhere": ("default", {"app.kubernetes.io/component": "kuberay-operator"}),
    "ray-system-stranger": ("ray-system", {"run": "stranger"}),
}
OPERATORS = ["kuberay-operator-helm", "kuberay-operator-kustomize"]
INTERNET = "internet"
ALL_PORTS = [(1, 65535)]
RAY_PORTS = [6379, 8265, 10001, 6380, 6381, 6383, 52365, (10002, 19999),
             (32768, 60999)]   # the last: torch.distributed (DDP) on the kernel's ephemeral ports


def normalize(ports) -> list[tuple[int, int]]:
    intervals = sorted((p, p) if isinstance(p, int) else tuple(p) for p in ports)
    merged: list[list[int]] = []
    for low, high in intervals:
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return [tuple(m) for m in merged]


def intersect(a, b) -> list[tuple[int, int]]:
    return normalize([(max(x[0], y[0]), min(x[1], y[1])) for x in a for y in b if max(x[0], y[0]) <= min(x[1], y[1])])


class Endpoint:
    def __init__(self, name: str, namespace: str | None, labels: dict, template: dict | None = None):
        self.name, self.namespace, self.labels, self.template = name, namespace, labels, template

    def named_port(self, name: str) -> int | None:
        for container in (self.template or {}).get("spec", {}).get("containers", []):
            for port in container.get("ports", []):
                if port.get("name") == name:
                    return port["containerPort"]
        return None


def peer_matches(peer: dict, policy_namespace: str, target: Endpoint, namespaces: dict[str, dict]) -> bool:
    if set(peer) - {"podSelector", "namespaceSelector", "ipBlock"}:
        raise NotImplementedError(f"peer {peer}")
    if "ipBlock" in peer:
        import ipaddress

        block = peer["ipBlock"]
        if target.name != INTERNET:   # pod IPs are not known here: treat an ipBlock as the outside world
            return False
        address = ipaddress.ip_address("1.1.1.1")
        return address in ipaddress.ip_network(block["cidr"]) and \
            not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
    if target.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespaces[target.namespace]):
            return False
    elif target.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), target.labels)


def rule_ports(rule: dict, destination: Endpoint) -> dict[str, list]:
    """{protocol: intervals} that one ingress/egress rule opens towards a destination."""
    if not rule.get("ports"):
        return {"TCP": ALL_PORTS, "UDP": ALL_PORTS}
    opened: dict[str, list] = {"TCP": [], "UDP": []}
    for port in rule["ports"]:
        protocol = port.get("protocol", "TCP")
        number = port.get("port")
        if number is None:
            opened.setdefault(protocol, []).extend(ALL_PORTS)
            continue
        if isinstance(number, str):
            number = destination.named_port(number)
            if number is None:
                continue
        opened.setdefault(protocol, []).append((number, port.get("endPort", number)))
    return {protocol: normalize(intervals) for protocol, intervals in opened.items()}


def policy_types(policy: dict) -> set[str]:
    spec = policy["spec"]
    return set(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else [])))


def allowed(direction: str, subject: Endpoint, peer: Endpoint, destination: Endpoint, policies, namespaces) -> dict[str, list]:
    """Ports (per protocol) the policies of the subject's namespace allow in one direction: every
    port when no policy of that type selects the subject, else the union over the selecting
    policies' rules whose peers match."""
    if subject.namespace is None:
        return {"TCP": ALL_PORTS, "UDP": ALL_PORTS}
    kind, key, peers_key = ("Egress", "egress", "to") if direction == "egress" else ("Ingress", "ingress", "from")
    selecting = [p for p in policies if p["metadata"]["namespace"] == subject.namespace
                 and kind in policy_types(p) and selects(p["spec"]["podSelector"], subject.labels)]
    if not selecting:
        return {"TCP": ALL_PORTS, "UDP": ALL_PORTS}
    opened: dict[str, list] = {"TCP": [], "UDP": []}
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if peers and not any(peer_matches(p, policy["metadata"]["namespace"], peer, namespaces) for p in peers):
                continue
            for protocol, intervals in rule_ports(rule, destination).items():
                opened.setdefault(protocol, []).extend(intervals)
    return {protocol: normalize(intervals) for protocol, intervals in opened.items()}


def reachability(policies: list[dict], endpoints: list[Endpoint], namespaces: dict[str, dict]) -> dict:
    """{(source, destination): {protocol: port intervals}} for every pair with something open,
    leaving out pairs that are both outside afm-ray (not ours to police)."""
    table = {}
    for source in endpoints:
        for destination in endpoints:
            if destination.name == INTERNET or NAMESPACE not in (source.namespace, destination.namespace):
                if destination.name != INTERNET or source.namespace != NAMESPACE:
                    continue
            egress = allowed("egress", source, destination, destination, policies, namespaces)
            ingress = allowed("ingress", destination, source, destination, policies, namespaces)
            ports = {protocol: intersect(egress.get(protocol, []), ingress.get(protocol, []))
                     for protocol in ("TCP", "UDP")}
            ports = {protocol: intervals for protocol, intervals in ports.items() if intervals}
            if ports:
                table[(source.name, destination.name)] = ports
    return table


def expected_reachability() -> dict:
    table: dict = {}

    def allow(source, destination, ports, protocol="TCP"):
        table.setdefault((source, destination), {})[protocol] = normalize(ports)

    for source in RAY_PODS:
        for destination in RAY_PODS:
            allow(source, destination, RAY_PORTS)          # each other, replicas of a group included
        allow(source, "mlflow", [5000])
    for submitter in SUBMITTERS:
        allow(submitter, "afm-ray-head", [8265])
    for operator in OPERATORS:                             # RayJob status, stopping a deleted RayJob's job
        allow(operator, "afm-ray-head", [8265])
    allow("mlflow", "postgres", [5432])
    allow("mlflow", "minio", [9000])
    allow("mlflow-bootstrap", "mlflow", [5000])            # creates the job account
    allow("create-bucket", "minio", [9000])                # creates the artifact bucket
    for pod in RAY_PODS + SUBMITTERS + ["mlflow", "mlflow-bootstrap", "create-bucket"]:
        allow(pod, "kube-dns", [53], "TCP")
        allow(pod, "kube-dns", [53], "UDP")
    return table                                           # prepare-data: nothing at all


def network(rendered: dict, platform: str, policies: list[dict] | None = None):
    docs = rendered[platform] + rendered[dict(PAIRS)[platform]]
    pods = platform_pods(rendered, platform)
    namespace = one(rendered[platform], "Namespace")
    namespaces = {NAMESPACE: {"kubernetes.io/metadata.name": NAMESPACE, **namespace["metadata"].get("labels", {})},
                  "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
                  "default": {"kubernetes.io/metadata.name": "default"},
                  "ray-system": {"kubernetes.io/metadata.name": "ray-system"}}
    endpoints = [Endpoint(name, NAMESPACE, t["metadata"]["labels"], t) for name, t in pods.items()]
    endpoints += [Endpoint(name, ns, labels) for name, (ns, labels) in OTHER_PODS.items()]
    endpoints.append(Endpoint(INTERNET, None, {}))
    return by_kind(docs, "NetworkPolicy") if policies is None else policies, endpoints, namespaces


@pytest.mark.parametrize("platform", OVERLAYS)
def test_network_policies_allow_exactly_the_promised_connections(rendered, platform):
    policies, endpoints, namespaces = network(rendered, platform)
    table = reachability(policies, endpoints, namespaces)
    expected = expected_reachability()
    missing = {k: v for k, v in expected.items() if table.get(k) != v}
    extra = {k: v for k, v in table.items() if k not in expected}
    assert not missing and not extra, f"missing or different: {missing}\nnot promised: {extra}"
    # the negative cases spelled out
    assert ("prepare-data", "mlflow") not in table and not [k for k in table if "prepare-data" in k]
    assert not [k for k in table if "stranger" in k or "other-namespace" in k or "operator-elsewhere" in k], \
        "unlabelled or foreign pods reach nothing"
    assert not [k for k in table if INTERNET in k], "nothing reaches the internet"
    assert ("train-dsh-submitter", "afm-ray-sim-worker") not in table and ("afm-ray-head", "postgres") not in table
    # the operator reaches the head's dashboard port and nothing else of afm-ray
    assert [k for k in table if k[0] in OPERATORS] == [(operator, "afm-ray-head") for operator in OPERATORS]
    # every policy of the namespace selects pods in it, and the default deny covers both directions
    deny = one(policies, "NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {} and policy_types(deny) == {"Ingress", "Egress"}
    assert not deny["spec"].get("ingress") and not deny["spec"].get("egress")


@pytest.mark.parametrize("platform", ["overlays/dev"])
def test_reachability_analysis_can_fail(rendered, platform):
    """The table reacts to the policies: without the default deny prepare-data reaches everything;
    a wider port list or a missing rule changes the table."""
    policies, endpoints, namespaces = network(rendered, platform)
    without_deny = [p for p in policies if p["metadata"]["name"] != "default-deny"]
    table = reachability(without_deny, endpoints, namespaces)
    # pods that no other policy selects for egress reach anything that accepts them ...
    assert table[("prepare-data", INTERNET)] == {"TCP": ALL_PORTS, "UDP": ALL_PORTS}
    assert table[("stranger", "prepare-data")] == {"TCP": ALL_PORTS, "UDP": ALL_PORTS}
    # ... but the ingress policies of MLflow and PostgreSQL still hold without the default deny
    assert ("prepare-data", "mlflow") not in table and ("stranger", "postgres") not in table
    wider = copy.deepcopy(policies)
    mlflow = one(wider, "NetworkPolicy", "mlflow")
    mlflow["spec"]["ingress"][0]["ports"].append({"port": 22, "protocol": "TCP"})
    # a connection needs egress from the source AND ingress at the destination
    assert reachability(wider, endpoints, namespaces)[("afm-ray-head", "mlflow")]["TCP"] == [(5000, 5000)]
    ray = one(wider, "NetworkPolicy", "ray-cluster")
    ray["spec"]["egress"][1]["ports"].append({"port": 22, "protocol": "TCP"})
    assert reachability(wider, endpoints, namespaces)[("afm-ray-head", "mlflow")]["TCP"] == [(22, 22), (5000, 5000)]
    no_operator = [p for p in policies if p["metadata"]["name"] != "ray-head-from-kuberay-operator"]
    assert not [k for k in reachability(no_operator, endpoints, namespaces) if k[0] in OPERATORS], \
        "the operator reaches the head only through its own policy"
    no_dns = [p for p in policies if p["metadata"]["name"] != "dns-platform"]
    assert ("mlflow", "kube-dns") not in reachability(no_dns, endpoints, namespaces)
    # a pod that carries the Ray label is a Ray pod to the policies: labels are not credentials,
    # which is why MLflow additionally requires a password
    impostor = Endpoint("impostor", NAMESPACE, {"app.kubernetes.io/component": "ray-node"})
    assert reachability(policies, endpoints + [impostor], namespaces)[("impostor", "mlflow")] == {"TCP": [(5000, 5000)]}


@pytest.mark.parametrize("platform", OVERLAYS)
def test_overlays_say_where_the_kuberay_operator_runs(platform):
    """The operator's namespace and labels are an overlay setting (the cluster's KubeRay install decides them)."""
    kustomization = yaml.safe_load((K8S / platform / "kustomization.yaml").read_text())
    patches = [p for p in kustomization["patches"]
               if p.get("target", {}).get("name") == "ray-head-from-kuberay-operator"]
    assert len(patches) == 1
    [operation] = yaml.safe_load(patches[0]["patch"])
    peer = operation["value"]
    assert operation["path"] == "/spec/ingress/0/from/0" and set(peer) == {"namespaceSelector", "podSelector"}
    assert peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == OTHER_PODS[OPERATORS[0]][0]


@pytest.mark.parametrize("platform", OVERLAYS)
def test_ray_policy_names_the_ports_ray_is_pinned_to(rendered, platform):
    cluster = one(rendered[platform], "RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    node_ports = {"node-manager-port", "object-manager-port", "dashboard-agent-grpc-port",
                  "dashboard-agent-listen-port", "runtime-env-agent-port", "metrics-export-port",
                  "min-worker-port", "max-worker-port"}
    pinned = []
    for group in groups:
        params = group["rayStartParams"]
        assert node_ports <= set(params), f"unpinned Ray ports: {node_ports - set(params)}"
        assert {k: params[k] for k in node_ports} == {k: groups[0]["rayStartParams"][k] for k in node_ports}
    head = cluster["spec"]["headGroupSpec"]["rayStartParams"]
    params = {**groups[1]["rayStartParams"], **head}
    pinned = [int(params[k]) for k in ("port", "dashboard-port", "ray-client-server-port", "node-manager-port",
                                       "object-manager-port", "dashboard-agent-grpc-port", "dashboard-agent-listen-port")]
    pinned.append((int(params["min-worker-port"]), int(params["max-worker-port"])))
    # what crosses pods (the runtime-env agent and metrics are reached from inside the pod / not at all)
    assert normalize(pinned + [(32768, 60999)]) == normalize(RAY_PORTS)
    policy = one(by_kind(rendered[platform], "NetworkPolicy"), "NetworkPolicy", "ray-cluster")
    for rule in policy["spec"]["ingress"] + policy["spec"]["egress"][:1]:
        opened = [(p["port"], p.get("endPort", p["port"])) for p in rule["ports"]]
        assert normalize(opened) == normalize(RAY_PORTS)
    # the container ports the head declares are the pinned ones
    declared = {p["containerPort"] for p in ray_container(cluster["spec"]["headGroupSpec"]["template"])["ports"]}
    assert declared == {int(head["port"]), int(head["dashboard-port"]), int(head["ray-client-server-port"]),
                        int(head["metrics-export-port"])}


# --------------------------------------------------------------------------------------------
# MLflow authentication and credentials
# --------------------------------------------------------------------------------------------

def secret_backed(container: dict) -> dict[str, tuple[str, str]]:
    return {name: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for name, e in env_of(container).items() if "secretKeyRef" in e.get("valueFrom", {})}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_no_credentials_on_any_command_line(rendered, name):
    secrets = {doc["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
               for doc in by_kind(rendered[name], "Secret")}
    passwords = {v for data in secrets.values() for k, v in data.items() if SECRET_ENV.search(k)}
    assert passwords or name.endswith("jobs")
    for doc in rendered[name]:
        for template in with_kuberay_injections(doc):
            spec = template["spec"]
            for container in spec["containers"] + spec.get("initContainers", []):
                where = f"{resource_id(doc)} container {container['name']}"
                argv = " ".join(container.get("command", []) + container.get("args", []))
                assert not re.search(r"://[^/\s]*@", argv), f"{where}: a URI with credentials on its command line"
                for variable in secret_backed(container):
                    assert f"$({variable})" not in argv, f"{where}: Secret-backed ${variable} expanded into argv"
                for password in passwords:
                    assert password not in argv, f"{where}: a password on its command line"
                for env in container.get("env", []):
                    for user_info in re.findall(r"://([^/@\s]+)@", env.get("value", "")):
                        referenced = re.findall(r"\$\(([A-Z_]+)\)", user_info)
                        assert referenced and set(referenced) <= set(secret_backed(container)), where
    for doc in by_kind(rendered[name], "ConfigMap"):
        for key, text in doc.get("data", {}).items():
            assert not re.search(r"://[^/\s]*:[^/\s]*@", text), f"{resource_id(doc)} {key}: a URI with credentials"
            assert not [v for v in passwords if v in text], f"{resource_id(doc)} {key}: a Secret's password"
            assert not re.search(r"PASSWORD\s+'", text, re.I), f"{resource_id(doc)} {key}: a literal password"


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_mlflow_runs_basic_auth_with_credentials_from_secrets(rendered, name, tmp_path):
    import importlib.metadata
    import importlib.util

    docs = rendered[name]
    pod = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert "--app-name=basic-auth" in server["args"]
    assert "basic-auth" in {e.name for e in importlib.metadata.entry_points(group="mlflow.app")}
    env, secret_env = env_of(server), secret_backed(server)
    # the backend store: `mlflow server` reads MLFLOW_BACKEND_STORE_URI, built by Kubernetes from
    # Secret-backed variables declared before it (dependent-variable expansion)
    from mlflow.cli import server as server_command

    option = next(p for p in server_command.params if p.name == "backend_store_uri")
    assert option.envvar == "MLFLOW_BACKEND_STORE_URI"
    order = [e["name"] for e in server["env"]]
    uri = env["MLFLOW_BACKEND_STORE_URI"]
    referenced = re.findall(r"\$\(([A-Z_]+)\)", uri.get("value", ""))
    assert "secretKeyRef" in uri.get("valueFrom", {}) or referenced
    for variable in referenced:
        assert secret_env[variable][0] == "mlflow-database"
        assert order.index(variable) < order.index("MLFLOW_BACKEND_STORE_URI"), f"{variable} must come first"
    # the admin account from the Secret mlflow-admin; the auth ini from an init container, in memory
    assert secret_env["MLFLOW_AUTH_ADMIN_USERNAME"] == ("mlflow-admin", "MLFLOW_AUTH_ADMIN_USERNAME")
    assert secret_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == ("mlflow-admin", "MLFLOW_AUTH_ADMIN_PASSWORD")
    # without a static key the basic-auth app refuses to start (CSRF tokens across workers)
    assert secret_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == ("mlflow-admin", "MLFLOW_FLASK_SERVER_SECRET_KEY")
    init = next(c for c in pod["initContainers"] if c["name"] == "auth-config")
    config_path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    assert env_of(init)["MLFLOW_AUTH_CONFIG_PATH"]["value"] == config_path
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in (init, server):
        mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
        assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
    init_env = env_of(init)
    for variable in re.findall(r"\$\(([A-Z_]+)\)", init_env["MLFLOW_AUTH_DATABASE_URI"]["value"]):
        assert secret_backed(init)[variable][0] == "mlflow-database"
    # run the init container's script; MLflow's own config reader must get the URI back intact
    rendered_uri = "postgresql+psycopg2://mlflow:p%40ss%25word@postgres:5432/mlflow"
    ini = tmp_path / "basic_auth.ini"
    result = subprocess.run([sys.executable, "-c", init["args"][0]], capture_output=True, text=True, timeout=60,
                            env={"MLFLOW_AUTH_DATABASE_URI": rendered_uri, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert ini.stat().st_mode & 0o077 == 0, "the auth ini holds a password: owner-only"
    import mlflow

    spec = importlib.util.spec_from_file_location(
        "afm_test_mlflow_auth_config", Path(mlflow.__file__).parent / "server" / "auth" / "config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MLFLOW_AUTH_")}
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
    try:
        config = module.read_auth_config()
    finally:
        os.environ.pop("MLFLOW_AUTH_CONFIG_PATH")
        os.environ.update(saved)
    assert config.database_uri == rendered_uri
    assert config.default_permission == "READ" and config.admin_password is None   # admin: env only
    # what tests/test_mlflow_auth.py's server runs with, but for the database
    from test_mlflow_auth import AUTH_INI

    tested = configparser.ConfigParser(interpolation=None)
    tested.read_string(AUTH_INI)
    written = configparser.ConfigParser(interpolation=None)
    written.read(ini)
    assert {k: v for k, v in written["mlflow"].items() if k != "database_uri"} == \
        {k: v for k, v in tested["mlflow"].items() if k != "database_uri"}
    assert config.auth_cache_ttl_seconds == 60  # a password check per credential and minute, not per request


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_mlflow_reaches_its_stores_without_admin_rights(rendered, name):
    """Issue 29: MLflow logs in to MinIO as a user limited to its bucket and to PostgreSQL as a role
    that is no superuser; the root/superuser credentials stay with MinIO, PostgreSQL and the Job
    that creates the bucket and the user."""
    docs = rendered[name]
    admin_secrets = {"minio-credentials": {"minio", "create-bucket"}, "postgres-credentials": {"postgres"}}
    for doc in docs:
        for template in pod_templates(doc):
            spec = template["spec"]
            for container in spec["containers"] + spec.get("initContainers", []):
                for secret, _ in secret_backed(container).values():
                    if secret in admin_secrets:
                        assert pod_name(template) in admin_secrets[secret], f"{pod_name(template)} gets {secret}"
    mlflow = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    server = mlflow["containers"][0]
    assert secret_backed(server)["AWS_ACCESS_KEY_ID"] == ("minio-mlflow", "AWS_ACCESS_KEY_ID")
    assert secret_backed(server)["AWS_SECRET_ACCESS_KEY"] == ("minio-mlflow", "AWS_SECRET_ACCESS_KEY")
    # the bucket Job creates exactly that user, with a policy on the artifact bucket only
    args = dict(arg.removeprefix("--").partition("=")[::2] for arg in server["args"])
    bucket = re.fullmatch(r"s3://([a-z0-9.-]+)(/.*)?", args["artifacts-destination"]).group(1)
    job = one(docs, "Job", "create-bucket")["spec"]["template"]["spec"]["containers"][0]
    job_env, job_secrets = env_of(job), secret_backed(job)
    assert job_secrets["MLFLOW_S3_ACCESS_KEY"] == ("minio-mlflow", "AWS_ACCESS_KEY_ID")
    assert job_secrets["MLFLOW_S3_SECRET_KEY"] == ("minio-mlflow", "AWS_SECRET_ACCESS_KEY")
    policy = json.loads(job_env["POLICY_JSON"]["value"])
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert all(re.fullmatch(r"s3:[A-Za-z]+", action) for action in statement["Action"]), "no wildcard actions"
        assert set(statement["Resource"]) <= {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    script = job["args"][0]
    assert 'mc admin policy create minio "$POLICY_NAME" /tmp/policy.json' in script
    assert re.search(r'printf [^|]*"\$MLFLOW_S3_SECRET_KEY" \| mc admin user add minio "\$MLFLOW_S3_ACCESS_KEY"$',
                     script, re.M), "the secret key goes on stdin, never on argv"
    assert 'mc admin policy attach minio "$POLICY_NAME" --user "$MLFLOW_S3_ACCESS_KEY"' in script
    # PostgreSQL: MLflow's role and database come from mlflow-database, made by the first-start script
    postgres = one(docs, "StatefulSet", "postgres")["spec"]["template"]["spec"]
    container = postgres["containers"][0]
    assert "POSTGRES_DB" not in env_of(container), "the entrypoint would make that database the superuser's"
    for variable in ("MLFLOW_DB_USER", "MLFLOW_DB_PASSWORD", "MLFLOW_DB_NAME"):
        assert secret_backed(container)[variable] == ("mlflow-database", variable)
        assert secret_backed(server)[variable] == ("mlflow-database", variable)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/docker-entrypoint-initdb.d")
    volume = next(v for v in postgres["volumes"] if v["name"] == mount["name"])
    init = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    assert list(init) == ["create-mlflow-role.sh"]
    sql = init["create-mlflow-role.sh"]
    assert re.search(r"CREATE ROLE :\"mlflow_user\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE", sql)
    assert 'CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user"' in sql
    assert subprocess.run(["sh", "-n", "-c", sql], capture_output=True).returncode == 0, "shell syntax"


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_jobs_log_in_to_mlflow_with_the_job_account(rendered, name):
    from mlflow.environment_variables import MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_USERNAME

    docs = rendered[name]
    cluster = one(docs, "RayCluster")
    for template in [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]:
        secret_env = secret_backed(ray_container(template))
        assert secret_env[MLFLOW_TRACKING_USERNAME.name] == ("mlflow-job", "MLFLOW_TRACKING_USERNAME")
        assert secret_env[MLFLOW_TRACKING_PASSWORD.name] == ("mlflow-job", "MLFLOW_TRACKING_PASSWORD")
    # the bootstrap Job: D's script in the MLflow image, admin and job accounts from their Secrets
    job = one(docs, "Job", "mlflow-bootstrap")["spec"]["template"]["spec"]
    container = job["containers"][0]
    assert split_image(container["image"])[0].endswith("afm-ray-mlflow")
    assert container["command"] == ["python", "/app/bootstrap_users.py"]
    assert env_of(container)["MLFLOW_TRACKING_URI"]["value"] == MLFLOW_URI
    assert secret_backed(container) == {
        "MLFLOW_ADMIN_USERNAME": ("mlflow-admin", "MLFLOW_AUTH_ADMIN_USERNAME"),
        "MLFLOW_ADMIN_PASSWORD": ("mlflow-admin", "MLFLOW_AUTH_ADMIN_PASSWORD"),
        "MLFLOW_JOB_USERNAME": ("mlflow-job", "MLFLOW_TRACKING_USERNAME"),
        "MLFLOW_JOB_PASSWORD": ("mlflow-job", "MLFLOW_TRACKING_PASSWORD")}
    copies = [a.split() for k, a in dockerfile(K8S / "mlflow.Dockerfile") if k == "COPY"]
    assert [p for p in copies if p[-1] == "/app/bootstrap_users.py" and "k8s/mlflow/bootstrap_users.py" in p]
    assert (K8S / "mlflow" / "bootstrap_users.py").exists() or pytest.skip("k8s/mlflow/bootstrap_users.py not written yet")


def test_the_submitter_image_is_small():
    instructions = dockerfile(K8S / "submitter.Dockerfile")
    [base] = [a for k, a in instructions if k == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim@sha256:[0-9a-f]{64}", base), base
    installs = [a for k, a in instructions if k == "RUN" and "pip install" in a]
    assert len(installs) == 1
    packages = re.findall(r'"([^"]+)"', installs[0])
    assert packages == ['ray[default]==${RAY_VERSION}']
    import ray

    assert dockerfile_args(K8S / "submitter.Dockerfile")["RAY_VERSION"] == ray.__version__
    assert image_user(K8S / "submitter.Dockerfile")[0] != 0


def test_rayjobs_resume_when_created_again():
    """Re-creating a RayJob continues it: the sweep by --resume-if-exists, training because afm-ray
    train resumes whenever its run folder exists (so its entrypoint carries no flag)."""
    jobs_text = {path.stem: yaml.safe_load(path.read_text()) for path in (K8S / "jobs").glob("*.yaml")}
    prod = yaml.safe_load((K8S / "overlays" / "prod" / "jobs" / "kustomization.yaml").read_text())
    prod_entrypoints = {p["target"]["name"]: yaml.safe_load(p["patch"])[0]["value"] for p in prod["patches"]}
    for entrypoint in (jobs_text["tune-xyz"]["spec"]["entrypoint"], prod_entrypoints["tune-xyz"]):
        argv = shlex.split(entrypoint)
        assert argv[:2] == ["afm-ray", "tune"] and "--resume-if-exists" in argv and "--resume" not in argv
    for entrypoint in (jobs_text["train-dsh"]["spec"]["entrypoint"], prod_entrypoints["train-dsh"]):
        assert not [a for a in shlex.split(entrypoint) if a.startswith("--resume")]
    assert "add --resume" not in (K8S / "jobs" / "tune-xyz.yaml").read_text()


# --------------------------------------------------------------------------------------------
# TLS inside the cluster (issue 29): MLflow, MinIO and PostgreSQL serve TLS, every client verifies
# --------------------------------------------------------------------------------------------

TLS_SECRETS = {"mlflow": "mlflow-tls", "minio": "minio-tls", "postgres": "postgres-tls"}   # Service → its Secret
TLS_PORTS = {"mlflow": 5000, "minio": 9000, "postgres": 5432}
# (pod, container) → the servers it connects to; KubeRay's injected wait-gcs-ready copies a Ray container's env
TLS_CLIENTS = {
    ("afm-ray-head", "ray-head"): {"mlflow"},
    ("afm-ray-sim-worker", "ray-worker"): {"mlflow"},
    ("afm-ray-sim-worker", "wait-gcs-ready"): {"mlflow"},
    ("afm-ray-train-worker", "ray-worker"): {"mlflow"},
    ("afm-ray-train-worker", "wait-gcs-ready"): {"mlflow"},
    ("mlflow-bootstrap", "bootstrap-users"): {"mlflow"},
    ("mlflow", "auth-config"): {"postgres"},     # writes the URI into the auth ini that the server container reads
    ("mlflow", "mlflow"): {"postgres", "minio"},
    ("create-bucket", "create-bucket"): {"minio"},
}
# settings that would switch a client's verification off
INSECURE = re.compile(r"MLFLOW_TRACKING_INSECURE_TLS|MLFLOW_S3_IGNORE_TLS|PGSSLMODE|CURL_CA_BUNDLE|--insecure|"
                      r"sslmode=(?!verify-full)|PYTHONHTTPSVERIFY|REQUESTS_CA_BUNDLE", re.I)
CERT_MANAGER_FIELDS = {   # cert-manager.io/v1 (https://cert-manager.io/docs/reference/api-docs/): what k8s/ uses
    "Certificate": {"secretName", "commonName", "dnsNames", "duration", "renewBefore", "usages", "privateKey",
                    "issuerRef", "isCA"},
    "Issuer": {"selfSigned", "ca"},
}


def mounted_secret_file(template: dict, container: dict, path: str) -> tuple[str, str] | None:
    """(Secret, key) whose content ``container`` reads at ``path`` through a secret volume, else ``None``."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        secret = volumes.get(mount["name"], {}).get("secret")   # volumeClaimTemplates are no Secrets
        if not path.startswith(prefix) or secret is None:
            continue
        relative = path[len(prefix):]
        if "items" not in secret:
            return secret["secretName"], relative
        return next(((secret["secretName"], item["key"]) for item in secret["items"] if item["path"] == relative), None)
    return None


def secret_volume_mode(template: dict, container: dict, path: str) -> int:
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    return volumes[mount["name"]]["secret"].get("defaultMode", 0o644)


def probes_use_https(container: dict) -> bool:
    probes = [container[p] for p in ("readinessProbe", "livenessProbe", "startupProbe") if p in container]
    return bool(probes) and all(p["httpGet"].get("scheme") == "HTTPS" for p in probes)


def server_pod(pods: dict, server: str) -> tuple[dict, dict]:
    template = pods[server]
    return template, template["spec"]["containers"][0]


@pytest.mark.parametrize("platform", OVERLAYS)
def test_mlflow_minio_and_postgres_serve_only_tls(rendered, platform):
    pods = platform_pods(rendered, platform)
    # MLflow: uvicorn with the certificate and key of mlflow-tls, nothing in clear text (probes over HTTPS)
    template, mlflow = server_pod(pods, "mlflow")
    options = [a.partition("=")[2] for a in mlflow["args"] if a.startswith("--uvicorn-opts=")]
    assert len(options) == 1, "mlflow server needs --uvicorn-opts with the TLS files"
    uvicorn = dict(a.removeprefix("--").partition("=")[::2] for a in shlex.split(options[0]))
    assert mounted_secret_file(template, mlflow, uvicorn["ssl-certfile"]) == ("mlflow-tls", "tls.crt")
    assert mounted_secret_file(template, mlflow, uvicorn["ssl-keyfile"]) == ("mlflow-tls", "tls.key")
    assert secret_volume_mode(template, mlflow, uvicorn["ssl-keyfile"]) & 0o007 == 0, "the key: not world-readable"
    assert template["spec"]["securityContext"]["fsGroup"] == template["spec"]["securityContext"]["runAsGroup"]
    assert not any(a.startswith(("--gunicorn-opts", "--waitress-opts", "--dev")) for a in mlflow["args"])
    assert probes_use_https(mlflow)
    # the Service and the probes name the container's port (a renamed port would leave them pointing nowhere)
    port_names = {p["name"] for p in mlflow["ports"]}
    assert {p["targetPort"] for p in one(rendered[platform], "Service", "mlflow")["spec"]["ports"]} <= port_names
    assert {mlflow[p]["httpGet"]["port"] for p in ("readinessProbe", "livenessProbe")} <= port_names
    # MinIO: public.crt/private.key in its --certs-dir make it serve HTTPS only
    template, minio = server_pod(pods, "minio")
    certs = minio["args"][minio["args"].index("--certs-dir") + 1]
    assert mounted_secret_file(template, minio, f"{certs}/public.crt") == ("minio-tls", "tls.crt")
    assert mounted_secret_file(template, minio, f"{certs}/private.key") == ("minio-tls", "tls.key")
    assert mounted_secret_file(template, minio, f"{certs}/CAs/ca.crt") == ("minio-tls", "ca.crt")
    assert secret_volume_mode(template, minio, f"{certs}/private.key") & 0o007 == 0
    assert probes_use_https(minio)
    # PostgreSQL: ssl=on with postgres-tls; a key owned by root must be 0640 or stricter
    template, postgres = server_pod(pods, "postgres")
    settings = dict(postgres["args"][i + 1].partition("=")[::2] for i, a in enumerate(postgres["args"]) if a == "-c")
    assert settings["ssl"] == "on" and settings["ssl_min_protocol_version"] in {"TLSv1.2", "TLSv1.3"}
    assert mounted_secret_file(template, postgres, settings["ssl_cert_file"]) == ("postgres-tls", "tls.crt")
    assert mounted_secret_file(template, postgres, settings["ssl_key_file"]) == ("postgres-tls", "tls.key")
    assert secret_volume_mode(template, postgres, settings["ssl_key_file"]) & 0o137 == 0
    assert template["spec"]["securityContext"]["fsGroup"] == template["spec"]["securityContext"]["runAsGroup"]
    # pg_hba.conf: TCP only with TLS (hostssl) and a password; no `host`/`hostnossl` line
    hba_path = settings["hba_file"]
    mount = next(m for m in postgres["volumeMounts"] if hba_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    hba = one(rendered[platform], "ConfigMap", volume["configMap"]["name"])["data"][hba_path.rpartition("/")[2]]
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert {rule[0] for rule in rules} == {"local", "hostssl"}
    assert all(rule[-1] == "scram-sha-256" for rule in rules if rule[0] == "hostssl")
    # a server's key reaches no other pod; clients mount only ca.crt of another server's Secret
    for name, template in pods.items():
        for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            for volume in template["spec"].get("volumes", []):
                secret = volume.get("secret", {})
                if secret.get("secretName") in TLS_SECRETS.values():
                    keys = {item["key"] for item in secret.get("items", [{"key": "*"}])}
                    owner = next(s for s, n in TLS_SECRETS.items() if n == secret["secretName"])
                    assert keys == {"ca.crt"} or name == owner, f"{name} mounts {secret['secretName']} keys {keys}"


def tls_connections(template: dict, container: dict) -> dict[str, tuple[str, str | None]]:
    """{server: (URL, the CA file the client verifies it against)} of a container's MLflow, MinIO and
    PostgreSQL addresses, from its env and argv."""
    env = {name: e.get("value", "") for name, e in env_of(container).items()}
    texts = list(env.values()) + container.get("command", []) + container.get("args", [])
    found: dict[str, tuple[str, str | None]] = {}
    for text in texts:
        for url in re.findall(r"(?:https?|postgresql\+psycopg2)://[^\s'\"]+", text):   # s3://BUCKET names no host
            host = re.sub(r"^.*@", "", url.split("://", 1)[1]).split("/")[0].split(":")[0].split("?")[0]
            if host not in TLS_SECRETS:
                continue
            if host == "mlflow":
                ca = env.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
            elif host == "minio":
                ca = env.get("AWS_CA_BUNDLE") if "MLFLOW_S3_ENDPOINT_URL" in env else env.get("SSL_CERT_FILE")
            else:
                query = dict(p.partition("=")[::2] for p in url.partition("?")[2].split("&") if p)
                assert query.get("sslmode") == "verify-full", f"{url}: PostgreSQL must be verified (sslmode=verify-full)"
                ca = query.get("sslrootcert")
            found[host] = (url, ca)
    return found


@pytest.mark.parametrize("platform", OVERLAYS)
def test_every_client_verifies_the_servers_certificate(rendered, platform):
    pods = platform_pods(rendered, platform)
    clients = {}
    for name, template in pods.items():
        spec = template["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{name}/{container['name']}"
            text = json.dumps({k: container.get(k) for k in ("env", "command", "args")})
            assert not INSECURE.search(text), f"{where}: TLS verification switched off: {INSECURE.search(text)[0]}"
            assert "http://" not in text, f"{where}: a plain-HTTP address"
            connections = tls_connections(template, container)
            if connections:
                clients[(name, container["name"])] = set(connections)
            # the URI the auth-config init container writes is used by the server container next to it
            reader = spec["containers"][0] if container["name"] == "auth-config" else container
            for server, (url, ca) in connections.items():
                assert url.startswith(("https://", "postgresql+psycopg2://")), f"{where}: {url} is not TLS"
                assert ca, f"{where}: no CA to verify {server} with"
                assert mounted_secret_file(template, reader, ca) == (TLS_SECRETS[server], "ca.crt"), \
                    f"{where}: {ca} is not the ca.crt of {TLS_SECRETS[server]}"
                if server != "postgres":
                    assert re.match(rf"https://([^@/]+@)?{server}:{TLS_PORTS[server]}$", url), url
    assert clients == TLS_CLIENTS
    # …and they are exactly the pods the NetworkPolicies let reach the three servers
    reaching = {(s, d) for (s, d), ports in expected_reachability().items() if d in TLS_SECRETS}
    assert reaching == {(pod, server) for (pod, _), servers in TLS_CLIENTS.items() for server in servers}
    # the MLflow client, psycopg2 and botocore read these settings (not names of our own)
    from mlflow.environment_variables import MLFLOW_TRACKING_SERVER_CERT_PATH

    assert MLFLOW_TRACKING_SERVER_CERT_PATH.name == "MLFLOW_TRACKING_SERVER_CERT_PATH"


def test_cert_manager_issues_every_tls_secret_for_the_names_clients_use(rendered):
    for platform in OVERLAYS:
        docs = rendered[platform]
        issuers = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "Issuer")}
        certificates = {doc["spec"]["secretName"]: doc for doc in by_kind(docs, "Certificate")}
        for doc in by_kind(docs, "Issuer") + by_kind(docs, "Certificate"):
            assert doc["apiVersion"] == "cert-manager.io/v1" and doc["metadata"]["namespace"] == NAMESPACE
            unknown = set(doc["spec"]) - CERT_MANAGER_FIELDS[doc["kind"]]
            assert not unknown, f"{doc['kind']} {doc['metadata']['name']}: unknown fields {unknown}"
        for server, secret in TLS_SECRETS.items():
            certificate = certificates[secret]["spec"]
            assert {server, f"{server}.{NAMESPACE}.svc", f"{server}.{NAMESPACE}.svc.cluster.local"} <= \
                set(certificate["dnsNames"]), secret
            assert "server auth" in certificate["usages"] and not certificate.get("isCA")
            # signed by a CA Issuer whose key is an isCA Certificate issued by a self-signed Issuer
            issuer = issuers[certificate["issuerRef"]["name"]]
            assert certificate["issuerRef"]["kind"] == "Issuer"
            root = certificates[issuer["spec"]["ca"]["secretName"]]["spec"]
            assert root["isCA"] is True and "selfSigned" in issuers[root["issuerRef"]["name"]]["spec"]
            assert one(docs, "Service", server)["metadata"]["name"] == server
        # the CA's own Secret (with its key) is mounted by no pod
        ca_secrets = {issuer["spec"]["ca"]["secretName"] for issuer in issuers.values() if "ca" in issuer["spec"]}
        for doc in docs:
            for pod in pod_specs(doc):
                assert not {v.get("secret", {}).get("secretName") for v in pod.get("volumes", [])} & ca_secrets
    # without the component (the base) the same Secrets are expected from the user, and nothing makes them
    referenced = {v["secret"]["secretName"] for doc in rendered["base"] for pod in pod_specs(doc)
                  for v in pod.get("volumes", []) if "secret" in v}
    generated = {doc["metadata"]["name"] for doc in by_kind(rendered["base"], "Secret")}
    assert referenced - generated == set(TLS_SECRETS.values())
    assert not by_kind(rendered["base"], "Certificate")
