"""A tracking-server outage during training: warnings and buffered metrics, never a dead run.

A real ``mlflow server`` (SQLite backend, served artifacts) is stopped after the first epoch was
logged. Training must go on to its last epoch and checkpoint, fail only at registering the model
(with a message saying what to do), and running the command again (with one epoch more) once the
server is back must continue the same MLflow run, send the metrics of the epochs trained during the
outage and register the model.
"""

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from afm_ray.registry.checkpoints import load_checkpoint_model
from afm_ray.train.trainer import run_training
from servers import AS_DEPLOYED, free_port, start_mlflow_server, stop_process_group


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:PORT over one SQLite file; can be stopped and started again."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.database = folder / "server.db"
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout_s: float = 300) -> None:
        args = ["--host", "127.0.0.1", "--port", str(self.port), "--backend-store-uri", f"sqlite:///{self.database}",
                "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"]
        environment = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, **AS_DEPLOYED}
        self.process = start_mlflow_server(args, self.port, environment, self.folder, self.folder / "server.log",
                                           timeout_s)

    def stop(self) -> None:
        stop_process_group(self.process)

    def logged_steps(self, key: str) -> list[int]:
        """Read straight from the backend file: works while the server is down."""
        if not self.database.exists():
            return []
        with sqlite3.connect(self.database) as connection:
            return sorted(row[0] for row in connection.execute("SELECT step FROM metrics WHERE key = ?", (key,)))


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def server(tmp_path):
    mlflow_server = MlflowServer(tmp_path)
    mlflow_server.start()
    yield mlflow_server
    if mlflow_server.process.poll() is None:
        mlflow_server.stop()


def test_training_survives_a_tracking_outage_and_sends_buffered_metrics(ray_session, tiny_config, server):
    epochs = 3
    config = tiny_config.model_copy(update={
        "run": tiny_config.run.model_copy(update={"epochs": epochs}),
        "mlflow": tiny_config.mlflow.model_copy(update={"tracking_uri": server.uri,
                                                        "registered_model_name": "afm-outage-dsh"})})
    failure = {}

    def train() -> None:
        try:
            run_training(config, progress=False)
        except BaseException as exc:  # checked below
            failure["value"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    wait_for(lambda: server.logged_steps("val_loss") == [0] or not thread.is_alive(), 300, "epoch 0 in MLflow")
    server.stop()
    # the remaining epochs train and checkpoint while nothing answers at the tracking URI (rank 0
    # warns and buffers); only registering the model needs MLflow, and that fails with a message
    # saying what to do
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert "MLflow at" in str(failure.get("value")) and "Run the same command again" in str(failure["value"]), \
        failure.get("value")

    server.start()
    # the same command, one epoch more: the run folder's checkpoint and MLflow run continue
    more = config.model_copy(update={"run": config.run.model_copy(update={"epochs": epochs + 1})})
    outcome = run_training(more, progress=False)
    assert server.logged_steps("val_loss") == list(range(epochs + 1))  # the epochs of the outage arrived, none twice
    assert server.logged_steps("train_loss") == list(range(epochs + 1))
    client = MlflowClient(server.uri)
    assert [run.info.run_id for run in client.search_runs([client.get_experiment_by_name("afm-ray").experiment_id])] \
        == [outcome.run_id]
    assert client.get_run(outcome.run_id).info.status == "FINISHED"
    _, _, history = load_checkpoint_model(outcome.checkpoint_path)
    assert [h["epoch"] for h in history] == list(range(epochs + 1))
    assert client.get_model_version_by_alias("afm-outage-dsh", "current").version == outcome.model_version
