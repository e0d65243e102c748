"""One optimiser step on a rank (:class:`StepRunner`) and the epoch's loss sums it keeps on the device
(:class:`LossSums`)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from afm_ray.models.memory_format import channels_last
from afm_ray.recipe import TrainConfig
from afm_ray.train.configured_model import compute_loss, forward
from afm_ray.train.loader import DeviceBatch
from afm_ray.train.optim import SampleSchedule


class LossSums:
    """Sample-weighted sums of the training loss and its terms, kept on the device (no sync per step).

    :meth:`read` turns them into plain floats once per logging interval (the epoch):
    ``{"loss": Σ n·total, "loss_<term>": Σ n·term, "loss_samples": Σ n}``.
    """

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self.samples = 0

    def add(self, loss, n_samples: int) -> None:
        for name, value in (("loss", loss.total), *((f"loss_{k}", v) for k, v in loss.terms.items())):
            weighted = value.detach().float() * n_samples
            self._sums[name] = self._sums[name] + weighted if name in self._sums else weighted
        self.samples += n_samples

    def read(self) -> dict[str, float]:
        names = list(self._sums)
        values = torch.stack([self._sums[name] for name in names]).tolist() if names else []
        return {**dict(zip(names, values)), "loss_samples": float(self.samples)}


@dataclass
class StepRunner:
    """One optimiser step of a global batch on this rank: its micro batches' gradients added up, then one update.

    A micro batch of ``n`` samples back-propagates ``loss × n × W / G`` (G the global batch, W the ranks):
    DDP averages the ranks' gradients (÷ W), so the update follows the mean loss of the global batch
    whatever W and the cut into micro batches. Only the last micro batch synchronises the ranks
    (the others run under DDP's ``no_sync``). A rank left without data keeps the ranks in step with a
    zero-loss pass; the learning rate advances by the global batch in any case (per sample seen).
    ``synchronize``: wait for the device after each stage, so that :attr:`seconds` splits the step
    truly on a GPU (benchmarks only).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: SampleSchedule
    loss_fn: torch.nn.Module
    config: TrainConfig
    device: torch.device
    world_size: int
    channels_last: bool = False
    synchronize: bool = False
    sums: LossSums = field(default_factory=LossSums)
    seconds: dict[str, float] = field(default_factory=lambda: {"forward_backward": 0.0, "optimizer": 0.0})

    def run(self, micro_batches: list[DeviceBatch | None]) -> int:
        """Train on one step's micro batches (None where dropped); returns the samples trained."""
        present = [batch for batch in micro_batches if batch is not None]
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        if not present and self.world_size == 1:
            self.schedule.step()
            return 0
        if not present:  # every rank must run the same number of synchronised backward passes
            outputs = forward(self.model, self._memory_format(_blank_input(self.config, self.device)), self.config)
            (sum(o.sum() for o in outputs) * 0.0).backward()
        scale = self.world_size / self.config.run.batch_size
        for position, batch in enumerate(present):
            last = position == len(present) - 1
            with contextlib.nullcontext() if last else getattr(self.model, "no_sync", contextlib.nullcontext)():
                outputs = forward(self.model, self._memory_format(batch.tensors["x"]), self.config)
                loss = compute_loss(self.config.model.spec, self.loss_fn, outputs, batch.tensors)
                (loss.total * (batch.n_samples * scale)).backward()
            self.sums.add(loss, batch.n_samples)
        stepped = self._lap(started, "forward_backward")
        self.optimizer.step()
        self.schedule.step()
        self._lap(stepped, "optimizer")
        return sum(batch.n_samples for batch in present)

    def _lap(self, started: float, stage: str) -> float:
        if self.synchronize and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[stage] += now - started
        return now

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last(x) if self.channels_last else x


def _blank_input(config: TrainConfig, device) -> torch.Tensor:
    """One all-zero input sample, (1, tips, nx, ny, slices)."""
    return torch.zeros(1, len(config.model.spec.tips), *config.sim.scan_pixels, config.input_slices, device=device)
