"""The container images: the Dockerfile builds the cluster image, every image is pinned by digest, the
images' Python packages are pinned, the build context leaves credentials and local state out."""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml


from k8s.kustomize import split_image
from k8s.manifests import IMAGE_ROOT, K8S, KUSTOMIZATIONS, REPO, containers, dockerfile, dockerfile_args, image_user


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
