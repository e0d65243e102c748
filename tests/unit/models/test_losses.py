"""Losses (thesis Eqs. 26–30) and the optimiser, against hand-computed values."""

from __future__ import annotations

import io
import math

import pytest
import torch

from afm_ray.models.losses import FocalPositionLoss, WeightedMSELoss
from afm_ray.models import get_model_spec
from afm_ray.train.optim import build_optimizer

GAMMA, ALPHA_N, BETA_PL, Z_MIN = 1.25, 0.30, 0.15, -0.7


def _focal(gamma=GAMMA, alpha_n=ALPHA_N, beta_pl=BETA_PL, z_min=Z_MIN, from_logits=False):
    """The xyz loss (thesis values unless given) called with the four tensors of the thesis' notation."""
    loss = FocalPositionLoss(gamma, alpha_n, beta_pl, z_min, from_logits)
    return lambda class_pred, offsets_pred, class_target, offsets_target: loss((class_pred, offsets_pred),
                                                                               (class_target, offsets_target))


def _thesis_loss(name: str):
    spec = get_model_spec(name)
    return spec.build_loss(spec.loss_settings())


def _grid(values):
    """(B, C, H, W) float tensor from nested lists ordered [batch][box][channel], H = 1."""
    return torch.tensor(values, dtype=torch.float64).permute(0, 2, 1).unsqueeze(2)


def _focal_term(alpha, p_true):
    return -alpha * (1 - p_true) ** GAMMA * math.log(p_true)


