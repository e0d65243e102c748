"""The rendered kustomizations, once per session, for every test under tests/k8s/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from k8s.kustomize import Kustomize
from k8s.manifests import K8S, KUSTOMIZATIONS


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory) -> Path:
    """A copy of k8s/ with the credentials env files made from the *.env.example templates
    (the real, git-ignored env files of a developer are never read)."""
    folder = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("*.env"))
    for example in folder.rglob("*.env.example"):
        example.with_suffix("").write_text(example.read_text())
    return folder


@pytest.fixture(scope="session")
def rendered(k8s_tree) -> dict[str, list[dict]]:
    return {name: Kustomize().build(k8s_tree / name) for name in KUSTOMIZATIONS}
