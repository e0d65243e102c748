"""Training losses (thesis 3.3, Eqs. 26–30).

* :class:`WeightedMSELoss` — DSH and ES: Σ_k w_k · MSE_k, each MSE averaged over pixels and batch.
* :class:`FocalPositionLoss` — xyz: J = FL + βPL · PL per sample, averaged over the samples that
  hold at least one atom.

Both are called ``loss(outputs, targets)`` with the network's tuple of outputs and the targets in
the same order (:attr:`afm_ray.models.spec.ModelSpec.build_loss`), and return a :class:`LossOutput`: the scalar to back-propagate plus each unweighted term
(for logging) and the number of samples the average ran over (to combine batches exactly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Probabilities are clipped to [ε, 1 − ε] before the log, as Keras' categorical losses do.
PROBABILITY_EPSILON = 1e-7


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision (autocast) outputs are promoted; float64 stays float64."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


@dataclass(frozen=True)
class LossOutput:
    """A loss value with its parts.

    Attributes:
        total: 0-d tensor to call ``backward()`` on.
        terms: unweighted 0-d tensors by name (e.g. ``"atomic_disks"``, or ``"focal"`` and
            ``"position"``), each averaged the same way as ``total``.
        n_samples: 0-d tensor, the number of samples the batch average ran over (all of them
            for the MSE losses; those with ``Np > 0`` for the xyz loss).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    n_samples: torch.Tensor

    def detached(self) -> dict[str, float]:
        """Plain floats for logging: ``{"total": …, <term>: …, "n_samples": …}`` (synchronises a GPU)."""
        values = {"total": float(self.total.detach()), "n_samples": float(self.n_samples)}
        values.update({name: float(term.detach()) for name, term in self.terms.items()})
        return values


class WeightedMSELoss(nn.Module):
    """Weighted sum of per-output pixel MSEs: ``total = Σ_k w_k · mean((pred_k − target_k)²)``.

    Args:
        weights: one non-negative weight per output (the models' defaults: their loss settings, e.g.
            :class:`afm_ray.models.dsh.DshLossSettings`).
        names: names of the outputs, used as keys of ``LossOutput.terms``.

    Forward:
        predictions, targets: sequences of equally shaped tensors, one per output, e.g.
        ``(B, X, Y)`` maps in Å; the MSE of each is averaged over batch and pixels.
    """

    def __init__(self, weights: Sequence[float], names: Sequence[str] | None = None):
        super().__init__()
        weights = tuple(float(w) for w in weights)
        if not weights:
            raise ValueError("WeightedMSELoss needs at least one weight")
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(f"loss weights must be finite and >= 0, got {weights}")
        names = tuple(names) if names is not None else tuple(f"output{k}" for k in range(len(weights)))
        if len(names) != len(weights):
            raise ValueError(f"{len(weights)} weights but {len(names)} names")
        self.weights = weights
        self.names = names

    def forward(self, predictions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> LossOutput:
        if len(predictions) != len(self.weights) or len(targets) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} predictions and targets, "
                             f"got {len(predictions)} and {len(targets)}")
        terms = {}
        total = None
        for name, weight, prediction, target in zip(self.names, self.weights, predictions, targets):
            if prediction.shape != target.shape:
                raise ValueError(f"{name}: prediction shape {tuple(prediction.shape)} "
                                 f"!= target shape {tuple(target.shape)}")
            prediction = _at_least_float32(prediction)
            term = F.mse_loss(prediction, target.to(prediction.dtype))
            terms[name] = term
            total = weight * term if total is None else total + weight * term
        n_samples = torch.tensor(float(predictions[0].shape[0]), device=total.device)
        return LossOutput(total, terms, n_samples)


