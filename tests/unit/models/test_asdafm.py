"""Importing the published ASD-AFM DSH Keras weights: the imported model against a reference
forward pass written from the Keras layer definitions, and the errors for wrong files."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from afm_ray.errors import InputError
from afm_ray.models import pad_same

h5py = pytest.importorskip("h5py")
from afm_ray.models.asdafm import ASDAFM_SOURCE, asdafm_state_dict, load_asdafm_dsh  # noqa: E402  (needs h5py)

from conftest import CONFIGS, SHARED  # noqa: E402
PUBLISHED_LIGHT = SHARED / "asd-afm" / "model_light.h5"
# Keras AveragePooling3D sizes of the three encoder stages, (x, y, z).
ENCODER_POOLS = ((2, 2, 2), (2, 2, 2), (2, 2, 1))
# First conv layer of each decoder and whether its output goes through ReLU.
DECODERS = {"atomic_disks": (3, False), "vdw_spheres": (10, True), "height_map": (17, True)}
TOLERANCE = 1e-4


def dsh_kernel_shapes() -> dict[str, tuple[int, ...]]:
    """Keras layer name → kernel shape ``(kx, ky[, kz], in, out)`` of the ASD-AFM DSH."""
    shapes = {f"conv3d_reflective_{i}": (3, 3, 3, c_in, c_out)
              for i, (c_in, c_out) in enumerate(((1, 4), (4, 8), (8, 16)), start=1)}
    shapes["conv2d_reflective_1"] = (3, 3, 32, 64)
    shapes["conv2d_reflective_2"] = (3, 3, 64, 64)
    for first, _ in DECODERS.values():
        for offset, (c_in, c_out) in enumerate(((64, 16),) + ((16, 16),) * 5 + ((16, 1),)):
            shapes[f"conv2d_reflective_{first + offset}"] = (3, 3, c_in, c_out)
    return shapes


def write_keras_weights(path: Path, kernel_shapes: dict[str, tuple[int, ...]], full_model: bool = False) -> Path:
    """A Keras-2.2-style HDF5 weight file with random He-scaled kernels and small random biases;
    ``full_model`` nests the layers under ``model_weights`` as ``model.save`` does."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5_file:
        root = h5_file.create_group("model_weights") if full_model else h5_file
        # A weightless layer, present in every real file, must not count as a foreign layer.
        root.create_group("leaky_re_lu_1").attrs["weight_names"] = np.array([], dtype="S1")
        for layer, shape in kernel_shapes.items():
            plain = layer.replace("_reflective", "")
            weights = root.create_group(f"{layer}/{plain}")
            weights["kernel:0"] = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape).astype(np.float32)
            weights["bias:0"] = rng.normal(0.0, 0.1, shape[-1]).astype(np.float32)
            root[layer].attrs["weight_names"] = np.array([f"{plain}/kernel:0".encode(), f"{plain}/bias:0".encode()])
        root.attrs["layer_names"] = np.array([name.encode() for name in ["leaky_re_lu_1", *kernel_shapes]])
    return path


