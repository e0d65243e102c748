"""A rank's training state in and out of Ray Train checkpoints.

:class:`TrainingState` is what a checkpoint holds and restores: the network (inside its DDP / compile wrappers),
the optimiser and the learning-rate schedule. A checkpoint folder holds ``state.pt`` (state dicts, epoch and config
as plain values, read back with ``weights_only=True`` by
:func:`~afm_ray.registry.checkpoints.read_checkpoint_state`) and the epoch history as JSON.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray.train
import torch
from ray.train import Checkpoint

from afm_ray.registry.checkpoints import CHECKPOINT_FILE, HISTORY_FILE, read_checkpoint_state
from afm_ray.train.network import unwrap
from afm_ray.train.optim import SampleSchedule, restore_optimizer


@dataclass
class TrainingState:
    """The model, optimiser and schedule a rank trains; ``betas``: the run's Adam betas, kept on restore
    (:func:`~afm_ray.train.optim.restore_optimizer`)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: SampleSchedule
    betas: tuple[float, float]

    def save(self, folder: str | Path, epoch: int, config_json: str, history: list[dict]) -> None:
        """Write the state after ``epoch`` (0-based) with the run's config and history into ``folder``."""
        torch.save({"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.schedule.state_dict(), "epoch": epoch, "config_json": config_json},
                   Path(folder) / CHECKPOINT_FILE)
        (Path(folder) / HISTORY_FILE).write_text(json.dumps(history))

    def restore(self, checkpoint: Checkpoint | None, device: torch.device | str = "cpu") -> tuple[int, list[dict]]:
        """Load ``checkpoint`` (None: nothing to resume) into model, optimiser and schedule; returns (first
        epoch to train, the history so far), ``(0, [])`` without a checkpoint."""
        if checkpoint is None:
            return 0, []
        with checkpoint.as_directory() as folder:
            state = read_checkpoint_state(folder, device)
            history = json.loads((Path(folder) / HISTORY_FILE).read_text())
        unwrap(self.model).load_state_dict(state["model"])
        restore_optimizer(self.optimizer, self.schedule, state["optimizer"], state["scheduler"], self.betas)
        return state["epoch"] + 1, history

    def report(self, rank: int, metrics: dict[str, float], epoch: int, config_json: str,
               history: list[dict]) -> None:
        """Report an epoch's ``metrics`` to Ray Train: rank 0 with its checkpoint (written to a temporary folder,
        which Ray Train copies to storage before this returns), the other ranks without."""
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="afm-ray-checkpoint-") as folder:
            self.save(folder, epoch, config_json, history)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
