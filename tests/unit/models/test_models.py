"""The DSH, ES and xyz networks: thesis parameter counts, shapes, padding, options, and that
they can learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from afm_ray.descriptors.xyz_classes import DEFAULT_ELEMENT_CLASSES
from afm_ray.models import DSH, ES, XYZ, PaddedConv, count_parameters, get_model_spec, pad_same
from afm_ray.models.blocks import Decoder2D, Encoder3D, fold_z_into_channels
from afm_ray.train.optim import build_optimizer


THESIS_NETWORKS = {"dsh": DSH, "es": ES, "xyz": XYZ}


def build_model(name: str, **options):
    """The thesis network ``name`` with constructor options (thesis defaults otherwise)."""
    return THESIS_NETWORKS[name](**options)


@pytest.mark.parametrize("name", ["dsh", "es", "xyz"])
def test_parameter_counts_match_the_thesis_tables(name):
    assert count_parameters(build_model(name)) == get_model_spec(name).thesis_parameters


def test_shared_block_parameter_counts_match_table_2():
    assert count_parameters(Encoder3D(10)) == 112 + 872 + 3472
    assert count_parameters(Decoder2D(64)) == 9232 + 5 * 2320 + 145


def _stack(name, batch, size, slices):
    return torch.randn(batch, len(get_model_spec(name).tips), size, size, slices)


@pytest.mark.parametrize("size,slices", [(128, 10), (32, 10), (64, 6)])
def test_image_models_return_full_resolution_maps(size, slices):
    with torch.no_grad():
        dsh = DSH(n_slices=slices)(_stack("dsh", 2, size, slices))
        es = ES(n_slices=slices)(_stack("es", 2, size, slices))
    assert [tuple(t.shape) for t in dsh] == [(2, size, size)] * 3
    assert [tuple(t.shape) for t in es] == [(2, size, size)] * 2


@pytest.mark.parametrize("size,slices", [(128, 10), (32, 10), (64, 6)])
def test_xyz_outputs_class_probabilities_and_offsets_on_an_8x_coarser_grid(size, slices):
    with torch.no_grad():
        probs, offsets = XYZ(n_slices=slices)(_stack("xyz", 2, size, slices))
    grid = size // 8
    assert probs.shape == (2, 2, grid, grid)
    assert offsets.shape == (2, 3, grid, grid)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, grid, grid), atol=1e-5)
    assert (probs >= 0).all()


def test_relu_heads_are_non_negative_and_disks_head_is_not_clipped():
    torch.manual_seed(0)
    model = DSH()
    with torch.no_grad():
        for parameter in model.decoders["atomic_disks"].output_conv.parameters():
            parameter.fill_(0)
        model.decoders["atomic_disks"].output_conv.conv.bias.fill_(-1.0)
        disks, spheres, height = model(torch.randn(1, 1, 32, 32, 10))
    assert (spheres >= 0).all() and (height >= 0).all()
    assert torch.allclose(disks, torch.full_like(disks, -1.0))


def test_encoder_folds_z_into_channels_per_slice_count():
    for slices, channels in [(10, 32), (6, 16), (12, 48), (4, 16)]:
        encoder = Encoder3D(slices)
        assert encoder(torch.randn(1, 1, 16, 16, slices)).shape == (1, channels, 2, 2)
        assert encoder.out_channels == channels


def test_fold_uses_the_keras_reshape_channel_order():
    x = torch.arange(2 * 3 * 1 * 1 * 4, dtype=torch.float32).reshape(2, 3, 1, 1, 4)
    folded = fold_z_into_channels(x)
    # Keras reshapes (X, Y, Z, C) → (X, Y, Z·C): channel index z·C + c.
    assert folded[1, 2 * 3 + 1, 0, 0] == x[1, 1, 0, 0, 2]


def test_reflective_padding_matches_torch_reflect_pad():
    torch.manual_seed(1)
    conv = PaddedConv(3, 2, 3, 3, "reflect")
    x = torch.randn(1, 2, 6, 5, 4)
    expected = F.conv3d(F.pad(x, (1,) * 6, mode="reflect"), conv.conv.weight, conv.conv.bias)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    conv2d = PaddedConv(2, 2, 3, 3, "reflect")
    y = torch.randn(1, 2, 7, 6)
    expected2d = F.conv2d(F.pad(y, (1,) * 4, mode="reflect"), conv2d.conv.weight, conv2d.conv.bias)
    assert torch.allclose(conv2d(y), expected2d, atol=1e-6)


def test_padding_differs_from_zero_padding_and_replicate_repeats_the_edge():
    x = torch.arange(4.0).reshape(1, 1, 4)
    assert pad_same(x, 1, "reflect").tolist() == [[[1.0, 0.0, 1.0, 2.0, 3.0, 2.0]]]
    assert pad_same(x, 1, "replicate").tolist() == [[[0.0, 0.0, 1.0, 2.0, 3.0, 3.0]]]


def test_reflect_padding_of_a_single_slice_repeats_it():
    x = torch.randn(1, 1, 4, 4, 1)
    padded = pad_same(x, 1, "reflect")
    assert padded.shape == (1, 1, 6, 6, 3)
    assert torch.equal(padded[..., 0], padded[..., 1]) and torch.equal(padded[..., 2], padded[..., 1])
    assert torch.equal(padded[:, :, 1:-1, 1:-1, 1], x[..., 0])


def test_models_reject_wrong_inputs_with_clear_errors():
    with pytest.raises(ValueError, match="divisible by 8"):
        DSH()(torch.randn(1, 1, 36, 36, 10))
    with pytest.raises(ValueError, match="10 z-slices"):
        DSH()(torch.randn(1, 1, 32, 32, 8))
    with pytest.raises(ValueError, match=r"\(B, 2, X, Y, Z\)"):
        ES()(torch.randn(1, 1, 32, 32, 10))
    with pytest.raises(ValueError, match="n_slices"):
        XYZ(n_slices=3)
    with pytest.raises(ValueError, match="padding_mode"):
        DSH(padding_mode="zeros")


def test_a_four_dimensional_stack_gets_its_channel_axis():
    with torch.no_grad():
        assert DSH()(torch.randn(1, 32, 32, 10))[0].shape == (1, 32, 32)


def test_skip_connections_add_parameters_and_keep_shapes():
    for model_class, input_channels, n_outputs in [(DSH, 1, 3), (ES, 2, 2)]:
        plain = model_class()
        skipped = model_class(skip_connections=True)
        assert count_parameters(skipped) > count_parameters(plain)
        with torch.no_grad():
            outputs = skipped(torch.randn(2, input_channels, 32, 32, 10))
        assert [tuple(t.shape) for t in outputs] == [(2, 32, 32)] * n_outputs


@pytest.mark.parametrize("skip_connections", [False, True])
def test_skip_connections_bypass_the_latent_bottleneck(skip_connections):
    # With the latent convs zeroed, the input reaches the decoders only through the skips.
    torch.manual_seed(0)
    model = DSH(skip_connections=skip_connections)
    with torch.no_grad():
        for parameter in model.latent.parameters():
            parameter.zero_()
        first = model(torch.randn(1, 1, 32, 32, 10))[0]
        second = model(torch.randn(1, 1, 32, 32, 10))[0]
    assert (not torch.allclose(first, second)) == skip_connections


def test_element_classes_widen_the_class_head():
    model = XYZ(element_classes=DEFAULT_ELEMENT_CLASSES)
    assert model.n_classes == 2 + len(DEFAULT_ELEMENT_CLASSES)  # background, the groups, other
    assert model.class_names[:3] == ("background", "H", "C") and model.class_names[-1] == "other"
    # Only the last class conv changes: 64·9 weights + 1 bias per extra class.
    extra = model.n_classes - 2
    assert count_parameters(model) == get_model_spec("xyz").thesis_parameters + extra * (64 * 9 + 1)
    with torch.no_grad():
        probs, _ = model(torch.randn(1, 1, 32, 32, 10))
    assert probs.shape == (1, 6, 4, 4)


def test_the_network_and_the_descriptor_share_the_xyz_class_layout():
    from afm_ray.descriptors import XyzGrid
    from afm_ray.descriptors.xyz_classes import element_groups

    groups = [["H"], ["C"], ["N", "O", "F"]]
    assert (XYZ(element_classes=groups).class_names == XyzGrid(element_groups=element_groups(groups)).class_names
            == ("background", "H", "C", "N,O,F", "other"))
    assert XYZ().class_names == XyzGrid().class_names == ("background", "atom")


def test_element_classes_are_validated():
    with pytest.raises(ValueError, match="more than one"):
        XYZ(element_classes=[["H"], ["H", "C"]])


def test_forward_logits_is_the_softmax_input():
    model = XYZ()
    x = torch.randn(1, 1, 32, 32, 10)
    with torch.no_grad():
        logits, offsets_a = model.forward_logits(x)
        probs, offsets_b = model(x)
    assert torch.allclose(torch.softmax(logits, dim=1), probs)
    assert torch.equal(offsets_a, offsets_b)


def _overfit(model, loss_fn, stack, targets, steps):
    optimizer, scheduler = build_optimizer(model.parameters())  # thesis Adam settings
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(stack), targets)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def _thesis_loss(name: str):
    spec = get_model_spec(name)
    return spec.build_loss(spec.loss_settings())


def test_dsh_overfits_a_fixed_batch():
    torch.manual_seed(0)
    stack = torch.randn(2, 1, 16, 16, 6)
    ramp = torch.linspace(0, 1, 16)
    targets = (ramp[None, :, None] * ramp[None, None, :]).expand(2, 16, 16)
    targets = (targets - 0.3, targets, 1 - targets)
    loss = _thesis_loss("dsh")
    losses = _overfit(DSH(n_slices=6), lambda out, tgt: loss(out, tgt).total, stack, targets, 100)
    assert losses[-1] < losses[0] / 10


def test_xyz_overfits_a_fixed_batch():
    torch.manual_seed(0)
    stack = torch.randn(2, 1, 16, 16, 6)
    is_atom = torch.rand(2, 2, 2) < 0.3
    is_atom[:, 0, 0] = True
    class_target = torch.stack((~is_atom, is_atom), dim=1).float()
    offsets_target = torch.rand(2, 3, 2, 2) - 0.5
    offsets_target[:, 2] = -0.6 * torch.rand(2, 2, 2)
    loss = _thesis_loss("xyz")
    losses = _overfit(XYZ(n_slices=6), lambda out, tgt: loss(out, tgt).total,
                      stack, (class_target, offsets_target), 100)
    assert losses[-1] < losses[0] / 10


@pytest.mark.parametrize("name", ["dsh", "es", "xyz"])
def test_channels_last_changes_strides_not_results(name):
    from afm_ray.models.memory_format import channels_last, to_channels_last

    torch.manual_seed(0)
    plain = build_model(name, n_slices=6)
    fast = to_channels_last(build_model(name, n_slices=6))
    fast.load_state_dict(plain.state_dict())
    assert any(p.dim() == 5 and p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous()
               for p in fast.parameters())
    x = torch.randn(2, len(get_model_spec(name).tips), 32, 32, 6)
    outputs = [plain(x), fast(channels_last(x))]
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for model, out in zip((plain, fast), outputs):
        sum(o.square().mean() for o in out).backward()
    for p, q in zip(plain.parameters(), fast.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-6)
