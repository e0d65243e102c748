"""Starting a local Ray: a node that misses Ray's fixed registration time is started once more."""

import os

import pytest
import ray

from afm_ray.pipeline import cluster


def without_ray_address(monkeypatch) -> None:
    """No RAY_ADDRESS now, and none after the test: the start sets it, and a later ``ray.init`` would join it."""
    monkeypatch.setenv("RAY_ADDRESS", "recorded")  # monkeypatch restores what was there before this
    monkeypatch.delenv("RAY_ADDRESS")


def test_a_local_node_that_timed_out_during_startup_is_started_once_more(monkeypatch, capsys):
    calls = []

    def init(**options):
        calls.append((os.environ["RAY_ADDRESS"], options))
        if len(calls) == 1:  # Ray's own words (ray/_private/node.py)
            raise Exception("The current node timed out during startup. This could happen because some of the "
                            "raylet failed to startup or the GCS has become overloaded.")
        return "started"

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    without_ray_address(monkeypatch)
    monkeypatch.setattr(cluster, "_started_address", None)
    assert cluster._start_local_ray(2, {"log_to_driver": False}) == "started"
    (first_address, options), shutdown, (second_address, _) = calls
    assert shutdown == "shutdown" and options == {"address": "local", "num_cpus": 2, "log_to_driver": False}
    assert first_address != second_address and os.environ["RAY_ADDRESS"] == second_address  # a fresh GCS port
    assert "timed out during startup (is the machine overloaded?); starting it again" in capsys.readouterr().err


def test_other_start_failures_are_not_retried(monkeypatch):
    def init(**options):
        raise ValueError("num_cpus must be positive")

    monkeypatch.setattr(ray, "init", init)
    without_ray_address(monkeypatch)
    with pytest.raises(ValueError, match="num_cpus"):
        cluster._start_local_ray(-1, {})
    assert "RAY_ADDRESS" not in os.environ
