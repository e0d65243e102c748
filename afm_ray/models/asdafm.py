"""Import the published ASD-AFM DSH weights (Keras 2.2 HDF5) into :class:`~afm_ray.models.DSH`.

File layout (``model_light.h5`` / ``model_heavy.h5``; a full Keras model file keeps the same
groups under ``model_weights``): one group per layer, the weights in a sub-group named after
the wrapped plain layer, e.g. ``conv2d_reflective_17/conv2d_17/{kernel:0, bias:0}``.

* ``conv3d_reflective_1..3`` — encoder, kernels ``(kx, ky, kz, in, out)`` with in → out
  1 → 4 → 8 → 16. Keras sees the stack channels-last ``(B, X, Y, Z, 1)``; our tensors are
  ``(B, C, X, Y, Z)``, so the ``nn.Conv3d`` weight ``(out, in, kx, ky, kz)`` is the kernel
  transposed ``(4, 3, 0, 1, 2)``. Both compute a cross-correlation: no kernel flip.
* ``conv2d_reflective_1..2`` — the two 64-filter latent convs, kernels ``(kx, ky, in, out)``,
  ``nn.Conv2d`` weight = kernel transposed ``(3, 2, 0, 1)``. The first takes the encoder's
  ``(B, X/8, Y/8, 2, 16)`` output flattened by Keras' Reshape to ``z·16 + c`` channels —
  the order :func:`~afm_ray.models.blocks.fold_z_into_channels` produces.
* ``conv2d_reflective_3..9`` / ``10..16`` / ``17..23`` — the Atomic Disks / vdW Spheres /
  Height Map decoders, each 3 stages × 2 convs of 16 filters then the 1-filter output conv.

The Keras code's "reflective" padding pads one pixel by repeating the edge pixel, so the model
is built with ``padding_mode="replicate"``. Biases are ``(out,)``; everything is float32.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from afm_ray.errors import InputError
from afm_ray.models.dsh import DSH, DSH_OUTPUTS

ASDAFM_SOURCE = {
    "source": ("https://github.com/SINGROUP/ASD-AFM pretrained_weights/ "
               "(commit ba01605f72fc18d963db5f112638bfb5d268bdcf)"),
    "licence": "MIT",
    "copyright": "Copyright (c) 2020 Surfaces and Interfaces at the Nanoscale",
    "files": "model_light.h5 (H, C, N, O, F), model_heavy.h5 (light + heavy elements)",
    "architecture": "DSH, 10 z-slices, replicate padding",
}
N_SLICES = 10
EXPECTED_LAYOUT = "the ASD-AFM DSH layout: conv3d_reflective_1..3, conv2d_reflective_1..23"


def _layer_modules() -> dict[str, str]:
    """Keras layer name → the DSH sub-module (an ``nn.Conv3d``/``nn.Conv2d``) that takes its weights."""
    modules = {f"conv3d_reflective_{i + 1}": f"encoder.convs.{i}.0.conv" for i in range(3)}
    modules |= {f"conv2d_reflective_{i + 1}": f"latent.{i}.0.conv" for i in range(2)}
    for branch, output in enumerate(DSH_OUTPUTS):
        first = 3 + 7 * branch
        for stage in range(3):
            for position in range(2):
                modules[f"conv2d_reflective_{first + 2 * stage + position}"] = \
                    f"decoders.{output}.stages.{stage}.{position}.0.conv"
        modules[f"conv2d_reflective_{first + 6}"] = f"decoders.{output}.output_conv.conv"
    return modules


def _layer_arrays(where: str, layer: str, group: h5py.Group) -> tuple[np.ndarray, np.ndarray]:
    """The ``(kernel, bias)`` datasets anywhere under one layer's group."""
    found: dict[str, list[np.ndarray]] = {"kernel:0": [], "bias:0": []}

    def collect(name: str, item) -> None:
        leaf = name.rsplit("/", 1)[-1]
        if isinstance(item, h5py.Dataset) and leaf in found:
            found[leaf].append(item[()])

    group.visititems(collect)
    for leaf, arrays in found.items():
        if len(arrays) != 1:
            raise InputError(where, f"layer {layer} has {len(arrays)} '{leaf}' datasets, expected 1 "
                                    f"({EXPECTED_LAYOUT})")
    return found["kernel:0"][0], found["bias:0"][0]


def _holds_weights(item: h5py.Group | h5py.Dataset) -> bool:
    if isinstance(item, h5py.Dataset):
        return True
    return item.visititems(lambda _, child: isinstance(child, h5py.Dataset) or None) is not None


def asdafm_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an ASD-AFM DSH weight file into a state dict for ``DSH(n_slices=10, padding_mode="replicate")``.

    Raises :class:`~afm_ray.errors.InputError` naming the file and the layer when the file is
    not readable HDF5, a layer is missing or has a wrongly shaped kernel/bias, or the file holds
    weights of layers the DSH does not have (another architecture, e.g. the ES or xyz model).
    """
    where = str(path)
    expected = DSH(n_slices=N_SLICES, padding_mode="replicate").state_dict()
    modules = _layer_modules()
    try:
        h5_file = h5py.File(path, "r")
    except OSError as error:
        raise InputError(where, f"not a readable HDF5 weight file ({error})") from None
    with h5_file:
        root = h5_file["model_weights"] if "model_weights" in h5_file else h5_file
        extra = sorted(name for name in root if name not in modules and _holds_weights(root[name]))
        if extra:
            raise InputError(where, f"unexpected layers with weights {', '.join(extra)} "
                                    f"(another architecture? expected only {EXPECTED_LAYOUT})")
        state = {}
        for layer, module in modules.items():
            if not isinstance(root.get(layer), h5py.Group):
                raise InputError(where, f"layer {layer} missing (expected {EXPECTED_LAYOUT})")
            kernel, bias = _layer_arrays(where, layer, root[layer])
            weight_shape = expected[f"{module}.weight"].shape
            # torch (out, in, *k) ↔ Keras (*k, in, out)
            keras_shape = (*weight_shape[2:], weight_shape[1], weight_shape[0])
            for label, array, wanted in (("kernel", kernel, keras_shape), ("bias", bias, (weight_shape[0],))):
                if array.shape != tuple(wanted):
                    raise InputError(where, f"layer {layer}: {label} shape {array.shape}, expected {tuple(wanted)} "
                                            f"({EXPECTED_LAYOUT})")
            spatial_axes = tuple(range(kernel.ndim - 2))
            weight = np.transpose(kernel, (kernel.ndim - 1, kernel.ndim - 2, *spatial_axes))
            state[f"{module}.weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
            state[f"{module}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return state


def load_asdafm_dsh(path: str | Path) -> DSH:
    """The published ASD-AFM DSH as a :class:`DSH` in eval mode.

    Input ``(B, 1, X, Y, 10)`` Δf (X, Y divisible by 8; the published model was trained on
    128 × 128 px of 0.125 Å, z far → close, each slice normalised to mean 0 / std 1);
    outputs Atomic Disks, vdW Spheres, Height Map ``(B, X, Y)``.
    """
    model = DSH(n_slices=N_SLICES, padding_mode="replicate")
    model.load_state_dict(asdafm_state_dict(path), strict=True)
    return model.eval()