class FocalPositionLoss(nn.Module):
    """The xyz loss J = FL + βPL · PL (thesis Eqs. 26–30).

    Per sample, over the grid boxes i and classes j:

    * FL = −Σ_i Σ_j α_i (1 − p_ij)^γ t_ij log p_ij, with α_i = αn for a background box and
      1 − αn for a box holding an atom (any atom class) — a *sum* over the grid, as Eq. 26;
    * PL = (1/Np) Σ_i d_i t_i,atom |r_i − q_i|², with Np the sample's number of atom boxes and
      d_i = 1 − q_iz / (2 z_min), which discounts deeper atoms (d = 1 at the top, 0.5 at z_min).

    The batch value is the mean of J over the samples with Np > 0; samples without atoms are
    left out of both terms, as the thesis trained only on those (Eq. 29). A batch with no atoms
    at all gives a zero loss that still back-propagates (zero gradients).

    Args (thesis values: :class:`afm_ray.models.xyz.XyzLossSettings`):
        gamma: focusing exponent γ ≥ 0 (searched in {1.0, …, 2.0}).
        alpha_n: background weight αn in (0, 1); atoms get 1 − αn.
        beta_pl: position-loss weight βPL ≥ 0.
        z_min: the descriptor's atom cut-off depth in Å, < 0.
        from_logits: the class input is pre-softmax scores (``XYZ.forward_logits``) instead of
            probabilities; uses ``log_softmax`` and avoids the probability clipping.

    Forward ``(outputs, targets)``:
        outputs: ``(class_pred, offsets_pred)``: ``(B, C, H, W)`` probabilities (or logits), channel 0
            background, and ``(B, 3, H, W)`` predicted offsets r in Å.
        targets: ``(class_target, offsets_target)``: ``(B, C, H, W)`` one-hot t, channel 0 background,
            and ``(B, 3, H, W)`` true offsets q in Å (x, y from the box centre, z from the top
            nucleus, ≤ 0; ignored in boxes without an atom).
    """

    def __init__(self, gamma: float, alpha_n: float, beta_pl: float, z_min: float, from_logits: bool = False):
        super().__init__()
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not (0 < alpha_n < 1):
            raise ValueError(f"alpha_n must lie strictly between 0 and 1, got {alpha_n}")
        if not (math.isfinite(beta_pl) and beta_pl >= 0):
            raise ValueError(f"beta_pl must be >= 0, got {beta_pl}")
        if not (math.isfinite(z_min) and z_min < 0):
            raise ValueError(f"z_min must be a negative depth in Å, got {z_min}")
        self.gamma = float(gamma)
        self.alpha_n = float(alpha_n)
        self.beta_pl = float(beta_pl)
        self.z_min = float(z_min)
        self.from_logits = bool(from_logits)

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, alpha_n={self.alpha_n}, beta_pl={self.beta_pl}, z_min={self.z_min}, "
                f"from_logits={self.from_logits}")

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> LossOutput:
        (class_pred, offsets_pred), (class_target, offsets_target) = outputs, targets
        self._check_shapes(class_pred, offsets_pred, class_target, offsets_target)
        # Losses in float32 even under autocast: log and pow of probabilities near 0 and 1.
        class_pred, offsets_pred = _at_least_float32(class_pred), _at_least_float32(offsets_pred)
        class_target, offsets_target = class_target.to(class_pred.dtype), offsets_target.to(offsets_pred.dtype)

        if self.from_logits:
            log_p = F.log_softmax(class_pred, dim=1)
            p = log_p.exp()
        else:
            p = class_pred.clamp(PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
            log_p = p.log()
        is_atom = 1.0 - class_target[:, 0]                                    # (B, H, W)
        alpha = self.alpha_n + (1.0 - 2.0 * self.alpha_n) * is_atom          # αn or 1 − αn
        focal_per_box = -(class_target * (1.0 - p).pow(self.gamma) * log_p).sum(dim=1)
        focal = (alpha * focal_per_box).flatten(1).sum(dim=1)               # (B,)

        n_atoms = is_atom.flatten(1).sum(dim=1)                              # Np, (B,)
        depth_discount = 1.0 - offsets_target[:, 2] / (2.0 * self.z_min)     # d_i
        squared_distance = (offsets_pred - offsets_target).pow(2).sum(dim=1)
        position_sum = (depth_discount * is_atom * squared_distance).flatten(1).sum(dim=1)
        has_atoms = n_atoms > 0
        position = position_sum / n_atoms.clamp(min=1.0)

        weights = has_atoms.to(focal.dtype)
        n_samples = weights.sum()
        # Dividing by max(n, 1) keeps an all-empty batch at an exact zero with a live graph.
        focal_mean = (focal * weights).sum() / n_samples.clamp(min=1.0)
        position_mean = (position * weights).sum() / n_samples.clamp(min=1.0)
        total = focal_mean + self.beta_pl * position_mean
        return LossOutput(total, {"focal": focal_mean, "position": position_mean}, n_samples)

    @staticmethod
    def _check_shapes(class_pred, offsets_pred, class_target, offsets_target) -> None:
        if class_pred.dim() != 4 or class_pred.shape[1] < 2:
            raise ValueError(f"class prediction must be (B, C>=2, H, W), got {tuple(class_pred.shape)}")
        if class_target.shape != class_pred.shape:
            raise ValueError(f"class target shape {tuple(class_target.shape)} "
                             f"!= class prediction shape {tuple(class_pred.shape)}")
        expected = (class_pred.shape[0], 3, *class_pred.shape[2:])
        for name, tensor in (("offset prediction", offsets_pred), ("offset target", offsets_target)):
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}")
