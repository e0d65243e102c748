"""One console line per epoch, printed by the driver from the metrics rank 0 reports.

The training loop runs in Ray Train workers, whose output a quiet console does not forward
(:mod:`afm_ray.console`), so the epoch line is printed by the process the user started:

- ``afm-ray train``: :class:`EpochReportForwarder`, a Ray Train callback that the Train controller
  calls once an epoch's checkpoint is saved, hands rank 0's metrics to an :class:`EpochMailbox`
  actor; :class:`EpochLinePrinter`, on the driver, takes them from there and prints them.
- ``afm-ray tune``: :class:`TuneEpochLines`, a Tune callback in the sweep's driver, prints each
  result a trial reports to Tune.
"""

from __future__ import annotations

import threading

import ray
from ray.exceptions import RayError
from ray.train import UserCallback
from ray.tune import Callback as TuneCallback


def epoch_line(metrics: dict[str, float], epochs: int, objective_name: str) -> str:
    """``epoch 2/3  train_loss …  val_loss …  OBJECTIVE …  N samples/s  data wait P %`` from one epoch's report
    (``epoch`` counts from 0; ``data_wait_fraction`` in [0, 1])."""
    line = (f"epoch {int(metrics['epoch']) + 1}/{epochs}  train_loss {metrics['train_loss']:.4g}  "
            f"val_loss {metrics['val_loss']:.4g}  {objective_name} {metrics[objective_name]:.4g}  "
            f"{metrics['train_samples_per_s']:.1f} samples/s  data wait {100 * metrics['data_wait_fraction']:.0f} %")
    if metrics.get("samples_skipped"):
        line += f"  skipped {metrics['samples_skipped']:.0f} samples"
    if metrics.get("batches_dropped"):
        line += f"  dropped {metrics['batches_dropped']:.0f} batches"
    return line


@ray.remote(num_cpus=0)
class EpochMailbox:
    """Epoch reports on their way from the Train controller to the driver, in report order."""

    def __init__(self):
        self._reports: list[dict[str, float]] = []

    def put(self, metrics: dict[str, float]) -> None:
        self._reports.append(metrics)

    def take(self) -> list[dict[str, float]]:
        reports, self._reports = self._reports, []
        return reports


class EpochReportForwarder(UserCallback):
    """Runs in the Train controller: sends rank 0's metrics of every checkpointed epoch to an :class:`EpochMailbox`."""

    def __init__(self, mailbox):
        self.mailbox = mailbox

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if checkpoint is None or not metrics:  # rank 0 reports each epoch with its checkpoint
            return
        try:  # waited for, so that the last epoch is delivered before the controller ends
            ray.get(self.mailbox.put.remote(dict(metrics[0])), timeout=30)
        except RayError:  # the driver (and its mailbox) went away: a console line is no reason to fail a run
            pass


class EpochLinePrinter:
    """On the driver, for the duration of ``with``: prints the epoch lines of one training run.

    Add :attr:`callback` to the run's ``RunConfig(callbacks=…)``. Needs Ray connected.
    """

    def __init__(self, epochs: int, objective_name: str, poll_s: float = 0.5):
        self.epochs, self.objective_name, self.poll_s = epochs, objective_name, poll_s
        self._mailbox = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def callback(self) -> EpochReportForwarder:
        return EpochReportForwarder(self._mailbox)

    def __enter__(self) -> EpochLinePrinter:
        self._mailbox = EpochMailbox.remote()
        self._thread = threading.Thread(target=self._poll, name="afm-ray-epoch-lines", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._print_waiting()  # epochs reported since the last poll
        ray.kill(self._mailbox)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._print_waiting()

    def _print_waiting(self) -> None:
        try:
            reports = ray.get(self._mailbox.take.remote())
        except RayError:  # Ray is shutting down: nothing more will arrive
            return
        for metrics in reports:
            print(epoch_line(metrics, self.epochs, self.objective_name), flush=True)


class TuneEpochLines(TuneCallback):
    """Tune callback for the sweep's driver: one line per epoch of every trial, ``trial ID: epoch …``."""

    def __init__(self, epochs: int, objective_name: str):
        self.epochs, self.objective_name = epochs, objective_name

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if "train_loss" not in result:  # a result without an epoch's metrics
            return
        print(f"trial {trial.trial_id}: {epoch_line(result, self.epochs, self.objective_name)}", flush=True)
