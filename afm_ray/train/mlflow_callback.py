"""Ray Train's controller logs each epoch's report to the run's MLflow run (:class:`MlflowReportCallback`)."""

from __future__ import annotations

from ray.train import UserCallback

from afm_ray.registry.tracking import RunTracker


class MlflowReportCallback(UserCallback):
    """Logs every epoch's report (rank 0's metrics) to the run's MLflow run, from the Train controller.

    Ray Train calls it after the checkpoint manager has saved the report's checkpoint, so an epoch
    is in MLflow only once it is durable: an epoch lost to a crash is trained again and logged
    once, never twice. Epochs whose logging was lost with the controller are sent by the driver
    from the checkpoint's history (:meth:`RunTracker.backfill`).
    """

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._tracker: RunTracker | None = None  # built in the controller process, not pickled there

    def __getstate__(self) -> dict:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "_tracker": None}

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if checkpoint is None or not metrics:
            return
        if self._tracker is None:
            self._tracker = RunTracker(self.tracking_uri, self.run_id)
        values = metrics[0]
        self._tracker.log_metrics({k: v for k, v in values.items() if k != "epoch"}, step=int(values["epoch"]))
