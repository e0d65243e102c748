"""Optimiser factory: Adam with Keras-style inverse-time learning-rate decay (thesis 3.3).

The learning rate at optimiser step ``n`` is ``lr / (1 + decay · n)``; call
``scheduler.step()`` once after every ``optimizer.step()`` (per batch, not per epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

LEARNING_RATE = 1e-3
LEARNING_RATE_DECAY = 1e-5
BETAS = (0.9, 0.999)
# Keras' Adam epsilon (the thesis' models were trained in Keras); PyTorch's default is 1e-8.
ADAM_EPSILON = 1e-7


class InverseTimeDecay:
    """``step ↦ 1 / (1 + decay · step)``, the LambdaLR factor (a class, so it pickles for Ray)."""

    def __init__(self, decay: float):
        self.decay = decay

    def __call__(self, step: int) -> float:
        return 1.0 / (1.0 + self.decay * step)


def build_optimizer(parameters: Iterable[torch.nn.Parameter], lr: float = LEARNING_RATE,
                    decay: float = LEARNING_RATE_DECAY, betas: tuple[float, float] = BETAS,
                    eps: float = ADAM_EPSILON) -> tuple[torch.optim.Adam, LambdaLR]:
    """Adam(lr, betas, eps) and the LambdaLR scheduler that applies ``lr / (1 + decay · step)``.

    Args:
        parameters: the model's parameters (or parameter groups).
        lr: initial learning rate (thesis 1e-3), > 0.
        decay: inverse-time decay per optimiser step (thesis 1e-5), >= 0.
        betas: Adam's β1, β2 in [0, 1) (thesis 0.9, 0.999).
        eps: Adam's ε, > 0.

    Returns:
        ``(optimizer, scheduler)``.
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
    scheduler = LambdaLR(optimizer, InverseTimeDecay(decay))
    return optimizer, scheduler


def restore_optimizer(optimizer: torch.optim.Adam, scheduler: LambdaLR, optimizer_state: dict, scheduler_state: dict,
                      lr: float = LEARNING_RATE, decay: float = LEARNING_RATE_DECAY,
                      betas: tuple[float, float] = BETAS) -> None:
    """Load a checkpoint's optimiser and scheduler state, then apply *these* hyperparameters.

    The checkpoint keeps Adam's moments and the step count (so the decay continues where it was);
    its learning rate, decay and betas are replaced by the ones given, so that a run resumed with
    a changed ``optimizer.*`` (``afm-ray train --allow-changed``) trains with what its MLflow run
    records: after this the learning rate is ``lr / (1 + decay · step)`` at the checkpoint's step.
    """
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    scheduler.lr_lambdas = [InverseTimeDecay(decay) for _ in optimizer.param_groups]
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["betas"] = tuple(betas)
        group["lr"] = lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
