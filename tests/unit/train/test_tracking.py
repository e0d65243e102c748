"""RunTracker: what reaches MLflow after an outage — each epoch whole, looked up with one request."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Metric

from afm_ray.registry.tracking import RunTracker, whole_steps


def metrics(steps: dict[int, int]) -> list[Metric]:
    """``count`` values for each ``step``, in step order."""
    return [Metric(f"m{index}", 0.0, 0, step) for step, count in steps.items() for index in range(count)]


def test_a_request_never_splits_a_step():
    pending = metrics({0: 400, 1: 400, 2: 400})
    first = whole_steps(pending, 1000)
    assert len(first) == 800 and {m.step for m in first} == {0, 1}
    assert whole_steps(pending[800:], 1000) == pending[800:]
    assert len(whole_steps(metrics({0: 1200}), 1000)) == 1000  # a step over the limit cannot be whole
    assert len(whole_steps(metrics({0: 1000, 1: 5}), 1000)) == 1000


def test_backfill_sends_only_the_missing_epochs_with_one_lookup(mlflow_sqlite_uri, monkeypatch):
    uri = mlflow_sqlite_uri
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("tracking")).info.run_id
    tracker = RunTracker(uri, run_id)
    tracker.log_metrics({"train_loss": 1.0, "val_loss": 2.0}, step=0)  # epoch 0 arrived before the outage
    lookups = []
    history_of = MlflowClient.get_metric_history
    monkeypatch.setattr(MlflowClient, "get_metric_history",
                        lambda self, run, key: lookups.append(key) or history_of(self, run, key))

    history = [{"epoch": 0, "train_loss": 1.0, "val_loss": 2.0},
               {"epoch": 1, "train_loss": 0.8, "val_loss": 1.5},
               {"epoch": 2, "train_loss": 0.6, "val_loss": 1.2, "test_loss": 1.3}]
    assert tracker.backfill(history) == 5  # epochs 1 and 2; epoch 0 not again
    assert lookups == ["train_loss"]
    monkeypatch.undo()
    for key, steps in (("train_loss", [0, 1, 2]), ("val_loss", [0, 1, 2]), ("test_loss", [2])):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == steps, key
    assert [m.value for m in sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)] == \
        [2.0, 1.5, 1.2]
    assert tracker.backfill(history) == 0  # nothing missing any more
