"""Optimiser factory: Adam with Keras-style inverse-time learning-rate decay (thesis 3.3), per sample seen.

The thesis decays the learning rate per optimiser step, ``lr / (1 + decay · step)``, with one GPU and a
batch of 30. Per step, a run on W workers would decay W times slower per sample when each worker adds a
batch of its own. Here the schedule is a function of the **training samples seen** ``s`` (all ranks
together), so any worker count, and any cut of the global batch into micro batches, follows the same
learning rate per sample:

    lr(s) = peak · min(1, (s + G) / warmup) / (1 + decay · s / B_ref)

``G`` is the global batch (samples per optimiser step), ``B_ref`` the reference batch (thesis 30): at
``G = B_ref`` and no warm-up this is exactly the thesis' per-step decay. ``peak`` is the configured
learning rate scaled by the global batch (:func:`scaled_learning_rate`): ``none`` keeps it, ``linear``
multiplies it by ``G / B_ref``, ``sqrt`` by ``√(G / B_ref)`` (the usual rule for Adam). Call
``schedule.step()`` once after every ``optimizer.step()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch

LEARNING_RATE = 1e-3
LEARNING_RATE_DECAY = 1e-5
REFERENCE_BATCH_SIZE = 30
BETAS = (0.9, 0.999)
# Keras' Adam epsilon (the thesis' models were trained in Keras); PyTorch's default is 1e-8.
ADAM_EPSILON = 1e-7

BatchScaling = Literal["none", "linear", "sqrt"]


def scaled_learning_rate(lr: float, global_batch_size: int, reference_batch_size: int = REFERENCE_BATCH_SIZE,
                         rule: BatchScaling = "none") -> float:
    """``lr`` for a global batch of ``global_batch_size`` by ``rule`` (none, linear or sqrt in G / B_ref)."""
    ratio = global_batch_size / reference_batch_size
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


class SampleSchedule:
    """Sets the optimiser's learning rate from the training samples seen (module doc's ``lr(s)``).

    Its state is the count of samples seen (``state_dict``), so a run resumed with another worker
    count or global batch continues at the same learning rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, decay: float = LEARNING_RATE_DECAY,
                 global_batch_size: int = REFERENCE_BATCH_SIZE, reference_batch_size: int = REFERENCE_BATCH_SIZE,
                 warmup_samples: int = 0):
        if global_batch_size < 1 or reference_batch_size < 1:
            raise ValueError(f"batch sizes must be ≥ 1, got {global_batch_size} and {reference_batch_size}")
        if warmup_samples < 0:
            raise ValueError(f"warm-up must be ≥ 0 samples, got {warmup_samples}")
        self.optimizer = optimizer
        self.peak_lr, self.decay = peak_lr, decay
        self.global_batch_size, self.reference_batch_size = global_batch_size, reference_batch_size
        self.warmup_samples = warmup_samples
        self.samples_seen = 0
        self.apply()

    def learning_rate(self, samples_seen: int) -> float:
        """The learning rate of the step that follows ``samples_seen`` samples."""
        warmup = min(1.0, (samples_seen + self.global_batch_size) / self.warmup_samples) if self.warmup_samples else 1.0
        return self.peak_lr * warmup / (1.0 + self.decay * samples_seen / self.reference_batch_size)

    def apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.samples_seen)

    def step(self) -> None:
        """One optimiser step of a global batch has been taken."""
        self.samples_seen += self.global_batch_size
        self.apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's state; one of afm-ray ≤ 0.2 (a LambdaLR's, per step) counts its steps at this global batch."""
        self.samples_seen = int(state["samples_seen"]) if "samples_seen" in state else \
            int(state["last_epoch"]) * self.global_batch_size
        self.apply()


def build_optimizer(parameters: Iterable[torch.nn.Parameter], lr: float = LEARNING_RATE,
                    decay: float = LEARNING_RATE_DECAY, betas: tuple[float, float] = BETAS,
                    eps: float = ADAM_EPSILON, global_batch_size: int = REFERENCE_BATCH_SIZE,
                    reference_batch_size: int = REFERENCE_BATCH_SIZE, warmup_samples: int = 0,
                    batch_scaling: BatchScaling = "none") -> tuple[torch.optim.Adam, SampleSchedule]:
    """Adam(betas, eps) and the :class:`SampleSchedule` of the module doc.

    Args:
        parameters: the model's parameters (or parameter groups).
        lr: initial learning rate at the reference batch (thesis 1e-3), > 0.
        decay: inverse-time decay per ``reference_batch_size`` samples seen (thesis 1e-5 per step of 30), >= 0.
        betas: Adam's β1, β2 in [0, 1) (thesis 0.9, 0.999).
        eps: Adam's ε, > 0.
        global_batch_size: samples per optimiser step, all ranks together.
        reference_batch_size: the batch ``lr`` and ``decay`` are given for (thesis 30).
        warmup_samples: linear warm-up over this many samples seen (0: none).
        batch_scaling: how ``lr`` follows ``global_batch_size / reference_batch_size``.

    Returns:
        ``(optimizer, schedule)``.
    """
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be > 0, got {lr}")
    if not (math.isfinite(decay) and decay >= 0):
        raise ValueError(f"learning-rate decay must be >= 0, got {decay}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    if not (eps > 0):
        raise ValueError(f"eps must be > 0, got {eps}")
    optimizer = torch.optim.Adam(parameters, lr=lr, betas=tuple(betas), eps=eps)
    peak = scaled_learning_rate(lr, global_batch_size, reference_batch_size, batch_scaling)
    return optimizer, SampleSchedule(optimizer, peak, decay, global_batch_size, reference_batch_size, warmup_samples)


def restore_optimizer(optimizer: torch.optim.Adam, schedule: SampleSchedule, optimizer_state: dict,
                      schedule_state: dict, betas: tuple[float, float] = BETAS) -> None:
    """Load a checkpoint's optimiser and schedule state, keeping *these* hyperparameters.

    The checkpoint keeps Adam's moments and the samples seen (so the decay continues where it was);
    learning rate, decay, warm-up and betas stay the ones ``optimizer`` and ``schedule`` were built
    with, so that a run resumed with a changed ``optimizer.*`` (``afm-ray train --allow-changed``)
    trains with what its MLflow run records.
    """
    optimizer.load_state_dict(optimizer_state)
    for group in optimizer.param_groups:
        group["betas"] = tuple(betas)
    schedule.load_state_dict(schedule_state)
