"""Every YAML file parses, every kustomization renders (as `kubectl kustomize` does where installed) and
validates against the Kubernetes OpenAPI and KubeRay CRD schemas."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess

import pytest
import yaml

from k8s.kustomize import resource_id
from k8s.manifests import (CERT_MANAGER_KINDS, CLUSTER_SCOPED, COMPONENTS, K8S, KUBERAY_SCHEMAS, KUBERNETES_VERSION,
                           KUSTOMIZATIONS, OVERLAYS, RAY_KINDS)


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
