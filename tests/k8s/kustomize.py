"""A small kustomize: renders a kustomization of k8s/ (resources, namespace, images, secret/configMap
generators, JSON 6902 and strategic-merge patches: what k8s/ uses) into its list of documents."""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import yaml

from k8s.manifests import CLUSTER_SCOPED, pod_specs


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
