"""The augmentation of :mod:`afm_ray.samples.augment` in torch, on the training worker's device.

A simulation actor then ships the raw Δf of every simulated slice (``BatchSpec.raw_df``) and the
trainer augments it where it trains: the GPU does in microseconds what took the actor's CPU a
tenth of a second per batch. The random choices are the NumPy ones: :func:`afm_ray.samples.augment.draw_batch`
draws them from the batch's seed exactly as the actor does (one draw per tip, the second tip at
the first tip's heights), so a batch augmented here equals the
batch the actor would have made, within float32 rounding (normalisation statistics are summed in
float64 on both sides), on every deterministic stage. The noise field is drawn on the device from a
``torch.Generator`` seeded by the batch's draws (``noise_on_device``, the default): uniform in the same
range as the NumPy field, not the same numbers, and nothing but the small choices crosses to the device.

Tensors: stacks ``(B, nx, ny, nz)`` per tip, batches ``(B, C, nx, ny, nz)`` with C tips; z far →
close; values Hz before and dimensionless (normalised) after.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from afm_ray.samples.augment import AugmentationDraws, AugmentConfig, draw_batch


def augment_batch(df: torch.Tensor, batch_seed: Sequence[int], config: AugmentConfig,
                  noise_on_device: bool = True, simulated_slices: int | None = None) -> torch.Tensor:
    """(B, C, nx, ny, nz) raw Δf on any device → (B, C, nx, ny, K) float32 network input on that device.

    ``noise_on_device=False`` adds the actor's NumPy noise field instead (bitwise the actor's batch).
    ``simulated_slices``: ``df`` holds only the slices :func:`afm_ray.samples.augment.read_slices` kept of that many."""
    draws = draw_batch(tuple(df.shape), batch_seed, config, noise_on_device=noise_on_device,
                       simulated_slices=simulated_slices)
    return torch.stack([apply_augmentation(df[:, tip], tip_draws, config) for tip, tip_draws in enumerate(draws)],
                       dim=1)


def apply_augmentation(stacks: torch.Tensor, draws: AugmentationDraws, config: AugmentConfig) -> torch.Tensor:
    """(B, nx, ny, nz) → (B, nx, ny, K) float32: slice choice, normalisation, noise, shifts, cutouts."""
    device = stacks.device
    indices = torch.from_numpy(draws.slice_indices).to(device)
    out = torch.take_along_dim(stacks, indices[:, None, None, :], dim=3).float()
    if config.normalization.enabled:
        out = normalize_slices(out)
    unit = None
    if draws.noise_seed is not None:
        generator = torch.Generator(device=device).manual_seed(draws.noise_seed)
        unit = torch.rand(out.shape, generator=generator, device=device, dtype=torch.float32)
    elif draws.unit_noise is not None:
        unit = torch.from_numpy(draws.unit_noise).to(device, non_blocking=True)
    if unit is not None:
        span = out.amax(dim=(1, 2), keepdim=True) - out.amin(dim=(1, 2), keepdim=True)
        out = out + (unit * 2.0 - 1.0) * (0.5 * config.noise.relative_amplitude * span)
    if draws.shifts.any():
        out = shift_slices(out, torch.from_numpy(draws.shifts).to(device))
    if len(draws.cutouts):
        out = apply_cutouts(out, torch.from_numpy(draws.cutouts).to(device))
    return out


def normalize_slices(stacks: torch.Tensor) -> torch.Tensor:
    """(B, nx, ny, K): every (sample, slice) to mean 0, std 1 (float64 sums); a constant slice becomes 0."""
    batch, nx, ny, n_slices = stacks.shape
    flat = stacks.reshape(batch, nx * ny, n_slices)
    mean = flat.mean(dim=1, keepdim=True, dtype=torch.float64)
    centred = (flat - mean).float()
    std = torch.sqrt(torch.einsum("bpk,bpk->bk", centred.double(), centred.double()) / (nx * ny))
    scale = torch.where(std > 0, 1.0 / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(std))
    return (centred * scale.float()[:, None, :]).reshape(stacks.shape)


def _mirror(index: torch.Tensor, size: int) -> torch.Tensor:
    period = 2 * (size - 1) if size > 1 else 1
    index = index.abs() % period
    return torch.where(index >= size, period - index, index)


def shift_slices(stacks: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``out[b, i, j, k] = in[b, i − sx, j − sy, k]`` with (B, K, 2) integer shifts, mirrored at the border."""
    batch, nx, ny, n_slices = stacks.shape
    device = stacks.device
    source_x = _mirror(torch.arange(nx, device=device)[None, :, None] - shifts[:, None, :, 0], nx)  # (B, nx, K)
    source_y = _mirror(torch.arange(ny, device=device)[None, :, None] - shifts[:, None, :, 1], ny)  # (B, ny, K)
    samples = torch.arange(batch, device=device)[:, None, None, None]
    slices = torch.arange(n_slices, device=device)[None, None, None, :]
    return stacks[samples, source_x[:, :, None, :], source_y[:, None, :, :], slices]


def apply_cutouts(stacks: torch.Tensor, cutouts: torch.Tensor) -> torch.Tensor:
    """(B, nx, ny, K) with each ``(sample, slice, x0, x1, y0, y1)`` row's rectangle set to 0: one mask, no loop."""
    batch, nx, ny, n_slices = stacks.shape
    device = stacks.device
    x = torch.arange(nx, device=device)[None, :, None]
    y = torch.arange(ny, device=device)[None, None, :]
    inside = ((x >= cutouts[:, 2, None, None]) & (x < cutouts[:, 3, None, None])
              & (y >= cutouts[:, 4, None, None]) & (y < cutouts[:, 5, None, None]))  # (M, nx, ny)
    hits = torch.zeros(batch * n_slices, nx, ny, dtype=torch.int32, device=device)
    hits.index_add_(0, cutouts[:, 0] * n_slices + cutouts[:, 1], inside.to(torch.int32))
    cut = hits.reshape(batch, n_slices, nx, ny).permute(0, 2, 3, 1) > 0
    return stacks.masked_fill(cut, 0.0)