def _tiny_batch():
    """Two samples × two boxes; sample 0 holds one atom (box 0), sample 1 none."""
    class_probs = _grid([[[0.2, 0.8], [0.6, 0.4]],
                         [[0.9, 0.1], [0.5, 0.5]]])
    class_target = _grid([[[0, 1], [1, 0]],
                          [[1, 0], [1, 0]]])
    offsets = _grid([[[0.1, -0.2, -0.5], [3.0, 3.0, 3.0]],
                     [[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]]])
    offsets_target = _grid([[[0.0, 0.0, -0.35], [0.0, 0.0, 0.0]],
                            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    return class_probs, offsets, class_target, offsets_target


def test_focal_and_position_loss_match_hand_computation():
    out = _focal(GAMMA, ALPHA_N, BETA_PL, Z_MIN)(*_tiny_batch())
    # Sample 1 has Np = 0 and is left out; sample 0: atom box (α = 1 − αn), background box (α = αn).
    focal = _focal_term(1 - ALPHA_N, 0.8) + _focal_term(ALPHA_N, 0.6)
    depth_discount = 1 - (-0.35) / (2 * Z_MIN)          # 0.75
    position = depth_discount * (0.1 ** 2 + 0.2 ** 2 + 0.15 ** 2) / 1
    assert float(out.terms["focal"]) == pytest.approx(focal, rel=1e-9)
    assert float(out.terms["position"]) == pytest.approx(position, rel=1e-9)
    assert float(out.total) == pytest.approx(focal + BETA_PL * position, rel=1e-9)
    assert float(out.n_samples) == 1


def test_focal_loss_weights_background_by_alpha_n_and_atoms_by_one_minus_alpha_n():
    class_probs, offsets, class_target, offsets_target = _tiny_batch()
    for alpha_n in (0.1, 0.5, 0.9):
        focal = _focal(GAMMA, alpha_n, BETA_PL, Z_MIN)(class_probs, offsets, class_target,
                                                                  offsets_target).terms["focal"]
        expected = _focal_term(1 - alpha_n, 0.8) + _focal_term(alpha_n, 0.6)
        assert float(focal) == pytest.approx(expected, rel=1e-9)


def test_focal_loss_sums_over_the_grid_and_averages_over_samples():
    class_probs, offsets, class_target, offsets_target = _tiny_batch()
    doubled = (torch.cat((class_probs[:1], class_probs[:1])), torch.cat((offsets[:1], offsets[:1])),
               torch.cat((class_target[:1], class_target[:1])), torch.cat((offsets_target[:1], offsets_target[:1])))
    single = _focal()(*(t[:1] for t in _tiny_batch()))
    both = _focal()(*doubled)
    assert float(both.total) == pytest.approx(float(single.total), rel=1e-12)
    assert float(both.n_samples) == 2


def test_position_loss_divides_by_the_number_of_atoms_and_discounts_deep_atoms():
    class_probs = _grid([[[0.1, 0.9], [0.1, 0.9], [0.9, 0.1]]])
    class_target = _grid([[[0, 1], [0, 1], [1, 0]]])
    offsets = _grid([[[0.3, 0.0, 0.0], [0.0, 0.4, -0.7], [9.0, 9.0, 9.0]]])
    offsets_target = _grid([[[0.0, 0.0, 0.0], [0.0, 0.0, -0.7], [0.0, 0.0, 0.0]]])
    out = _focal(beta_pl=1.0)(class_probs, offsets, class_target, offsets_target)
    # Top atom d = 1, atom at z_min d = 1 − (−0.7)/(−1.4) = 0.5; Np = 2.
    assert float(out.terms["position"]) == pytest.approx((1.0 * 0.09 + 0.5 * 0.16) / 2, rel=1e-9)


def test_element_classes_give_every_atom_class_one_minus_alpha_n():
    class_probs = _grid([[[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.4, 0.4, 0.2]]])
    class_target = _grid([[[0, 0, 1], [0, 1, 0], [1, 0, 0]]])
    offsets = torch.zeros(1, 3, 1, 3, dtype=torch.float64)
    out = _focal(GAMMA, ALPHA_N)(class_probs, offsets, class_target, offsets)
    expected = _focal_term(1 - ALPHA_N, 0.7) + _focal_term(1 - ALPHA_N, 0.3) + _focal_term(ALPHA_N, 0.4)
    assert float(out.terms["focal"]) == pytest.approx(expected, rel=1e-9)


def test_gamma_zero_is_alpha_weighted_cross_entropy():
    class_probs, offsets, class_target, offsets_target = _tiny_batch()
    out = _focal(gamma=0.0, alpha_n=ALPHA_N)(class_probs, offsets, class_target, offsets_target)
    expected = -(1 - ALPHA_N) * math.log(0.8) - ALPHA_N * math.log(0.6)
    assert float(out.terms["focal"]) == pytest.approx(expected, rel=1e-9)


def test_logits_input_gives_the_same_loss_as_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    is_atom = torch.rand(3, 4, 4) < 0.3
    class_target = torch.stack((~is_atom, is_atom), dim=1).double()
    offsets, offsets_target = torch.randn(3, 3, 4, 4).double(), -torch.rand(3, 3, 4, 4).double()
    from_probs = _focal()(torch.softmax(logits, 1), offsets, class_target, offsets_target)
    from_logits = _focal(from_logits=True)(logits, offsets, class_target, offsets_target)
    assert float(from_logits.total) == pytest.approx(float(from_probs.total), rel=1e-6)


def test_a_batch_without_atoms_gives_zero_loss_and_zero_gradients():
    class_probs = torch.full((2, 2, 4, 4), 0.5, requires_grad=True)
    offsets = torch.ones(2, 3, 4, 4, requires_grad=True)
    class_target = torch.zeros(2, 2, 4, 4)
    class_target[:, 0] = 1
    out = _focal()(class_probs, offsets, class_target, torch.zeros(2, 3, 4, 4))
    out.total.backward()
    assert float(out.total.detach()) == 0 and float(out.n_samples) == 0
    assert torch.count_nonzero(class_probs.grad) == 0 and torch.count_nonzero(offsets.grad) == 0


def test_empty_samples_do_not_change_the_loss_or_get_gradients():
    class_probs, offsets, class_target, offsets_target = _tiny_batch()
    offsets = offsets.clone().requires_grad_(True)
    with_empty = _focal()(class_probs, offsets, class_target, offsets_target)
    without = _focal()(class_probs[:1], offsets[:1], class_target[:1], offsets_target[:1])
    assert float(with_empty.total.detach()) == pytest.approx(float(without.total.detach()), rel=1e-12)
    with_empty.total.backward()
    assert torch.count_nonzero(offsets.grad[1]) == 0 and torch.count_nonzero(offsets.grad[0]) > 0


@pytest.mark.parametrize("kwargs,match", [
    ({"gamma": -0.5}, "gamma"), ({"alpha_n": 0.0}, "alpha_n"), ({"alpha_n": 1.0}, "alpha_n"),
    ({"beta_pl": -1.0}, "beta_pl"), ({"z_min": 0.7}, "z_min"), ({"gamma": float("nan")}, "gamma")])
def test_focal_position_loss_validates_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _focal(**kwargs)


def test_focal_position_loss_rejects_mismatched_shapes():
    class_probs, offsets, class_target, offsets_target = _tiny_batch()
    with pytest.raises(ValueError, match="offset prediction"):
        _focal()(class_probs, offsets[:, :2], class_target, offsets_target)


def test_weighted_mse_matches_hand_computation():
    predictions = (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 3.0]]))
    targets = (torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 1.0]]))
    out = _thesis_loss("dsh")(predictions, targets)
    assert float(out.terms["atomic_disks"]) == pytest.approx(2.5)
    assert float(out.terms["vdw_spheres"]) == pytest.approx(1.0)
    assert float(out.terms["height_map"]) == pytest.approx(2.0)
    assert float(out.total) == pytest.approx(20 * 2.5 + 0.3 * 1.0 + 0.2 * 2.0)
    assert set(_thesis_loss("es").names) == {"es_map", "height_map"}
    assert _thesis_loss("es").weights == (1.0, 0.1)


