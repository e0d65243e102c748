"""afm_ray.files: a replaced file is seen whole or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from afm_ray.files import atomic_file


def test_an_atomic_file_replaces_the_old_one_only_when_complete(tmp_path):
    path = tmp_path / "new folder" / "state.json"
    with atomic_file(path, text=True) as stream:
        stream.write("old\n")
    with pytest.raises(RuntimeError, match="crashed"):
        with atomic_file(path, text=True) as stream:
            stream.write("half of the new")
            assert path.read_text() == "old\n"  # nothing visible while the block runs
            raise RuntimeError("crashed")
    assert path.read_text() == "old\n" and [p.name for p in path.parent.iterdir()] == ["state.json"]
    with atomic_file(path) as stream:
        stream.write(b"new\r\n")
    assert path.read_bytes() == b"new\r\n" and [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_an_atomic_file_gets_the_umask_permissions_not_those_of_a_private_temporary_file(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "figure.png") as stream:
            stream.write(b"png")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "figure.png").stat().st_mode) == 0o644  # mkstemp's 0600 would survive the rename