def read_keras_weights(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Layer name → (kernel, bias) in float64, read straight from the file (Keras layout)."""
    with h5py.File(path, "r") as h5_file:
        root = h5_file.get("model_weights", h5_file)
        plain = {layer: layer.replace("_reflective", "") for layer in dsh_kernel_shapes()}
        return {layer: tuple(torch.from_numpy(root[f"{layer}/{name}/{leaf}"][()]).double()
                             for leaf in ("kernel:0", "bias:0"))
                for layer, name in plain.items()}


def keras_conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The ASD-AFM "reflective" Conv2D/Conv3D in Keras' channels-last layout, from its definition:
    pad every spatial axis by repeating the edge pixel once, then cross-correlate.

    ``x`` ``(B, *spatial, in)``, ``kernel`` ``(*k, in, out)``, ``bias`` ``(out,)`` → ``(B, *spatial, out)``.
    """
    n_spatial = kernel.dim() - 2
    # F.pad's replicate mode pads the trailing axes, so move channels in front of the spatial axes.
    channels_first = x.movedim(-1, 1)
    padded = F.pad(channels_first, (1,) * (2 * n_spatial), mode="replicate").movedim(1, -1)
    out = bias
    for offset in itertools.product(*(range(size) for size in kernel.shape[:n_spatial])):
        window = padded[(slice(None), *(slice(o, o + n) for o, n in zip(offset, x.shape[1:-1])))]
        out = out + window @ kernel[offset]
    return out


def reference_dsh(weights: dict[str, tuple[torch.Tensor, torch.Tensor]], stack: torch.Tensor) -> list[torch.Tensor]:
    """The ASD-AFM DSH forward pass, layer by layer as the Keras graph: ``stack`` ``(B, X, Y, Z)``
    → Atomic Disks, vdW Spheres, Height Map, each ``(B, X, Y)``."""
    x = stack.unsqueeze(-1)  # Keras Reshape to (B, X, Y, Z, 1)
    for index, pool in enumerate(ENCODER_POOLS, start=1):
        x = F.leaky_relu(keras_conv(x, *weights[f"conv3d_reflective_{index}"]), 0.1)
        x = F.avg_pool3d(x.movedim(-1, 1), pool).movedim(1, -1)
    batch, size_x, size_y, depth, channels = x.shape
    x = x.reshape(batch, size_x, size_y, depth * channels)  # Keras Reshape: channel z·C + c
    for index in (1, 2):
        x = F.leaky_relu(keras_conv(x, *weights[f"conv2d_reflective_{index}"]), 0.1)
    outputs = []
    for first, relu in DECODERS.values():
        y = x
        for stage in range(3):
            y = y.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # nearest-neighbour ×2
            for position in range(2):
                y = F.leaky_relu(keras_conv(y, *weights[f"conv2d_reflective_{first + 2 * stage + position}"]), 0.1)
        y = keras_conv(y, *weights[f"conv2d_reflective_{first + 6}"]).squeeze(-1)
        outputs.append(F.relu(y) if relu else y)
    return outputs


def max_difference_to_reference(path: Path, size: int) -> float:
    """Largest |imported model − reference| over the three outputs for a random (2, size, size, 10) stack."""
    stack = torch.randn(2, size, size, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        imported = load_asdafm_dsh(path)(stack.unsqueeze(1))
    reference = reference_dsh(read_keras_weights(path), stack.double())
    return max((ours.double() - theirs).abs().max().item() for ours, theirs in zip(imported, reference))


@pytest.fixture
def random_weights(tmp_path) -> Path:
    return write_keras_weights(tmp_path / "model.h5", dsh_kernel_shapes())


def test_imported_random_weights_match_the_keras_reference(random_weights):
    assert max_difference_to_reference(random_weights, 32) < TOLERANCE


def test_imported_published_weights_match_the_keras_reference():
    if not PUBLISHED_LIGHT.exists():
        pytest.skip(f"published ASD-AFM weights not found at {PUBLISHED_LIGHT}")
    assert max_difference_to_reference(PUBLISHED_LIGHT, 128) < TOLERANCE


def test_import_gives_an_eval_mode_replicate_dsh_with_every_weight(random_weights):
    model = load_asdafm_dsh(random_weights)
    assert not model.training
    assert model.encoder.convs[0][0].padding_mode == "replicate"
    state = asdafm_state_dict(random_weights)
    assert state.keys() == model.state_dict().keys()
    assert all(tensor.dtype == torch.float32 for tensor in state.values())
    kernel = read_keras_weights(random_weights)["conv3d_reflective_2"][0]
    assert torch.equal(model.encoder.convs[1][0].conv.weight.double(), kernel.permute(4, 3, 0, 1, 2))


def test_a_full_keras_model_file_is_read_from_model_weights(tmp_path, random_weights):
    full = write_keras_weights(tmp_path / "full.h5", dsh_kernel_shapes(), full_model=True)
    ours, full_state = asdafm_state_dict(random_weights), asdafm_state_dict(full)
    assert all(torch.equal(ours[key], full_state[key]) for key in ours)


def test_source_names_the_commit_and_the_licence():
    assert "ba01605f72fc18d963db5f112638bfb5d268bdcf" in ASDAFM_SOURCE["source"]
    assert ASDAFM_SOURCE["licence"] == "MIT"


def _import_error(path: Path) -> str:
    with pytest.raises(InputError) as caught:
        load_asdafm_dsh(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize("layer", ["conv3d_reflective_2", "conv2d_reflective_17"])
def test_a_missing_layer_is_named(tmp_path, layer):
    shapes = dsh_kernel_shapes()
    del shapes[layer]
    message = _import_error(write_keras_weights(tmp_path / "model.h5", shapes))
    assert re.search(rf"\b{layer}\b missing", message)


def test_a_wrong_kernel_shape_names_the_layer_and_both_shapes(tmp_path):
    shapes = dsh_kernel_shapes() | {"conv2d_reflective_9": (3, 3, 16, 2)}
    message = _import_error(write_keras_weights(tmp_path / "model.h5", shapes))
    assert "conv2d_reflective_9" in message and "(3, 3, 16, 2)" in message and "(3, 3, 16, 1)" in message


def test_another_architecture_is_refused(tmp_path):
    extra_layer = dsh_kernel_shapes() | {"conv2d_reflective_24": (3, 3, 64, 64)}
    message = _import_error(write_keras_weights(tmp_path / "extra.h5", extra_layer))
    assert "conv2d_reflective_24" in message and "another architecture" in message
    two_tips = dsh_kernel_shapes() | {"conv3d_reflective_1": (3, 3, 3, 2, 4)}
    message = _import_error(write_keras_weights(tmp_path / "two_tips.h5", two_tips))
    assert "conv3d_reflective_1" in message and "(3, 3, 3, 2, 4)" in message and "(3, 3, 3, 1, 4)" in message


@pytest.mark.parametrize("create", [True, False], ids=["not-hdf5", "absent"])
def test_an_unreadable_file_is_named(tmp_path, create):
    path = tmp_path / "model.h5"
    if create:
        path.write_text("not an HDF5 file\n")
    assert "HDF5" in _import_error(path)


@pytest.mark.parametrize("shape", [(1, 2, 5), (2, 3, 5, 4), (1, 2, 4, 3, 5)])
def test_replicate_padding_equals_torch_replicate_pad(shape):
    x = torch.randn(shape)
    n_spatial = len(shape) - 2
    assert torch.equal(pad_same(x, 1, "replicate"), F.pad(x, (1,) * (2 * n_spatial), mode="replicate"))


def test_the_import_command_names_the_missing_layer_and_registers_nothing(tmp_path, run_cli):
    shapes = dsh_kernel_shapes()
    del shapes["conv2d_reflective_9"]
    path = write_keras_weights(tmp_path / "partial.h5", shapes)
    code, _, err = run_cli("models", "import-asdafm", path, "--name", "asdafm-partial",
                           "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}",
                           "--config", CONFIGS / "published_asdafm.yaml")
    assert code == 2 and "conv2d_reflective_9 missing" in err and str(path) in err, err
    assert not (tmp_path / "mlruns.db").exists()  # refused before MLflow is touched


def test_the_import_command_refuses_a_preset_the_weights_cannot_serve(tmp_path, random_weights, mlflow_sqlite_uri,
                                                                      run_cli):
    config = tmp_path / "preset.yaml"
    config.write_text("model: {name: dsh, padding: reflect}\n")
    code, _, err = run_cli("models", "import-asdafm", random_weights, "--name", "asdafm-x", "--config", config,
                           "--tracking-uri", mlflow_sqlite_uri)
    assert code == 2 and "model.padding is 'reflect'" in err and "'replicate'" in err, err
