"""Building blocks shared by the DSH, ES and xyz networks (thesis 3.3, Tables 2–4).

Tensor layout everywhere in :mod:`afm_ray.models`:

* AFM stacks are ``(B, C, X, Y, Z)``: batch, tip channel, the two lateral scan axes in pixels
  (thesis size 128 × 128 over 16 × 16 Å, i.e. 0.125 Å per pixel) and the z-slices ordered from
  far to close (thesis: 10 slices). PyTorch's 3D layers see ``(X, Y, Z)`` as ``(D, H, W)``;
  the kernels are 3 × 3 × 3, so the naming does not matter to them.
* 2D feature maps and output descriptors are ``(B, C, X, Y)``; a single-channel descriptor
  is returned squeezed as ``(B, X, Y)``, as in the published Keras models.

Every convolution keeps the feature-map size (stride 1, padding of half the kernel) and pads
every spatial axis with ``padding_mode``: ``"reflect"`` (the thesis text) or ``"replicate"``
(the published ASD-AFM Keras code, whose 1-pixel "reflective" padding repeats the edge pixel;
:mod:`afm_ray.models.asdafm` imports its weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_RELU_SLOPE = 0.1
PADDING_MODES = ("reflect", "replicate")

# Channels each encoder stage ends with (3D convs 4, 8, 16) and the xy/z pooling after it.
ENCODER_CHANNELS = (4, 8, 16)
ENCODER_POOLS = ((2, 2, 2), (2, 2, 2), (2, 2, 1))
# Total xy down-sampling of the encoder: 2 · 2 · 2.
ENCODER_XY_STRIDE = 8
DECODER_CHANNELS = 16
# Width of the optional skip projections (beyond the thesis, section 5).
SKIP_CHANNELS = 16


def check_padding_mode(padding_mode: str) -> str:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode


def encoder_depth(n_slices: int) -> int:
    """Number of z-slices left after the encoder's pooling (z pools 2, 2, 1): ``n_slices // 4``."""
    return (n_slices // 2) // 2


def encoder_latent_channels(n_slices: int) -> int:
    """2D channels after folding the encoder's z-slices into channels: ``16 · (n_slices // 4)``."""
    return ENCODER_CHANNELS[-1] * encoder_depth(n_slices)


def check_n_slices(n_slices: int) -> int:
    if not isinstance(n_slices, int) or isinstance(n_slices, bool) or n_slices < 4:
        raise ValueError(f"n_slices must be an integer >= 4 (the encoder pools z by 4), got {n_slices!r}")
    return n_slices


def pad_same(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Pad every spatial axis of ``x`` (the axes after ``(B, C)``) by ``pad`` on both sides.

    ``mode="reflect"`` equals ``F.pad(x, ..., mode="reflect")``; on an axis of length 1, where
    a reflection does not exist, the single value is repeated (as ``"replicate"`` does).
    ``mode="replicate"`` repeats the edge value ``pad`` times (``F.pad(..., mode="replicate")``).
    """
    if pad == 0:
        return x
    n_spatial = x.dim() - 2
    if mode == "replicate":
        return F.pad(x, (pad,) * (2 * n_spatial), mode="replicate")
    too_short = [x.shape[axis] <= pad for axis in range(2, x.dim())]
    if not any(too_short):
        return F.pad(x, (pad,) * (2 * n_spatial), mode="reflect")
    # F.pad lists pads starting from the last axis.
    short_pads: list[int] = []
    long_pads: list[int] = []
    for is_short in reversed(too_short):
        short_pads += [pad, pad] if is_short else [0, 0]
        long_pads += [0, 0] if is_short else [pad, pad]
    if any(x.shape[axis] > 1 for axis, is_short in zip(range(2, x.dim()), too_short) if is_short):
        raise ValueError(f"cannot reflect-pad {pad} pixels on a feature map of shape {tuple(x.shape)}")
    x = F.pad(x, short_pads, mode="replicate")
    return F.pad(x, long_pads, mode="reflect") if any(long_pads) else x


class PaddedConv(nn.Module):
    """Convolution (2D or 3D, stride 1) that pads (``padding_mode``) so the output keeps the input size.

    Input ``(B, in_channels, *spatial)``, output ``(B, out_channels, *spatial)``.
    Weights start Glorot-uniform with zero bias, Keras' defaults the thesis trained with.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 padding_mode: str = "reflect"):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the size, got {kernel_size}")
        self.padding_mode = check_padding_mode(padding_mode)
        self.pad = kernel_size // 2
        conv_class = nn.Conv3d if dims == 3 else nn.Conv2d
        self.conv = conv_class(in_channels, out_channels, kernel_size, stride=1, padding=0)
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_same(x, self.pad, self.padding_mode))


def conv_leaky(dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
               padding_mode: str = "reflect") -> nn.Sequential:
    """``PaddedConv`` followed by LeakyReLU(0.1), the hidden layer of all three networks."""
    return nn.Sequential(PaddedConv(dims, in_channels, out_channels, kernel_size, padding_mode),
                         nn.LeakyReLU(LEAKY_RELU_SLOPE))


def fold_z_into_channels(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, X, Y, Z)`` → ``(B, Z·C, X, Y)``, channel index ``z·C + c`` as Keras' Reshape."""
    batch, channels, size_x, size_y, depth = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(batch, depth * channels, size_x, size_y)


def check_stack(x: torch.Tensor, n_channels: int, n_slices: int, name: str = "x") -> torch.Tensor:
    """Validate an AFM stack ``(B, n_channels, X, Y, n_slices)``; a ``(B, X, Y, Z)`` stack is
    accepted when ``n_channels == 1`` and gets the channel axis added."""
    if x.dim() == 4 and n_channels == 1:
        x = x.unsqueeze(1)
    if x.dim() != 5 or x.shape[1] != n_channels:
        raise ValueError(f"{name} must have shape (B, {n_channels}, X, Y, Z), got {tuple(x.shape)}")
    size_x, size_y, depth = x.shape[2:]
    if size_x % ENCODER_XY_STRIDE or size_y % ENCODER_XY_STRIDE:
        raise ValueError(f"{name}: X and Y must be divisible by {ENCODER_XY_STRIDE}, got {size_x} × {size_y}")
    if depth != n_slices:
        raise ValueError(f"{name}: the model was built for {n_slices} z-slices, got {depth}")
    return x


class Encoder3D(nn.Module):
    """The shared 3D encoder: three (3D conv + LeakyReLU + average pool) stages, then z folded
    into channels.

    Input ``(B, 1, X, Y, n_slices)``; output ``(B, 16·(n_slices//4), X/8, Y/8)``
    (thesis: ``(B, 32, 16, 16)``). 4,456 parameters.

    With ``return_skips=True`` the forward also returns the three stages' pre-pooling
    activations folded to 2D, finest last: ``(B, 16·(nz//4), X/4, Y/4)``,
    ``(B, 8·(nz//2), X/2, Y/2)``, ``(B, 4·nz, X, Y)`` — the order a decoder meets its
    resolutions in.
    """

    def __init__(self, n_slices: int = 10, padding_mode: str = "reflect"):
        super().__init__()
        self.n_slices = check_n_slices(n_slices)
        in_channels = (1,) + ENCODER_CHANNELS[:-1]
        self.convs = nn.ModuleList(conv_leaky(3, c_in, c_out, 3, padding_mode)
                                   for c_in, c_out in zip(in_channels, ENCODER_CHANNELS))
        self.pools = nn.ModuleList(nn.AvgPool3d(size, stride=size) for size in ENCODER_POOLS)

    @property
    def out_channels(self) -> int:
        return encoder_latent_channels(self.n_slices)

    @property
    def skip_channels(self) -> tuple[int, ...]:
        """Channels of the folded skip features, in the order ``forward`` returns them."""
        depths = (self.n_slices, self.n_slices // 2, encoder_depth(self.n_slices))
        return tuple(c * d for c, d in zip(ENCODER_CHANNELS, depths))[::-1]

    def forward(self, x: torch.Tensor, return_skips: bool = False):
        skips = []
        for conv, pool in zip(self.convs, self.pools):
            x = conv(x)
            if return_skips:
                skips.append(fold_z_into_channels(x))
            x = pool(x)
        latent = fold_z_into_channels(x)
        return (latent, skips[::-1]) if return_skips else latent


class Decoder2D(nn.Module):
    """One output branch: 3 × (nearest-neighbour ×2 upsample + two 16-filter convs) + a 1-filter conv.

    Input ``(B, in_channels, X/8, Y/8)``, output ``(B, X, Y)``. ``output_activation`` is
    ``None`` (Atomic Disks, Electrostatic Map) or ``"relu"`` (vdW Spheres, Height Map).
    For ``in_channels = 64``: 20,977 parameters.

    ``skip_channels`` (beyond the thesis) gives the channels of the encoder skip features this
    decoder receives at X/4, X/2 and X; each is projected by its own 1 × 1 conv to 16 channels
    and concatenated after the upsample of the matching stage.
    """

    def __init__(self, in_channels: int, output_activation: str | None = None,
                 skip_channels: Sequence[int] | None = None, padding_mode: str = "reflect"):
        super().__init__()
        if output_activation not in (None, "relu"):
            raise ValueError(f"output_activation must be None or 'relu', got {output_activation!r}")
        self.output_activation = output_activation
        self.skip_projections = None
        extra = (0, 0, 0)
        if skip_channels is not None:
            if len(skip_channels) != 3:
                raise ValueError(f"skip_channels needs one entry per decoder stage (3), got {skip_channels}")
            self.skip_projections = nn.ModuleList(conv_leaky(2, c, SKIP_CHANNELS, 1, padding_mode)
                                                  for c in skip_channels)
            extra = (SKIP_CHANNELS,) * 3
        stages = []
        stage_in = in_channels
        for extra_in in extra:
            stages.append(nn.Sequential(conv_leaky(2, stage_in + extra_in, DECODER_CHANNELS, 3, padding_mode),
                                        conv_leaky(2, DECODER_CHANNELS, DECODER_CHANNELS, 3, padding_mode)))
            stage_in = DECODER_CHANNELS
        self.stages = nn.ModuleList(stages)
        self.output_conv = PaddedConv(2, DECODER_CHANNELS, 1, 3, padding_mode)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if (skips is None) != (self.skip_projections is None):
            raise ValueError("skip features must be passed exactly when the decoder was built with skip_channels")
        for index, stage in enumerate(self.stages):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            if self.skip_projections is not None:
                x = torch.cat((x, self.skip_projections[index](skips[index])), dim=1)
            x = stage(x)
        x = self.output_conv(x)
        if self.output_activation == "relu":
            x = F.relu(x)
        return x.squeeze(1)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (the thesis' "parameters" column)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