def test_the_xyz_loss_defaults_are_the_thesis_values():
    assert (_thesis_loss("xyz").gamma, _thesis_loss("xyz").alpha_n, _thesis_loss("xyz").beta_pl,
            _thesis_loss("xyz").z_min) == (GAMMA, ALPHA_N, BETA_PL, Z_MIN)


def test_weighted_mse_validates():
    with pytest.raises(ValueError, match=">= 0"):
        WeightedMSELoss([1.0, -0.1])
    with pytest.raises(ValueError, match="shape"):
        WeightedMSELoss([1.0])([torch.zeros(2, 4, 4)], [torch.zeros(2, 1, 4, 4)])
    with pytest.raises(ValueError, match="expected 2"):
        WeightedMSELoss([1.0, 1.0])([torch.zeros(1)], [torch.zeros(1)])


def test_optimizer_is_adam_with_inverse_time_decay():
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer, scheduler = build_optimizer([parameter])
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    for _ in range(1000):
        parameter.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / (1 + 1e-5 * 1000), rel=1e-12)
    with pytest.raises(ValueError, match="learning rate"):
        build_optimizer([parameter], lr=0)


def test_restored_optimizer_keeps_its_state_and_takes_the_new_hyperparameters():
    from afm_ray.train.optim import restore_optimizer

    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer, scheduler = build_optimizer([parameter])
    for _ in range(100):
        parameter.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    # a checkpoint as the training loop writes it, read back with weights_only=True
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = torch.nn.Parameter(parameter.detach().clone())
    optimizer2, scheduler2 = build_optimizer([resumed], lr=5e-4, decay=1e-3)
    restore_optimizer(optimizer2, scheduler2, state["optimizer"], state["scheduler"], betas=(0.8, 0.99))
    assert torch.equal(optimizer2.state[resumed]["exp_avg"], optimizer.state[parameter]["exp_avg"])
    assert optimizer2.param_groups[0]["betas"] == (0.8, 0.99)
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(5e-4 / (1 + 1e-3 * 100), rel=1e-12)
    resumed.grad = torch.ones(3)
    optimizer2.step()
    scheduler2.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(5e-4 / (1 + 1e-3 * 101), rel=1e-12)


def test_learning_rate_follows_the_samples_seen_whatever_the_global_batch_and_warms_up():
    from afm_ray.train.optim import SampleSchedule, scaled_learning_rate

    def lr_after(global_batch, samples, **settings):
        optimizer, schedule = build_optimizer([torch.nn.Parameter(torch.zeros(1))], global_batch_size=global_batch,
                                              **settings)
        for _ in range(samples // global_batch):
            schedule.step()
        return schedule.get_last_lr()[0], schedule.samples_seen

    # 240 samples seen: 8 steps of 30 or 1 step of 240 give one learning rate (thesis decay per 30 samples)
    assert lr_after(30, 240) == lr_after(240, 240) == (pytest.approx(1e-3 / (1 + 1e-5 * 8), rel=1e-12), 240)
    # linear warm-up over 120 samples: the first step of 30 runs at a quarter of the peak
    _, schedule = build_optimizer([torch.nn.Parameter(torch.zeros(1))], warmup_samples=120)
    assert schedule.get_last_lr()[0] == pytest.approx(0.25e-3)
    assert schedule.learning_rate(90) == pytest.approx(1e-3 / (1 + 1e-5 * 3))
    # the documented scaling rules of the peak with G / B_ref
    assert scaled_learning_rate(1e-3, 240, 30, "linear") == pytest.approx(8e-3)
    assert scaled_learning_rate(1e-3, 120, 30, "sqrt") == pytest.approx(2e-3)
    assert lr_after(120, 0, batch_scaling="sqrt")[0] == pytest.approx(2e-3)
    # an afm-ray ≤ 0.2 checkpoint's LambdaLR state (steps) continues at its step count × the global batch
    schedule = SampleSchedule(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]), 1e-3, global_batch_size=16)
    schedule.load_state_dict({"last_epoch": 10, "base_lrs": [1e-3]})
    assert schedule.samples_seen == 160
